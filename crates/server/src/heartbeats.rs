//! The heartbeat table and the liveness settings: plain data shared by the
//! node API (which records heartbeats) and the leader's liveness loop
//! (which reads deadlines). Heartbeats live in memory only, never in Raft.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use skiff_model::GpuMetrics;

#[derive(Debug, Clone)]
pub struct LivenessConfig {
    /// The shortest TTL handed to agents.
    pub min_ttl: Duration,
    /// Heartbeats per second the leader aims to receive at most; above
    /// `min_ttl * this` nodes the TTL grows with the node count.
    pub max_heartbeats_per_second: f64,
    /// Time every node gets after a leader change before it can be
    /// declared down (default: the TTL).
    pub grace: Option<Duration>,
    /// Random extra share of the TTL (0.1: up to 10% more).
    pub jitter: f64,
    /// How often the leader looks for missed deadlines.
    pub check_every: Duration,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        LivenessConfig {
            min_ttl: Duration::from_secs(5),
            max_heartbeats_per_second: 50.0,
            grace: None,
            jitter: 0.1,
            check_every: Duration::from_millis(250),
        }
    }
}

impl LivenessConfig {
    /// The TTL for a cluster of `nodes`, before jitter.
    pub fn base_ttl(&self, nodes: usize) -> Duration {
        let spread =
            Duration::from_secs_f64(nodes as f64 / self.max_heartbeats_per_second.max(1.0));
        self.min_ttl.max(spread)
    }

    /// A TTL for one heartbeat: the base plus a random share of it.
    pub fn ttl(&self, nodes: usize) -> Duration {
        let base = self.base_ttl(nodes);
        base + base.mul_f64(self.jitter.max(0.0) * rand::random::<f64>())
    }

    pub(crate) fn grace(&self, nodes: usize) -> Duration {
        self.grace.unwrap_or_else(|| self.base_ttl(nodes))
    }
}

#[derive(Debug, Clone, Copy)]
struct Beat {
    last: Instant,
    deadline: Instant,
}

/// The heartbeat table. The leader's is authoritative; a follower keeps the
/// heartbeats it relayed only to answer with something when the leader
/// cannot be asked.
#[derive(Default)]
pub struct Heartbeats {
    beats: Mutex<HashMap<String, Beat>>,
    /// The GPU samples the latest heartbeats carried, and when they came.
    gpu: Mutex<HashMap<String, (Vec<GpuMetrics>, Instant)>>,
    /// What each node and its allocations used, as its latest heartbeat
    /// said, and when it came.
    usage: Mutex<HashMap<String, (skiff_proto::pb::NodeUsage, Instant)>>,
}

impl Heartbeats {
    /// Records a heartbeat that promised the next within `ttl`.
    pub fn beat(&self, node: &str, ttl: Duration) {
        let now = Instant::now();
        self.beats.lock().unwrap_or_else(|p| p.into_inner()).insert(
            node.to_string(),
            Beat {
                last: now,
                deadline: now + ttl,
            },
        );
    }

    /// Keeps the GPU samples a heartbeat carried (none: the last stay).
    pub fn record_gpu_metrics(&self, node: &str, metrics: Vec<GpuMetrics>) {
        if metrics.is_empty() {
            return;
        }
        self.gpu
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.to_string(), (metrics, Instant::now()));
    }

    /// Keeps the use a heartbeat reported (none: the last stays).
    pub fn record_usage(&self, node: &str, usage: Option<skiff_proto::pb::NodeUsage>) {
        if let Some(u) = usage {
            self.usage
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(node.to_string(), (u, Instant::now()));
        }
    }

    /// Every node's last reported use, its `age_ms` set.
    pub fn all_usage(&self) -> HashMap<String, skiff_proto::pb::NodeUsage> {
        let usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        usage
            .iter()
            .map(|(n, (u, at))| {
                let mut u = u.clone();
                u.age_ms = at.elapsed().as_millis() as u64;
                (n.clone(), u)
            })
            .collect()
    }

    /// The node's last GPU samples and their age, if this server got any.
    pub fn gpu_metrics(&self, node: &str) -> Option<(Vec<GpuMetrics>, Duration)> {
        let gpu = self.gpu.lock().unwrap_or_else(|p| p.into_inner());
        gpu.get(node).map(|(m, at)| (m.clone(), at.elapsed()))
    }

    /// Every node's last GPU samples and their age.
    pub fn all_gpu_metrics(&self) -> HashMap<String, (Vec<GpuMetrics>, Duration)> {
        let gpu = self.gpu.lock().unwrap_or_else(|p| p.into_inner());
        gpu.iter()
            .map(|(n, (m, at))| (n.clone(), (m.clone(), at.elapsed())))
            .collect()
    }

    /// Time since the node's last heartbeat, if this server saw one.
    pub fn age(&self, node: &str) -> Option<Duration> {
        self.beats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .map(|b| b.last.elapsed())
    }

    /// Every known node's heartbeat age.
    pub fn ages(&self) -> HashMap<String, Duration> {
        self.beats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(n, b)| (n.clone(), b.last.elapsed()))
            .collect()
    }

    /// Gives every node until `deadline` (a new leader's grace window).
    pub(crate) fn grant_until(&self, nodes: &[String], deadline: Instant) {
        let mut beats = self.beats.lock().unwrap_or_else(|p| p.into_inner());
        for n in nodes {
            let b = beats.entry(n.clone()).or_insert(Beat {
                last: Instant::now(),
                deadline,
            });
            b.deadline = b.deadline.max(deadline);
        }
    }

    /// Nodes among `nodes` whose deadline passed, with their heartbeat age;
    /// nodes never heard of get `grace` from now.
    pub(crate) fn expired(&self, nodes: &[String], grace: Duration) -> Vec<(String, Duration)> {
        let now = Instant::now();
        let mut beats = self.beats.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for n in nodes {
            let b = beats.entry(n.clone()).or_insert(Beat {
                last: now,
                deadline: now + grace,
            });
            if now > b.deadline {
                out.push((n.clone(), now - b.last));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn the_ttl_grows_with_the_cluster_past_the_minimum() {
        let cfg = LivenessConfig::default();
        assert_eq!(cfg.base_ttl(3), Duration::from_secs(5));
        assert_eq!(cfg.base_ttl(250), Duration::from_secs(5));
        assert_eq!(cfg.base_ttl(1000), Duration::from_secs(20));
        for _ in 0..100 {
            let t = cfg.ttl(3);
            assert!(
                t >= Duration::from_secs(5) && t <= Duration::from_millis(5500),
                "{t:?}"
            );
        }
    }

    #[test]
    fn deadlines_pass_only_for_silent_nodes() {
        let hb = Heartbeats::default();
        let nodes = vec!["a".to_string(), "b".to_string()];
        hb.beat("a", Duration::from_millis(0));
        hb.beat("b", Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(5));
        let expired = hb.expired(&nodes, Duration::from_secs(60));
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].0, "a");
        // A grace window pushes deadlines out, never in.
        hb.grant_until(&nodes, Instant::now() + Duration::from_secs(30));
        assert!(hb.expired(&nodes, Duration::from_secs(60)).is_empty());
        // A node never heard of gets the grace from now.
        assert!(hb
            .expired(&["c".to_string()], Duration::from_secs(1))
            .is_empty());
    }
}
