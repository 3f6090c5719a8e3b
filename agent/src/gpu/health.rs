//! GPU health: which GPUs are unhealthy, why, and since when.
//!
//! A plain state machine with the time passed in, so it is tested without
//! a GPU or a clock. The monitor feeds it what the inventory reports
//! (XID events, uncorrectable ECC errors, GPUs that fell off the bus) and
//! asks it every tick to forget GPUs that stayed quiet long enough.
//!
//! Unlike the Kubernetes device plugin, an unhealthy GPU is not lost until
//! the agent restarts: it is healthy again once `quiet` has passed without
//! a new bad event for it, or at once when an operator resets it. The state
//! is saved in the agent's data directory so an agent restart neither
//! forgets a bad GPU nor restarts its quiet period.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// XIDs that application errors cause (a bad kernel, a page fault in a
/// program) rather than the GPU: ignored by default, as NVIDIA's own device
/// plugin does.
pub const DEFAULT_IGNORED_XIDS: [u64; 5] = [13, 31, 43, 45, 68];

/// Something bad the inventory saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HealthEvent {
    /// An XID error. Without a UUID it counts against every GPU (NVML does
    /// not always say which device an event came from).
    Xid {
        #[serde(default, rename = "gpu", skip_serializing_if = "Option::is_none")]
        uuid: Option<String>,
        xid: u64,
    },
    /// Uncorrectable ECC errors (`count` new ones).
    EccUncorrectable {
        #[serde(rename = "gpu")]
        uuid: String,
        #[serde(default = "one")]
        count: u64,
    },
    /// The GPU fell off the bus: the driver cannot reach it.
    Lost {
        #[serde(rename = "gpu")]
        uuid: String,
    },
}

fn one() -> u64 {
    1
}

/// A short, human description of well-known XIDs, in our own words.
pub fn xid_description(xid: u64) -> Option<&'static str> {
    Some(match xid {
        13 => "graphics engine exception",
        31 => "GPU memory page fault",
        32 => "invalid or corrupted push buffer stream",
        43 => "GPU stopped processing",
        45 => "preemptive cleanup",
        48 => "double-bit ECC error",
        61 | 62 => "internal microcontroller error",
        63 => "ECC page retirement or row remapping recorded",
        64 => "ECC page retirement or row remapping failed",
        68 => "video processor exception",
        69 => "graphics engine class error",
        74 => "NVLink error",
        79 => "fell off the bus",
        92 => "high single-bit ECC error rate",
        94 => "contained ECC error",
        95 => "uncontained ECC error",
        119 | 120 => "GSP firmware error",
        _ => return None,
    })
}

impl HealthEvent {
    /// The GPU it concerns, when it names one.
    pub fn uuid(&self) -> Option<&str> {
        match self {
            HealthEvent::Xid { uuid, .. } => uuid.as_deref(),
            HealthEvent::EccUncorrectable { uuid, .. } | HealthEvent::Lost { uuid } => Some(uuid),
        }
    }

    /// Why this event makes a GPU unhealthy, as `describe node` shows it.
    pub fn reason(&self) -> String {
        match self {
            HealthEvent::Xid { xid, .. } => match xid_description(*xid) {
                Some(d) => format!("XID {xid}: {d}"),
                None => format!("XID {xid}"),
            },
            HealthEvent::EccUncorrectable { count, .. } => format!(
                "{count} uncorrectable ECC error{}",
                if *count == 1 { "" } else { "s" }
            ),
            HealthEvent::Lost { .. } => "fell off the bus".to_string(),
        }
    }
}

/// One unhealthy GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unhealthy {
    pub reason: String,
    /// When it became unhealthy (ms since the Unix epoch).
    pub since_ms: u64,
    /// The last bad event (ms since the Unix epoch): the quiet period
    /// counts from here.
    pub last_ms: u64,
}

#[derive(Debug, Clone)]
pub struct HealthTracker {
    quiet: Duration,
    ignored: BTreeSet<u64>,
    bad: BTreeMap<String, Unhealthy>,
}

impl HealthTracker {
    pub fn new(quiet: Duration, ignored_xids: impl IntoIterator<Item = u64>) -> HealthTracker {
        HealthTracker {
            quiet,
            ignored: ignored_xids.into_iter().collect(),
            bad: BTreeMap::new(),
        }
    }

    /// Applies one event at `now_ms` to the GPUs in `all` (used for events
    /// that name none). Returns true when a GPU turned unhealthy.
    pub fn record(&mut self, event: &HealthEvent, all: &[String], now_ms: u64) -> bool {
        if let HealthEvent::Xid { xid, .. } = event {
            if self.ignored.contains(xid) {
                tracing::debug!(xid, gpu = ?event.uuid(), "ignoring an application XID");
                return false;
            }
        }
        if let HealthEvent::EccUncorrectable { count: 0, .. } = event {
            return false;
        }
        let targets: Vec<String> = match event.uuid() {
            Some(u) => vec![u.to_string()],
            None => all.to_vec(),
        };
        let reason = event.reason();
        let mut turned = false;
        for uuid in targets {
            match self.bad.get_mut(&uuid) {
                Some(u) => u.last_ms = u.last_ms.max(now_ms),
                None => {
                    tracing::warn!(gpu = %uuid, %reason, "GPU unhealthy");
                    self.bad.insert(
                        uuid,
                        Unhealthy {
                            reason: reason.clone(),
                            since_ms: now_ms,
                            last_ms: now_ms,
                        },
                    );
                    turned = true;
                }
            }
        }
        turned
    }

    /// GPUs quiet for the whole quiet period are healthy again. Returns
    /// true when any was.
    pub fn expire(&mut self, now_ms: u64) -> bool {
        let quiet = self.quiet.as_millis() as u64;
        let before = self.bad.len();
        self.bad.retain(|uuid, u| {
            let keep = now_ms.saturating_sub(u.last_ms) < quiet;
            if !keep {
                tracing::info!(gpu = %uuid, reason = %u.reason, "GPU healthy again after its quiet period");
            }
            keep
        });
        self.bad.len() != before
    }

    /// An operator's reset: healthy at once. Returns what it was.
    pub fn reset(&mut self, uuid: &str) -> Option<Unhealthy> {
        let was = self.bad.remove(uuid);
        if let Some(u) = &was {
            tracing::info!(gpu = %uuid, reason = %u.reason, "GPU reset by an operator");
        }
        was
    }

    pub fn status(&self, uuid: &str) -> Option<&Unhealthy> {
        self.bad.get(uuid)
    }

    pub fn unhealthy(&self) -> &BTreeMap<String, Unhealthy> {
        &self.bad
    }

    /// Takes over a saved state (from before an agent restart).
    pub fn restore(&mut self, saved: BTreeMap<String, Unhealthy>) {
        self.bad = saved;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    fn tracker() -> HealthTracker {
        HealthTracker::new(Duration::from_secs(300), DEFAULT_IGNORED_XIDS)
    }

    fn xid(uuid: &str, xid: u64) -> HealthEvent {
        HealthEvent::Xid {
            uuid: Some(uuid.into()),
            xid,
        }
    }

    #[test]
    fn a_critical_xid_makes_the_gpu_unhealthy_and_application_xids_do_not() {
        let mut t = tracker();
        for ignored in DEFAULT_IGNORED_XIDS {
            assert!(!t.record(&xid("GPU-a", ignored), &[], 0));
        }
        assert!(t.status("GPU-a").is_none());
        assert!(t.record(&xid("GPU-a", 79), &[], 1000));
        assert_eq!(
            t.status("GPU-a").unwrap().reason,
            "XID 79: fell off the bus"
        );
        assert!(t.status("GPU-b").is_none());
        // A second event changes nothing that matters to the servers.
        assert!(!t.record(&xid("GPU-a", 48), &[], 2000));
        assert_eq!(t.status("GPU-a").unwrap().since_ms, 1000);
    }

    #[test]
    fn the_ignore_list_is_configurable() {
        let mut t = HealthTracker::new(Duration::from_secs(60), [109]);
        assert!(!t.record(&xid("GPU-a", 109), &[], 0));
        assert!(
            t.record(&xid("GPU-a", 13), &[], 0),
            "13 is no longer ignored"
        );
    }

    #[test]
    fn an_xid_without_a_device_counts_against_every_gpu() {
        let mut t = tracker();
        let all = vec!["GPU-a".to_string(), "GPU-b".to_string()];
        assert!(t.record(
            &HealthEvent::Xid {
                uuid: None,
                xid: 74
            },
            &all,
            0
        ));
        assert_eq!(t.unhealthy().len(), 2);
    }

    #[test]
    fn ecc_and_lost_gpus_say_why() {
        let mut t = tracker();
        t.record(
            &HealthEvent::EccUncorrectable {
                uuid: "GPU-a".into(),
                count: 2,
            },
            &[],
            0,
        );
        t.record(
            &HealthEvent::Lost {
                uuid: "GPU-b".into(),
            },
            &[],
            0,
        );
        assert_eq!(
            t.status("GPU-a").unwrap().reason,
            "2 uncorrectable ECC errors"
        );
        assert_eq!(t.status("GPU-b").unwrap().reason, "fell off the bus");
    }

    #[test]
    fn a_gpu_is_healthy_again_after_a_quiet_period_counted_from_its_last_event() {
        let mut t = tracker();
        t.record(&xid("GPU-a", 79), &[], 0);
        t.record(&xid("GPU-a", 79), &[], 4 * MIN);
        assert!(!t.expire(5 * MIN), "only 1 minute since the last event");
        assert!(t.status("GPU-a").is_some());
        assert!(t.expire(9 * MIN));
        assert!(t.status("GPU-a").is_none());
    }

    #[test]
    fn a_reset_makes_the_gpu_healthy_at_once() {
        let mut t = tracker();
        t.record(&xid("GPU-a", 79), &[], 0);
        let was = t.reset("GPU-a").unwrap();
        assert_eq!(was.reason, "XID 79: fell off the bus");
        assert!(t.status("GPU-a").is_none());
        assert!(t.reset("GPU-a").is_none());
    }

    #[test]
    fn events_parse_from_their_json_lines() {
        let e: HealthEvent =
            serde_json::from_str(r#"{"kind":"xid","gpu":"GPU-a","xid":79}"#).unwrap();
        assert_eq!(e, xid("GPU-a", 79));
        let e: HealthEvent =
            serde_json::from_str(r#"{"kind":"ecc_uncorrectable","gpu":"GPU-a"}"#).unwrap();
        assert_eq!(
            e,
            HealthEvent::EccUncorrectable {
                uuid: "GPU-a".into(),
                count: 1
            }
        );
        let e: HealthEvent = serde_json::from_str(r#"{"kind":"lost","gpu":"GPU-b"}"#).unwrap();
        assert_eq!(e.uuid(), Some("GPU-b"));
        assert!(serde_json::from_str::<HealthEvent>(r#"{"kind":"melted","gpu":"x"}"#).is_err());
    }
}
