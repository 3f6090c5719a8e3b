//! What the node and its allocations use now, for the heartbeats (`skiff
//! top`): the machine's cpu from `/proc/stat` and memory from
//! `/proc/meminfo`, each running allocation's from its cgroup. CPU is a
//! rate, so it is the average since the previous sample (0 at the first).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use skiff_proto::pb;

use super::AgentMetrics;

/// Busy and total jiffies of all CPUs, and how many CPUs there are.
fn cpu_times(stat: &str) -> Option<(u64, u64, u64)> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
    let total = busy + at(3) + at(4);
    let cpus = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count() as u64;
    Some((busy, total, cpus.max(1)))
}

/// Memory in use: total less available, in bytes.
fn memory_used(meminfo: &str) -> Option<u64> {
    let kib = |key: &str| -> Option<u64> {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some(kib("MemTotal:")?.saturating_sub(kib("MemAvailable:")?) * 1024)
}

/// Samples use between heartbeats.
pub struct UsageSampler {
    metrics: AgentMetrics,
    proc_dir: PathBuf,
    node_cpu: Option<(u64, u64)>,
    allocs: HashMap<String, (f64, Instant)>,
}

impl UsageSampler {
    pub fn new(metrics: AgentMetrics) -> UsageSampler {
        UsageSampler {
            metrics,
            proc_dir: "/proc".into(),
            node_cpu: None,
            allocs: HashMap::new(),
        }
    }

    /// What is used now (rates since the previous call).
    pub fn sample(&mut self) -> pb::NodeUsage {
        let read = |f: &str| std::fs::read_to_string(self.proc_dir.join(f)).unwrap_or_default();
        let mut out = pb::NodeUsage {
            memory_bytes: memory_used(&read("meminfo")).unwrap_or(0),
            ..Default::default()
        };
        if let Some((busy, total, cpus)) = cpu_times(&read("stat")) {
            if let Some((b0, t0)) = self.node_cpu {
                let dt = total.saturating_sub(t0);
                out.cpu_millis = (busy.saturating_sub(b0) * cpus * 1000)
                    .checked_div(dt)
                    .unwrap_or(0);
            }
            self.node_cpu = Some((busy, total));
        }
        let now = Instant::now();
        let usage = self.metrics.usage();
        let mut next = HashMap::with_capacity(usage.len());
        for (id, u) in usage {
            let cpu_millis = match self.allocs.get(&id) {
                Some((before, at)) if now > *at && u.cpu_seconds >= *before => {
                    ((u.cpu_seconds - before) / (now - *at).as_secs_f64() * 1000.0) as u64
                }
                _ => 0,
            };
            out.allocs.push(pb::AllocUsage {
                alloc_id: id.clone(),
                cpu_millis,
                memory_bytes: u.memory_working_set_bytes,
            });
            next.insert(id, (u.cpu_seconds, now));
        }
        // Allocations gone are forgotten.
        self.allocs = next;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_use_is_read_from_proc() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\ncpu1 50 0 25 400 25 0 0 0 0 0\nintr 1\n";
        assert_eq!(cpu_times(stat), Some((150, 1000, 2)));
        let meminfo = "MemTotal:       16000 kB\nMemFree:  100 kB\nMemAvailable:   12000 kB\n";
        assert_eq!(memory_used(meminfo), Some(4000 * 1024));
    }
}
