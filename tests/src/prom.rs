//! Reading Prometheus exposition in tests: a plain-HTTP GET, samples by
//! series, Prometheus' own linter (`promtool check metrics`), and a real
//! Prometheus (Debian's `prometheus` package) started on loopback and
//! asked through its HTTP API.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// `GET path` from `addr` over plain HTTP/1.1: the response's head and
/// body.
pub fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

/// `GET /metrics` from `addr`.
pub fn scrape(addr: &str) -> (String, String) {
    http_get(addr, "/metrics")
}

/// The value of the sample `series` (name and labels exactly as written).
pub fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The value of the first sample of `name` whose labels include every
/// `key="value"` of `labels`.
pub fn sample_with(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix('{')?;
        let (set, value) = rest.rsplit_once("} ")?;
        labels
            .iter()
            .all(|(k, v)| {
                set.split(',')
                    .any(|pair| pair == format!("{k}={}", serde_json::to_string(v).unwrap()))
            })
            .then(|| value.parse().ok())?
    })
}

/// The address a process wrote to `DATA_DIR/metrics.addr` (waiting up to
/// a minute for it to start).
pub fn metrics_addr(data_dir: &Path) -> String {
    let file = data_dir.join("metrics.addr");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match std::fs::read_to_string(&file) {
            Ok(text) if !text.trim().is_empty() => return text.trim().to_string(),
            Err(e) if std::time::Instant::now() > deadline => panic!("{}: {e}", file.display()),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// What `promtool check metrics` says of `text` (empty: clean); panics
/// when promtool is missing.
pub fn promtool_check(text: &str) -> String {
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus)");
    lint.stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        said.trim().to_string()
    } else {
        format!("(exit {}) {said}", out.status)
    }
}

/// A Prometheus server on a free loopback port, with `config`, storing
/// under `dir`; killed when dropped.
pub struct Prometheus {
    child: std::process::Child,
    /// Its web address (`127.0.0.1:PORT`).
    pub web: String,
}

impl Prometheus {
    pub fn start(dir: &Path, config: &str) -> Prometheus {
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let web = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--web.listen-address={web}"))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus (apt-get install prometheus)");
        Prometheus { child, web }
    }

    /// `query` asked of its HTTP API: each result's labels and value.
    pub fn query(&self, query: &str) -> Vec<(serde_json::Value, String)> {
        let encoded: String = query
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b == b'_' {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let Ok(mut s) = std::net::TcpStream::connect(&self.web) else {
            return Vec::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let asked = write!(
            s,
            "GET /api/v1/query?query={encoded} HTTP/1.0\r\nHost: {}\r\n\r\n",
            self.web
        );
        let mut out = String::new();
        if asked.is_err() || s.read_to_string(&mut out).is_err() {
            return Vec::new();
        }
        let Some((_, body)) = out.split_once("\r\n\r\n") else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        v["data"]["result"]
            .as_array()
            .map(|rs| {
                rs.iter()
                    .map(|r| {
                        (
                            r["metric"].clone(),
                            r["value"][1].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The first result's value of `query`, if any.
    pub fn value(&self, query: &str) -> Option<String> {
        self.query(query).into_iter().next().map(|(_, v)| v)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The metric names a Grafana dashboard's queries use (every `skiff_*`
/// and `DCGM_*` identifier of every panel's `expr` and every variable's
/// query).
pub fn dashboard_metrics(dashboard: &serde_json::Value) -> std::collections::BTreeSet<String> {
    fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                            out.push(s.clone())
                        }
                        _ => exprs(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    exprs(dashboard, &mut all);
    let mut names = std::collections::BTreeSet::new();
    for e in all {
        for token in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if token.starts_with("skiff_") || token.starts_with("DCGM_") {
                names.insert(token.to_string());
            }
        }
    }
    names
}

/// Whether `name` is a series of `body`'s families (a histogram's
/// `_bucket`, `_sum` and `_count` included).
pub fn serves(body: &str, name: &str) -> bool {
    let family = |n: &str| {
        body.lines()
            .any(|l| l == format!("# TYPE {n} {}", l.rsplit(' ').next().unwrap_or("")))
    };
    let base = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .filter(|b| family(b));
    family(name) || base.is_some()
}
