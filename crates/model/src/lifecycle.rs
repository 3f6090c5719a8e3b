//! How a task's container lives on its node: restart policy and back-off,
//! health probes, security options and how it is stopped.
//!
//! The defaults follow Kubernetes, so an operator coming from it finds
//! what they expect: restart `always` with a 10 s back-off doubling to
//! 5 min and reset after 10 min of running; probes every 10 s with a 1 s
//! timeout, 1 success and 3 failures.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::duration::{format_duration, parse_duration};

/// When the agent starts a task's container again after it exits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Whatever the exit code (Kubernetes' default, and what services want).
    #[default]
    Always,
    /// Only after a non-zero exit, a signal or an OOM kill.
    OnFailure,
    /// Never: the allocation ends with the container.
    Never,
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        }
    }

    pub fn parse(text: &str) -> Option<RestartPolicy> {
        Some(match text {
            "always" => RestartPolicy::Always,
            "on-failure" => RestartPolicy::OnFailure,
            "never" => RestartPolicy::Never,
            _ => return None,
        })
    }

    /// Whether a container that ended this way is started again.
    pub fn restarts(self, succeeded: bool) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !succeeded,
            RestartPolicy::Never => false,
        }
    }
}

/// Exponential back-off between restarts: `initial`, doubling each time up
/// to `max`; a container that ran `reset_after` or longer starts again from
/// `initial`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    #[serde(with = "crate::duration::text")]
    pub initial: Duration,
    #[serde(with = "crate::duration::text")]
    pub max: Duration,
    #[serde(with = "crate::duration::text")]
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        }
    }
}

impl Backoff {
    /// The wait before restart number `step` (0 for the first restart
    /// since the last reset).
    pub fn delay(&self, step: u32) -> Duration {
        let factor = 1u32.checked_shl(step.min(31)).unwrap_or(u32::MAX);
        self.initial
            .checked_mul(factor)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartSpec {
    #[serde(default)]
    pub policy: RestartPolicy,
    #[serde(default)]
    pub backoff: Backoff,
}

impl RestartSpec {
    pub fn is_default(&self) -> bool {
        *self == RestartSpec::default()
    }
}

/// What a probe checks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ProbeAction {
    /// Runs a command in the container; exit code 0 passes.
    Exec { command: Vec<String> },
    /// `GET http://127.0.0.1:PORT/PATH` in the container's network; a
    /// status from 200 to 399 passes.
    Http { path: String, port: u16 },
    /// A TCP connection to the port in the container's network.
    Tcp { port: u16 },
}

impl ProbeAction {
    pub fn kind(&self) -> &'static str {
        match self {
            ProbeAction::Exec { .. } => "exec",
            ProbeAction::Http { .. } => "http",
            ProbeAction::Tcp { .. } => "tcp",
        }
    }
}

impl fmt::Display for ProbeAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeAction::Exec { command } => write!(f, "exec {command:?}"),
            ProbeAction::Http { path, port } => write!(f, "http GET :{port}{path}"),
            ProbeAction::Tcp { port } => write!(f, "tcp :{port}"),
        }
    }
}

/// Probe timing and thresholds default to Kubernetes'.
pub const DEFAULT_PROBE_PERIOD: Duration = Duration::from_secs(10);
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_SUCCESS_THRESHOLD: u32 = 1;
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;

/// One health check, run every `period` once `initial_delay` has passed.
/// It flips to passing after `success_threshold` successes in a row and
/// to failing after `failure_threshold` failures in a row.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Probe {
    pub action: ProbeAction,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
    pub initial_delay: Duration,
}

impl Probe {
    /// A probe with Kubernetes' default timing.
    pub fn new(action: ProbeAction) -> Probe {
        Probe {
            action,
            period: DEFAULT_PROBE_PERIOD,
            timeout: DEFAULT_PROBE_TIMEOUT,
            success_threshold: DEFAULT_SUCCESS_THRESHOLD,
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            initial_delay: Duration::ZERO,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecForm {
    command: Vec<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpForm {
    #[serde(default = "root_path")]
    path: String,
    port: u16,
}

fn root_path() -> String {
    "/".into()
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TcpForm {
    port: u16,
}

/// The serialized form: the action as one of `exec`, `http`, `tcp`
/// beside the timing fields, as the YAML spec writes it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeForm {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exec: Option<ExecForm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http: Option<HttpForm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tcp: Option<TcpForm>,
    period: String,
    timeout: String,
    success_threshold: u32,
    failure_threshold: u32,
    initial_delay: String,
}

impl Serialize for Probe {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut form = ProbeForm {
            exec: None,
            http: None,
            tcp: None,
            period: format_duration(self.period),
            timeout: format_duration(self.timeout),
            success_threshold: self.success_threshold,
            failure_threshold: self.failure_threshold,
            initial_delay: format_duration(self.initial_delay),
        };
        match &self.action {
            ProbeAction::Exec { command } => {
                form.exec = Some(ExecForm {
                    command: command.clone(),
                })
            }
            ProbeAction::Http { path, port } => {
                form.http = Some(HttpForm {
                    path: path.clone(),
                    port: *port,
                })
            }
            ProbeAction::Tcp { port } => form.tcp = Some(TcpForm { port: *port }),
        }
        form.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Probe {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let f = ProbeForm::deserialize(d)?;
        let action = match (f.exec, f.http, f.tcp) {
            (Some(e), None, None) => ProbeAction::Exec { command: e.command },
            (None, Some(h), None) => ProbeAction::Http {
                path: h.path,
                port: h.port,
            },
            (None, None, Some(t)) => ProbeAction::Tcp { port: t.port },
            _ => {
                return Err(D::Error::custom(
                    "a probe needs exactly one of exec, http, tcp",
                ))
            }
        };
        let dur = |t: &str| parse_duration(t).map_err(D::Error::custom);
        Ok(Probe {
            action,
            period: dur(&f.period)?,
            timeout: dur(&f.timeout)?,
            success_threshold: f.success_threshold,
            failure_threshold: f.failure_threshold,
            initial_delay: dur(&f.initial_delay)?,
        })
    }
}

/// The three probes Kubernetes knows: `startup` holds the other two back
/// until it passes; `liveness` failing restarts the container; `readiness`
/// is the allocation's health.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup: Option<Probe>,
}

impl Probes {
    pub fn is_empty(&self) -> bool {
        self.liveness.is_none() && self.readiness.is_none() && self.startup.is_none()
    }
}

/// A numeric user and group for the container's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserId {
    pub uid: u32,
    pub gid: u32,
}

impl UserId {
    /// `uid:gid` (both numbers), or `uid` alone, which means `uid:uid`.
    pub fn parse(text: &str) -> Result<UserId, String> {
        let num = |s: &str| {
            s.parse::<u32>()
                .ok()
                .filter(|_| s.bytes().all(|b| b.is_ascii_digit()))
        };
        let parsed = match text.split_once(':') {
            Some((u, g)) => num(u).zip(num(g)),
            None => num(text).map(|u| (u, u)),
        };
        parsed
            .map(|(uid, gid)| UserId { uid, gid })
            .ok_or_else(|| format!("{text:?} must be UID:GID, two numbers (e.g. 1000:1000)"))
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

impl Serialize for UserId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        UserId::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Security options on top of the locked-down defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Security {
    /// Mount the container's root filesystem read-only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only_rootfs: bool,
    /// Run as this user instead of the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserId>,
    /// Capabilities added to the default set, as `NET_ADMIN` (no `CAP_`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// Capabilities removed from the default set; `ALL` removes every one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
}

impl Security {
    pub fn is_default(&self) -> bool {
        *self == Security::default()
    }
}

/// Every Linux capability, without the `CAP_` prefix.
pub const CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The rule a container's working directory follows, from a spec or an
/// image: absolute, without `..`, and not under `/proc` (a working
/// directory of `/proc/self/fd/N` was CVE-2024-21626's way out of the
/// container through a descriptor runc leaked).
pub fn check_workdir(dir: &str) -> Result<(), &'static str> {
    if !dir.starts_with('/') {
        return Err("must be an absolute path");
    }
    if dir.split('/').any(|c| c == "..") {
        return Err("must not contain `..`");
    }
    let clean: Vec<&str> = dir
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if clean.first() == Some(&"proc") {
        return Err("must not be under /proc");
    }
    Ok(())
}

/// Docker's default capability set, which every container starts from.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// `net_admin`, `CAP_NET_ADMIN` and `NET_ADMIN` all name `NET_ADMIN`.
pub fn normalize_capability(name: &str) -> String {
    let upper = name.trim().to_ascii_uppercase();
    upper
        .strip_prefix("CAP_")
        .map(str::to_string)
        .unwrap_or(upper)
}

/// The capabilities a container gets: the defaults, minus `cap_drop`
/// (`ALL` drops every default), plus `cap_add`. Sorted.
pub fn effective_capabilities(security: &Security) -> Vec<String> {
    let drop_all = security.cap_drop.iter().any(|c| c == "ALL");
    let mut caps: Vec<String> = DEFAULT_CAPABILITIES
        .iter()
        .filter(|c| !drop_all && !security.cap_drop.iter().any(|d| d == *c))
        .map(|c| c.to_string())
        .collect();
    for c in &security.cap_add {
        if !caps.contains(c) {
            caps.push(c.clone());
        }
    }
    caps.sort();
    caps
}

/// Signals a container may be stopped with, by name and number.
pub const SIGNALS: &[(&str, i32)] = &[
    ("SIGHUP", 1),
    ("SIGINT", 2),
    ("SIGQUIT", 3),
    ("SIGKILL", 9),
    ("SIGUSR1", 10),
    ("SIGUSR2", 12),
    ("SIGTERM", 15),
    ("SIGWINCH", 28),
    ("SIGPWR", 30),
    ("SIGRTMIN+3", 37),
];

/// `TERM`, `sigterm`, `SIGTERM` and `15` all name `SIGTERM`.
pub fn normalize_signal(text: &str) -> Option<&'static str> {
    let t = text.trim();
    if let Ok(n) = t.parse::<i32>() {
        return SIGNALS.iter().find(|(_, num)| *num == n).map(|(s, _)| *s);
    }
    let upper = t.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    SIGNALS.iter().find(|(s, _)| *s == name).map(|(s, _)| *s)
}

/// The signal a container is stopped with unless its task names another.
pub const DEFAULT_STOP_SIGNAL: &str = "SIGTERM";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let b = Backoff::default();
        let secs: Vec<u64> = (0..7).map(|i| b.delay(i).as_secs()).collect();
        assert_eq!(secs, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(b.delay(1000), Duration::from_secs(300));
    }

    #[test]
    fn restart_policies_decide_by_outcome() {
        assert!(RestartPolicy::Always.restarts(true));
        assert!(RestartPolicy::Always.restarts(false));
        assert!(!RestartPolicy::OnFailure.restarts(true));
        assert!(RestartPolicy::OnFailure.restarts(false));
        assert!(!RestartPolicy::Never.restarts(false));
    }

    #[test]
    fn users_and_signals_and_capabilities_normalize() {
        assert_eq!(UserId::parse("1000:50"), Ok(UserId { uid: 1000, gid: 50 }));
        assert_eq!(UserId::parse("7"), Ok(UserId { uid: 7, gid: 7 }));
        assert!(UserId::parse("web").is_err());
        assert!(UserId::parse("1:+2").is_err());
        assert_eq!(normalize_signal("term"), Some("SIGTERM"));
        assert_eq!(normalize_signal("SIGQUIT"), Some("SIGQUIT"));
        assert_eq!(normalize_signal("2"), Some("SIGINT"));
        assert_eq!(normalize_signal("SIGSEGV"), None);
        assert_eq!(normalize_capability("cap_net_admin"), "NET_ADMIN");
        let s = Security {
            cap_add: vec!["NET_ADMIN".into()],
            cap_drop: vec!["NET_RAW".into(), "MKNOD".into()],
            ..Security::default()
        };
        let caps = effective_capabilities(&s);
        assert!(caps.contains(&"NET_ADMIN".to_string()));
        assert!(!caps.contains(&"NET_RAW".to_string()));
        assert_eq!(caps.len(), DEFAULT_CAPABILITIES.len() - 1);
        let none = Security {
            cap_drop: vec!["ALL".into()],
            cap_add: vec!["KILL".into()],
            ..Security::default()
        };
        assert_eq!(effective_capabilities(&none), ["KILL"]);
    }
}
