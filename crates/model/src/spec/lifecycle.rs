//! Parsing and validation of how a task's container lives on its node:
//! `restart` (policy and back-off), `probes`, `security`, `stop_signal`,
//! `stop_grace` and `pids_limit`. The types are in [`crate::lifecycle`].

use std::time::Duration;

use serde_json::Value;

use crate::duration::format_duration;
use crate::job::TaskSpec;
use crate::lifecycle::{
    normalize_capability, normalize_signal, Backoff, Probe, ProbeAction, Probes, RestartPolicy,
    RestartSpec, Security, UserId, CAPABILITIES,
};

use super::fields::{
    self, as_object, as_string, check_span, check_unknown, join, kind, one_of, scalar_text,
    string_list, Errors, BACKOFF_FIELDS, EXEC_FIELDS, HTTP_FIELDS, PROBES_FIELDS, PROBE_FIELDS,
    RESTART_FIELDS, SECURITY_FIELDS, TCP_FIELDS,
};

/// Shortest probe period accepted (Kubernetes' is 1 s; shorter periods
/// are allowed for quick local checks).
const MIN_PROBE_PERIOD: Duration = Duration::from_millis(100);
/// Shortest probe timeout accepted.
const MIN_PROBE_TIMEOUT: Duration = Duration::from_millis(10);
/// Longest back-off, grace period or probe delay accepted.
const MAX_LIFECYCLE_DURATION: Duration = Duration::from_secs(24 * 3600);
/// Most processes a container may be allowed (the kernel's `pid_max` limit).
const MAX_PIDS_LIMIT: u32 = 4 * 1024 * 1024;
const MAX_THRESHOLD: u32 = 1000;

const SIGNAL_RULE: &str =
    "is not a stop signal; use one of SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, SIGWINCH, SIGPWR, SIGRTMIN+3, SIGKILL";

/// The task's `stop_signal`, as its canonical name.
pub(super) fn parse_stop_signal(v: &Value, path: &str, errs: &mut Errors) -> Option<String> {
    let text = scalar_text(v).or_else(|| {
        errs.push(path, format!("must be a signal name, not {}", kind(v)));
        None
    })?;
    match normalize_signal(&text) {
        Some(sig) => Some(sig.to_string()),
        None => {
            errs.push(path, format!("{text:?} {SIGNAL_RULE}"));
            None
        }
    }
}

pub(super) fn parse_restart(v: &Value, path: &str, errs: &mut Errors) -> Option<RestartSpec> {
    let obj = as_object(v, path, errs)?;
    check_unknown(obj, path, RESTART_FIELDS, errs);
    let policy = match obj.get("policy") {
        None => Some(RestartPolicy::default()),
        Some(v) => one_of(
            v,
            &join(path, "policy"),
            "restart policy",
            "always, on-failure or never",
            RestartPolicy::parse,
            errs,
        ),
    };
    let backoff = match obj.get("backoff") {
        None => Some(Backoff::default()),
        Some(v) => {
            let bpath = join(path, "backoff");
            let bobj = as_object(v, &bpath, errs)?;
            check_unknown(bobj, &bpath, BACKOFF_FIELDS, errs);
            let d = Backoff::default();
            let mut field = |name: &str, default: Duration| match bobj.get(name) {
                None => Some(default),
                Some(v) => fields::duration(v, &join(&bpath, name), errs),
            };
            let initial = field("initial", d.initial);
            let max = field("max", d.max);
            let reset_after = field("reset_after", d.reset_after);
            Some(Backoff {
                initial: initial?,
                max: max?,
                reset_after: reset_after?,
            })
        }
    };
    Some(RestartSpec {
        policy: policy?,
        backoff: backoff?,
    })
}

pub(super) fn parse_probes(v: &Value, path: &str, errs: &mut Errors) -> Option<Probes> {
    let obj = as_object(v, path, errs)?;
    check_unknown(obj, path, PROBES_FIELDS, errs);
    let mut ok = true;
    let mut one = |name: &str| match obj.get(name) {
        None => None,
        Some(v) => {
            let p = parse_probe(v, &join(path, name), errs);
            ok &= p.is_some();
            p
        }
    };
    let probes = Probes {
        liveness: one("liveness"),
        readiness: one("readiness"),
        startup: one("startup"),
    };
    ok.then_some(probes)
}

fn parse_probe(v: &Value, path: &str, errs: &mut Errors) -> Option<Probe> {
    let obj = as_object(v, path, errs)?;
    check_unknown(obj, path, PROBE_FIELDS, errs);
    let given: Vec<&str> = ["exec", "http", "tcp"]
        .into_iter()
        .filter(|k| obj.contains_key(*k))
        .collect();
    let action = match given.as_slice() {
        ["exec"] => {
            let p = join(path, "exec");
            let e = as_object(&obj["exec"], &p, errs)?;
            check_unknown(e, &p, EXEC_FIELDS, errs);
            match e.get("command") {
                Some(c) => Some(ProbeAction::Exec {
                    command: string_list(c, &join(&p, "command"), errs),
                }),
                None => {
                    errs.push(&join(&p, "command"), "is required");
                    None
                }
            }
        }
        ["http"] => {
            let p = join(path, "http");
            let h = as_object(&obj["http"], &p, errs)?;
            check_unknown(h, &p, HTTP_FIELDS, errs);
            let hpath = match h.get("path") {
                None => Some("/".to_string()),
                Some(v) => as_string(v, &join(&p, "path"), errs),
            };
            let port = match h.get("port") {
                Some(v) => fields::port(v, &join(&p, "port"), errs),
                None => {
                    errs.push(&join(&p, "port"), "is required");
                    None
                }
            };
            Some(ProbeAction::Http {
                path: hpath?,
                port: port?,
            })
        }
        ["tcp"] => {
            let p = join(path, "tcp");
            let t = as_object(&obj["tcp"], &p, errs)?;
            check_unknown(t, &p, TCP_FIELDS, errs);
            match t.get("port") {
                Some(v) => {
                    fields::port(v, &join(&p, "port"), errs).map(|port| ProbeAction::Tcp { port })
                }
                None => {
                    errs.push(&join(&p, "port"), "is required");
                    None
                }
            }
        }
        [] => {
            errs.push(path, "needs one of exec, http or tcp");
            None
        }
        several => {
            errs.push(
                path,
                format!(
                    "has {}; a probe takes exactly one of exec, http or tcp",
                    several.join(" and ")
                ),
            );
            None
        }
    };
    let mut probe = Probe::new(action?);
    let mut ok = true;
    for (name, slot) in [
        ("period", &mut probe.period),
        ("timeout", &mut probe.timeout),
        ("initial_delay", &mut probe.initial_delay),
    ] {
        if let Some(v) = obj.get(name) {
            match fields::duration(v, &join(path, name), errs) {
                Some(d) => *slot = d,
                None => ok = false,
            }
        }
    }
    for (name, slot) in [
        ("success_threshold", &mut probe.success_threshold),
        ("failure_threshold", &mut probe.failure_threshold),
    ] {
        if let Some(v) = obj.get(name) {
            match fields::number(v, &join(path, name), 0, u64::from(u32::MAX), errs)
                .map(|n| n as u32)
            {
                Some(n) => *slot = n,
                None => ok = false,
            }
        }
    }
    ok.then_some(probe)
}

pub(super) fn parse_security(v: &Value, path: &str, errs: &mut Errors) -> Option<Security> {
    let obj = as_object(v, path, errs)?;
    check_unknown(obj, path, SECURITY_FIELDS, errs);
    let read_only_rootfs = match obj.get("read_only_rootfs") {
        None => Some(false),
        Some(v) => fields::boolean(v, &join(path, "read_only_rootfs"), errs),
    };
    let user = match obj.get("user") {
        None => Some(None),
        Some(v) => scalar_text(v)
            .ok_or_else(|| {
                errs.push(
                    &join(path, "user"),
                    format!("must be UID:GID, not {}", kind(v)),
                )
            })
            .ok()
            .and_then(|t| {
                UserId::parse(&t)
                    .map_err(|e| errs.push(&join(path, "user"), e))
                    .ok()
            })
            .map(Some),
    };
    let caps = |name: &str, errs: &mut Errors| {
        obj.get(name)
            .map(|v| string_list(v, &join(path, name), errs))
            .unwrap_or_default()
            .iter()
            .map(|c| normalize_capability(c))
            .collect::<Vec<_>>()
    };
    let cap_add = caps("cap_add", errs);
    let cap_drop = caps("cap_drop", errs);
    Some(Security {
        read_only_rootfs: read_only_rootfs?,
        user: user?,
        cap_add,
        cap_drop,
    })
}

/// A back-off, grace period or probe timing from `min` to a day.
fn check_duration(d: Duration, field: &str, min: Duration, errs: &mut Errors) {
    check_span(d, field, min, MAX_LIFECYCLE_DURATION, errs);
}

/// Restart, probes, security and stop rules.
pub(super) fn validate_lifecycle(task: &TaskSpec, path: &str, errs: &mut Errors) {
    let b = &task.restart.backoff;
    let bpath = join(path, "restart.backoff");
    let ms = Duration::from_millis(1);
    check_duration(b.initial, &join(&bpath, "initial"), ms, errs);
    check_duration(b.max, &join(&bpath, "max"), ms, errs);
    check_duration(b.reset_after, &join(&bpath, "reset_after"), ms, errs);
    if b.max < b.initial {
        errs.push(
            &join(&bpath, "max"),
            format!(
                "{} must not be below backoff.initial ({})",
                format_duration(b.max),
                format_duration(b.initial)
            ),
        );
    }
    for (name, probe) in [
        ("liveness", &task.probes.liveness),
        ("readiness", &task.probes.readiness),
        ("startup", &task.probes.startup),
    ] {
        if let Some(p) = probe {
            validate_probe(p, name, &join(path, &format!("probes.{name}")), errs);
        }
    }
    let s = &task.security;
    let spath = join(path, "security");
    for (list, items) in [("cap_add", &s.cap_add), ("cap_drop", &s.cap_drop)] {
        for (i, cap) in items.iter().enumerate() {
            let field = join(&spath, &format!("{list}[{i}]"));
            if cap == "ALL" {
                if list == "cap_add" {
                    errs.push(
                        &field,
                        "ALL may only be dropped; list the capabilities the task needs",
                    );
                }
            } else if !CAPABILITIES.contains(&cap.as_str()) {
                errs.push(
                    &field,
                    format!("{cap:?} is not a Linux capability (e.g. NET_ADMIN, SYS_TIME)"),
                );
            }
        }
    }
    if let Some(sig) = &task.stop_signal {
        if normalize_signal(sig).is_none() {
            errs.push(&join(path, "stop_signal"), format!("{sig:?} {SIGNAL_RULE}"));
        }
    }
    if let Some(g) = task.stop_grace {
        check_duration(g, &join(path, "stop_grace"), Duration::ZERO, errs);
    }
    if let Some(d) = task.shutdown_delay {
        check_duration(d, &join(path, "shutdown_delay"), Duration::ZERO, errs);
    }
    if let Some(n) = task.pids_limit {
        if n == 0 || n > MAX_PIDS_LIMIT {
            errs.push(
                &join(path, "pids_limit"),
                format!("{n} must be from 1 to {MAX_PIDS_LIMIT}"),
            );
        }
    }
}

fn validate_probe(p: &Probe, name: &str, path: &str, errs: &mut Errors) {
    check_duration(p.period, &join(path, "period"), MIN_PROBE_PERIOD, errs);
    check_duration(p.timeout, &join(path, "timeout"), MIN_PROBE_TIMEOUT, errs);
    check_duration(
        p.initial_delay,
        &join(path, "initial_delay"),
        Duration::ZERO,
        errs,
    );
    for (field, n) in [
        ("success_threshold", p.success_threshold),
        ("failure_threshold", p.failure_threshold),
    ] {
        if n == 0 || n > MAX_THRESHOLD {
            errs.push(
                &join(path, field),
                format!("{n} must be from 1 to {MAX_THRESHOLD}"),
            );
        }
    }
    if name != "readiness" && p.success_threshold != 1 {
        errs.push(
            &join(path, "success_threshold"),
            format!("must be 1 for a {name} probe (as in Kubernetes)"),
        );
    }
    match &p.action {
        ProbeAction::Exec { command } => {
            let field = join(path, "exec.command");
            match command.first() {
                None => errs.push(&field, "must name a program"),
                Some(first) if first.is_empty() => {
                    errs.push(&join(&field, "[0]"), "must name a program, not be empty")
                }
                _ => {}
            }
            if command.iter().any(|a| a.contains('\0')) {
                errs.push(&field, "must not contain a NUL byte");
            }
        }
        ProbeAction::Http { path: p, port } => {
            if !p.starts_with('/') || p.len() > 2048 || p.bytes().any(|b| b <= b' ' || b == 0x7f) {
                errs.push(
                    &join(path, "http.path"),
                    format!("{p:?} must start with '/' and hold no spaces or control characters (at most 2048 bytes)"),
                );
            }
            if *port == 0 {
                errs.push(
                    &join(path, "http.port"),
                    "0 must be a port number from 1 to 65535",
                );
            }
        }
        ProbeAction::Tcp { port } => {
            if *port == 0 {
                errs.push(
                    &join(path, "tcp.port"),
                    "0 must be a port number from 1 to 65535",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::spec::errors_of;
    use std::time::Duration;

    use crate::job::JobSpec;
    use crate::lifecycle::{Backoff, ProbeAction, RestartPolicy, UserId};

    const LIFECYCLE: &str = r#"
name: web
task:
  image: oci:/img
  restart: {policy: on-failure, backoff: {initial: 1s, max: 30s, reset_after: 2m}}
  probes:
    startup: {tcp: {port: 8080}, period: 500ms, failure_threshold: 30}
    liveness: {exec: {command: [cat, /tmp/alive]}, timeout: 2s}
    readiness: {http: {path: /healthz, port: 8080}, success_threshold: 2, initial_delay: 1s}
  security: {read_only_rootfs: true, user: "1000:1000", cap_add: [cap_net_admin], cap_drop: [ALL]}
  stop_signal: quit
  stop_grace: 3s
  pids_limit: 64
"#;

    #[test]
    fn lifecycle_fields_parse_with_kubernetes_defaults_filled_in() {
        let spec = JobSpec::from_yaml(LIFECYCLE).unwrap();
        let t = &spec.task;
        assert_eq!(t.restart.policy, RestartPolicy::OnFailure);
        assert_eq!(t.restart.backoff.initial, Duration::from_secs(1));
        let startup = t.probes.startup.as_ref().unwrap();
        assert_eq!(startup.action, ProbeAction::Tcp { port: 8080 });
        assert_eq!(startup.period, Duration::from_millis(500));
        assert_eq!(startup.timeout, Duration::from_secs(1), "default timeout");
        assert_eq!(startup.failure_threshold, 30);
        let live = t.probes.liveness.as_ref().unwrap();
        assert_eq!(live.period, Duration::from_secs(10), "default period");
        assert_eq!(live.failure_threshold, 3, "default failure threshold");
        let ready = t.probes.readiness.as_ref().unwrap();
        assert_eq!(ready.success_threshold, 2);
        assert_eq!(
            t.security.user,
            Some(UserId {
                uid: 1000,
                gid: 1000
            })
        );
        assert_eq!(t.security.cap_add, ["NET_ADMIN"]);
        assert_eq!(t.stop_signal.as_deref(), Some("SIGQUIT"));
        assert_eq!(t.stop_grace, Some(Duration::from_secs(3)));
        assert_eq!(t.pids_limit, Some(64));
        // And the stored form is valid input again, through YAML and JSON.
        let yaml = serde_yaml_ng::to_string(&spec).unwrap();
        assert_eq!(JobSpec::from_yaml(&yaml).unwrap(), spec, "{yaml}");
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<JobSpec>(&json).unwrap(), spec);
    }

    #[test]
    fn a_task_without_lifecycle_fields_restarts_always() {
        let spec = JobSpec::from_yaml("name: x\ntask: {image: 'oci:/i'}").unwrap();
        assert_eq!(spec.task.restart.policy, RestartPolicy::Always);
        assert_eq!(spec.task.restart.backoff, Backoff::default());
        assert!(spec.task.probes.is_empty());
        let yaml = serde_yaml_ng::to_string(&spec).unwrap();
        assert!(
            !yaml.contains("restart"),
            "defaults are not written out: {yaml}"
        );
    }

    #[test]
    fn bad_lifecycle_fields_name_the_field_and_the_rule() {
        let text = r#"
name: web
task:
  image: oci:/img
  restart: {policy: sometimes, backoff: {initial: 10, max: 1s, colour: red}}
  probes:
    liveness: {http: {port: 0}, tcp: {port: 80}}
    readiness: {http: {path: healthz, port: 80}, period: 10ms, failure_threshold: 0}
    startup: {exec: {command: []}, success_threshold: 2}
    sideways: {}
  security: {user: web, cap_add: [ALL, FLY], read_only_rootfs: "yes"}
  stop_signal: SIGSEGV
  stop_grace: 5
  pids_limit: 0
"#;
        let errs = errors_of(text);
        let expect = [
            "task.restart.policy: \"sometimes\" is not a restart policy",
            "task.restart.backoff.colour: unknown field",
            "task.restart.backoff.initial: 10 needs a unit",
            "task.probes.sideways: unknown field",
            "task.probes.liveness: has http and tcp; a probe takes exactly one",
            "task.security.user: \"web\" must be UID:GID",
            "task.security.read_only_rootfs: must be true or false",
            "task.stop_signal: \"SIGSEGV\" is not a stop signal",
            "task.stop_grace: 5 needs a unit",
        ];
        for e in expect {
            assert!(
                errs.iter().any(|got| got.starts_with(e)),
                "missing {e:?} in {errs:#?}"
            );
        }
        // Value rules that need a parsed spec.
        let shaped = r#"
name: web
task:
  image: oci:/img
  restart: {backoff: {initial: 1m, max: 1s}}
  probes:
    readiness: {http: {path: healthz, port: 80}, period: 10ms, failure_threshold: 0}
    startup: {exec: {command: []}, success_threshold: 2}
  security: {cap_add: [ALL, FLY]}
  pids_limit: 0
"#;
        let errs = errors_of(shaped);
        for e in [
            "task.restart.backoff.max: 1s must not be below backoff.initial (1m)",
            "task.probes.readiness.period: 10ms is below the minimum of 100ms",
            "task.probes.readiness.failure_threshold: 0 must be from 1 to 1000",
            "task.probes.readiness.http.path: \"healthz\" must start with '/'",
            "task.probes.startup.success_threshold: must be 1 for a startup probe",
            "task.probes.startup.exec.command: must name a program",
            "task.security.cap_add[0]: ALL may only be dropped",
            "task.security.cap_add[1]: \"FLY\" is not a Linux capability",
            "task.pids_limit: 0 must be from 1 to",
        ] {
            assert!(
                errs.iter().any(|got| got.starts_with(e)),
                "missing {e:?} in {errs:#?}"
            );
        }
    }
}
