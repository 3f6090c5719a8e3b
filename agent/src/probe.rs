//! Health probes: exec, http and tcp checks run on a schedule, counted
//! against success and failure thresholds, as Kubernetes does.
//!
//! A startup probe runs first and holds the others back until it passes
//! (failing it `failure_threshold` times in a row kills the container).
//! Then liveness (failing kills the container; its restart policy decides
//! what follows) and readiness (the allocation's health) run side by side.
//! Without a readiness probe a started container is ready.
//!
//! Probes reach into the container's network: with `network: host` they
//! connect to 127.0.0.1 directly; with `network: none` a short-lived
//! thread joins the container's network namespace for each check.

use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use skiff_model::{Probe, ProbeAction, Probes};
use tokio::sync::mpsc;

use crate::runtime::Runtime;

/// Counts results in a row against a probe's thresholds.
#[derive(Debug, Clone)]
pub struct Tracker {
    success_threshold: u32,
    failure_threshold: u32,
    successes: u32,
    failures: u32,
    passing: Option<bool>,
}

impl Tracker {
    pub fn new(p: &Probe) -> Self {
        Tracker {
            success_threshold: p.success_threshold.max(1),
            failure_threshold: p.failure_threshold.max(1),
            successes: 0,
            failures: 0,
            passing: None,
        }
    }

    /// Records one result; returns the verdict when it changes (passing
    /// after `success_threshold` successes in a row, failing after
    /// `failure_threshold` failures in a row).
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        let verdict = if self.successes >= self.success_threshold {
            Some(true)
        } else if self.failures >= self.failure_threshold {
            Some(false)
        } else {
            None
        };
        match verdict {
            Some(v) if self.passing != Some(v) => {
                self.passing = Some(v);
                Some(v)
            }
            _ => None,
        }
    }
}

/// What the probes of one container report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeEvent {
    /// Readiness changed.
    Ready(bool),
    /// The startup or liveness probe failed for good: kill the container.
    Failed {
        probe: &'static str,
        message: String,
    },
}

/// Carries out one check (the OS edge, so the schedule can be tested
/// with a fake).
pub trait Checker: Send + Sync + 'static {
    fn check(
        &self,
        action: &ProbeAction,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// Checks a real container: `runc exec` for exec probes, TCP from the
/// host or from inside the container's network namespace otherwise.
pub struct ContainerChecker<R: Runtime> {
    pub runtime: Arc<R>,
    pub container_id: String,
    /// `/proc/PID/ns/net` of the container's init when it has its own
    /// network namespace; `None` when it shares the host's.
    pub netns: Option<PathBuf>,
}

impl<R: Runtime> Checker for ContainerChecker<R> {
    async fn check(&self, action: &ProbeAction, timeout: Duration) -> Result<(), String> {
        match action {
            ProbeAction::Exec { command } => {
                let out = self
                    .runtime
                    .exec(&self.container_id, command, Some(timeout))
                    .await
                    .map_err(|e| e.to_string())?;
                if out.timed_out {
                    return Err(format!("timed out after {}", fmt_dur(timeout)));
                }
                if out.exit_code == 0 {
                    Ok(())
                } else {
                    let said = String::from_utf8_lossy(if out.stderr.is_empty() {
                        &out.stdout
                    } else {
                        &out.stderr
                    })
                    .trim()
                    .chars()
                    .take(200)
                    .collect::<String>();
                    Err(if said.is_empty() {
                        format!("exit code {}", out.exit_code)
                    } else {
                        format!("exit code {}: {said}", out.exit_code)
                    })
                }
            }
            ProbeAction::Http { path, port } => {
                let (path, port) = (path.clone(), *port);
                self.network(timeout, move || http_get(port, &path, timeout))
                    .await
            }
            ProbeAction::Tcp { port } => {
                let port = *port;
                self.network(timeout, move || tcp_connect(port, timeout).map(drop))
                    .await
            }
        }
    }
}

impl<R: Runtime> ContainerChecker<R> {
    /// Runs a blocking network check in the container's network.
    async fn network(
        &self,
        timeout: Duration,
        check: impl FnOnce() -> Result<(), String> + Send + 'static,
    ) -> Result<(), String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        match &self.netns {
            None => {
                tokio::task::spawn_blocking(move || {
                    let _ = tx.send(check());
                });
            }
            Some(ns) => {
                let ns = ns.clone();
                // A thread of its own: it stays in the namespace it joins,
                // so it must not be a pooled one.
                let spawned = std::thread::Builder::new()
                    .name("skiff-probe".into())
                    .stack_size(128 * 1024)
                    .spawn(move || {
                        let joined = std::fs::File::open(&ns)
                            .and_then(|f| crate::sys::enter_net_namespace(&f));
                        let _ = tx.send(match joined {
                            Ok(()) => check(),
                            Err(e) => Err(format!(
                                "cannot enter the container's network namespace: {e}"
                            )),
                        });
                    });
                if let Err(e) = spawned {
                    return Err(format!("cannot start a probe thread: {e}"));
                }
            }
        }
        match tokio::time::timeout(timeout + Duration::from_millis(500), rx).await {
            Ok(Ok(r)) => r,
            _ => Err(format!("timed out after {}", fmt_dur(timeout))),
        }
    }
}

fn fmt_dur(d: Duration) -> String {
    skiff_model::duration::format_duration(d)
}

fn tcp_connect(port: u16, timeout: Duration) -> Result<TcpStream, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("tcp :{port}: {e}"))
}

/// `GET path` on 127.0.0.1:port; a status from 200 to 399 passes.
fn http_get(port: u16, path: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut s = tcp_connect(port, timeout)?;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let io = |e: std::io::Error| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            format!("http :{port}{path}: timed out")
        } else {
            format!("http :{port}{path}: {e}")
        }
    };
    s.set_write_timeout(Some(left())).map_err(io)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: skiff-probe/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    s.write_all(request.as_bytes()).map_err(io)?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.contains(&b'\n') && head.len() < 4096 {
        s.set_read_timeout(Some(left())).map_err(io)?;
        let n = s.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let status: Option<u16> = line
        .lines()
        .next()
        .filter(|l| l.starts_with("HTTP/"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok());
    match status {
        Some(code) if (200..400).contains(&code) => Ok(()),
        Some(code) => Err(format!("http :{port}{path}: status {code}")),
        None => Err(format!("http :{port}{path}: not an HTTP response")),
    }
}

/// Runs one probe until its verdict is `stop_on`; every verdict change is
/// passed to `verdict`.
async fn run_probe<C: Checker>(
    checker: &C,
    probe: &Probe,
    first_at: tokio::time::Instant,
    stop_on: Option<bool>,
    mut verdict: impl FnMut(bool, &str) -> bool,
) {
    let mut tracker = Tracker::new(probe);
    let mut next = first_at;
    loop {
        tokio::time::sleep_until(next).await;
        next = tokio::time::Instant::now() + probe.period;
        let result = checker.check(&probe.action, probe.timeout).await;
        let message = match &result {
            Ok(()) => String::new(),
            Err(m) => m.clone(),
        };
        if let Some(v) = tracker.record(result.is_ok()) {
            if !verdict(v, &message) || stop_on == Some(v) {
                return;
            }
        }
    }
}

/// Runs a container's probes, reporting to `events`, until the task is
/// dropped (the container stopped) or a startup or liveness probe fails.
/// `started` is when the container started.
pub async fn run_probes<C: Checker>(
    checker: C,
    probes: Probes,
    started: tokio::time::Instant,
    events: mpsc::Sender<ProbeEvent>,
) {
    let send = |e: ProbeEvent| events.try_send(e).is_ok() || !events.is_closed();
    if let Some(p) = &probes.startup {
        let mut failed = None;
        run_probe(
            &checker,
            p,
            started + p.initial_delay,
            Some(true),
            |ok, msg| {
                if !ok {
                    failed = Some(msg.to_string());
                }
                ok
            },
        )
        .await;
        if let Some(message) = failed {
            send(ProbeEvent::Failed {
                probe: "startup",
                message,
            });
            return;
        }
    }
    let now = tokio::time::Instant::now();
    let liveness = async {
        if let Some(p) = &probes.liveness {
            let at = (started + p.initial_delay).max(now);
            run_probe(&checker, p, at, Some(false), |ok, msg| {
                if !ok {
                    let _ = events.try_send(ProbeEvent::Failed {
                        probe: "liveness",
                        message: msg.to_string(),
                    });
                }
                true
            })
            .await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let readiness = async {
        match &probes.readiness {
            Some(p) => {
                // Not ready until the probe says so.
                let _ = events.send(ProbeEvent::Ready(false)).await;
                let at = (started + p.initial_delay).max(now);
                run_probe(&checker, p, at, None, |ok, _| {
                    events.try_send(ProbeEvent::Ready(ok)).is_ok() || !events.is_closed()
                })
                .await;
            }
            None => {
                let _ = events.send(ProbeEvent::Ready(true)).await;
                std::future::pending::<()>().await;
            }
        }
    };
    // Liveness ends the probing when it fails; readiness never does.
    tokio::select! {
        _ = liveness => {}
        _ = readiness => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn thresholds_need_results_in_a_row() {
        let mut p = Probe::new(ProbeAction::Tcp { port: 1 });
        p.success_threshold = 2;
        p.failure_threshold = 3;
        let mut t = Tracker::new(&p);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(true));
        assert_eq!(t.record(true), None, "only changes are reported");
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None, "a success resets the failures");
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(false));
    }

    /// Answers from a script: one result per call, then the last forever.
    struct Script(Mutex<Vec<bool>>);

    impl Checker for Script {
        async fn check(&self, _: &ProbeAction, _: Duration) -> Result<(), String> {
            let mut v = self.0.lock().unwrap();
            let ok = if v.len() > 1 { v.remove(0) } else { v[0] };
            if ok {
                Ok(())
            } else {
                Err("nope".into())
            }
        }
    }

    fn probe(failures: u32) -> Probe {
        let mut p = Probe::new(ProbeAction::Tcp { port: 1 });
        p.period = Duration::from_secs(1);
        p.failure_threshold = failures;
        p
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_liveness_probe_asks_for_a_kill_after_its_threshold() {
        let (tx, mut rx) = mpsc::channel(8);
        let probes = Probes {
            liveness: Some(probe(3)),
            ..Probes::default()
        };
        let checker = Script(Mutex::new(vec![true, false, false, false]));
        let start = tokio::time::Instant::now();
        tokio::spawn(run_probes(checker, probes, start, tx));
        assert_eq!(rx.recv().await, Some(ProbeEvent::Ready(true)));
        let e = rx.recv().await.unwrap();
        assert_eq!(
            e,
            ProbeEvent::Failed {
                probe: "liveness",
                message: "nope".into()
            }
        );
        // The first check runs at once, then one per period: the third
        // failure in a row is the fourth check.
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn startup_holds_readiness_back_until_it_passes() {
        let (tx, mut rx) = mpsc::channel(8);
        let mut ready = probe(1);
        ready.success_threshold = 1;
        let probes = Probes {
            startup: Some(probe(10)),
            readiness: Some(ready),
            ..Probes::default()
        };
        // Startup fails twice, then passes; readiness passes, then fails.
        let checker = Script(Mutex::new(vec![false, false, true, true, false]));
        let start = tokio::time::Instant::now();
        tokio::spawn(run_probes(checker, probes, start, tx));
        assert_eq!(rx.recv().await, Some(ProbeEvent::Ready(false)));
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(2),
            "after startup passed"
        );
        assert_eq!(rx.recv().await, Some(ProbeEvent::Ready(true)));
        assert_eq!(rx.recv().await, Some(ProbeEvent::Ready(false)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_startup_probe_that_never_passes_fails_the_container() {
        let (tx, mut rx) = mpsc::channel(8);
        let probes = Probes {
            startup: Some(probe(2)),
            readiness: Some(probe(1)),
            ..Probes::default()
        };
        tokio::spawn(run_probes(
            Script(Mutex::new(vec![false])),
            probes,
            tokio::time::Instant::now(),
            tx,
        ));
        assert_eq!(
            rx.recv().await,
            Some(ProbeEvent::Failed {
                probe: "startup",
                message: "nope".into()
            })
        );
        assert_eq!(rx.recv().await, None, "nothing more once it failed");
    }

    #[test]
    fn http_checks_read_the_status_line() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut c, _) = listener.accept().unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.ends_with(b"\r\n\r\n") {
                    let n = c.read(&mut buf).unwrap();
                    assert!(n > 0, "the request ended early");
                    req.extend_from_slice(&buf[..n]);
                }
                assert!(String::from_utf8_lossy(&req).starts_with("GET /healthz HTTP/1.1\r\n"));
                write!(c, "HTTP/1.0 {status}\r\n\r\n").unwrap();
            }
        });
        let t = Duration::from_secs(2);
        assert_eq!(http_get(port, "/healthz", t), Ok(()));
        let err = http_get(port, "/healthz", t).unwrap_err();
        assert!(err.contains("status 503"), "{err}");
        server.join().unwrap();
        // A port held by a socket that does not listen: connecting is
        // refused, and no other test can take the port meanwhile (the
        // closed listener's port could be reused at once).
        let held = tokio::net::TcpSocket::new_v4().unwrap();
        held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = held.local_addr().unwrap().port();
        assert!(tcp_connect(port, t).is_err());
    }
}
