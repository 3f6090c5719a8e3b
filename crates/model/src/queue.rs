//! Team queues (`skiff queue apply`): a share of the cluster a team is
//! owed (its nominal quota), the cohort of queues it lends idle capacity
//! to and borrows from, and its fair-share weight. A job that names a
//! queue waits in it until its whole request is admitted; the scheduler
//! decides admission (`skiff_scheduler::queues`), the state machine
//! records it.
//!
//! Amounts are kept as one vector keyed by resource name ([`Amounts`]):
//! `cpu` (millicores), `memory` (bytes), `allocations`, and one key per
//! GPU model, `gpu:MODEL` or `gpu:any` for requests naming no model, in
//! [`GPU_UNITS`] per GPU (a MIG instance counts as its share of its
//! parent's compute slices, as in namespace quotas).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::job::JobSpec;
use crate::namespace::{format_gpus, Quota, Usage, ANY_GPU, GPU_UNITS};
use crate::quantity::{format_cpu, format_memory_human};

/// Amounts by resource key (see the module's words).
pub type Amounts = BTreeMap<String, u64>;

/// The resource key of cpu, in millicores.
pub const CPU: &str = "cpu";
/// The resource key of memory, in bytes.
pub const MEMORY: &str = "memory";
/// The resource key of allocations running at once.
pub const ALLOCATIONS: &str = "allocations";
/// The prefix of GPU resource keys.
pub const GPU_PREFIX: &str = "gpu:";

/// How long the head of a queue waiting for room lets other jobs take what
/// frees up before nodes are held for it, when the queue does not say.
pub const DEFAULT_BACKFILL_WINDOW: Duration = Duration::from_secs(600);

/// A team queue as an admin described it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Queue {
    /// A DNS-1123 label.
    pub name: String,
    /// Queues of one cohort lend each other their unused quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cohort: Option<String>,
    /// Fair-share weight among the cohort's queues (default 1; 0: borrows
    /// only what nobody else wants, and is reclaimed from first).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub weight: u32,
    /// Namespaces whose jobs may submit here (`*`: every namespace).
    pub namespaces: Vec<String>,
    /// What the team is owed. A resource left out is not governed by the
    /// queue; when `gpus` names any model, a model not named is owed 0.
    #[serde(default, skip_serializing_if = "Quota::is_empty")]
    pub nominal: Quota,
    /// The most the queue may borrow beyond its nominal quota, per
    /// resource; left out: as much as the cohort can lend.
    #[serde(default, skip_serializing_if = "Quota::is_empty")]
    pub borrowing_limit: Quota,
    /// The most of its nominal quota the queue lends to the cohort while
    /// it does not use it; left out: all of it.
    #[serde(default, skip_serializing_if = "Quota::is_empty")]
    pub lending_limit: Quota,
    /// How long the queue's head, waiting for room, lets other jobs take
    /// what frees up; after that nodes are held for it (nothing else is
    /// admitted there) so they drain for it. Left out:
    /// [`DEFAULT_BACKFILL_WINDOW`].
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::duration::opt_text"
    )]
    pub backfill_window: Option<Duration>,
}

fn one() -> u32 {
    1
}

fn is_one(w: &u32) -> bool {
    *w == 1
}

/// The resource key of GPUs of `model` (`None`: naming no model).
pub fn gpu_key(model: Option<&str>) -> String {
    format!("{GPU_PREFIX}{}", model.unwrap_or(ANY_GPU))
}

/// A quota's amounts by resource key; what it leaves out is absent.
pub fn quota_amounts(q: &Quota) -> Amounts {
    let mut a = Amounts::new();
    if let Some(v) = q.cpu_millis {
        a.insert(CPU.into(), v);
    }
    if let Some(v) = q.memory_bytes {
        a.insert(MEMORY.into(), v);
    }
    if let Some(v) = q.allocations {
        a.insert(ALLOCATIONS.into(), v);
    }
    for (model, n) in &q.gpus {
        let key = if model == ANY_GPU {
            gpu_key(None)
        } else {
            gpu_key(Some(model))
        };
        a.insert(key, n.saturating_mul(GPU_UNITS));
    }
    a
}

/// What a job asks for when all of it runs, by resource key (zero amounts
/// left out).
pub fn request_of(spec: &JobSpec) -> Amounts {
    usage_amounts(&Usage::of_job(spec))
}

/// A namespace usage as amounts by resource key (zeros left out).
pub fn usage_amounts(u: &Usage) -> Amounts {
    let mut a = Amounts::new();
    for (k, v) in [
        (CPU, u.cpu_millis),
        (MEMORY, u.memory_bytes),
        (ALLOCATIONS, u.allocations),
    ] {
        if v > 0 {
            a.insert(k.into(), v);
        }
    }
    for (model, v) in &u.gpu_units {
        if *v > 0 {
            let key = if model == ANY_GPU {
                gpu_key(None)
            } else {
                gpu_key(Some(model))
            };
            a.insert(key, *v);
        }
    }
    a
}

/// `a` times `n` over `d` (rounded down), each amount; amounts that come
/// to 0 are left out (so `n = 0` gives nothing: what runs of a job when
/// none of it does).
pub fn scale(a: &Amounts, n: u64, d: u64) -> Amounts {
    a.iter()
        .map(|(k, v)| {
            (
                k.clone(),
                (u128::from(*v) * u128::from(n) / u128::from(d.max(1))) as u64,
            )
        })
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// Adds `b` into `a`.
pub fn add(a: &mut Amounts, b: &Amounts) {
    for (k, v) in b {
        let e = a.entry(k.clone()).or_default();
        *e = e.saturating_add(*v);
    }
}

/// Takes `b` from `a` (never below zero).
pub fn sub(a: &mut Amounts, b: &Amounts) {
    for (k, v) in b {
        if let Some(e) = a.get_mut(k) {
            *e = e.saturating_sub(*v);
        }
    }
}

/// An amount of resource `key` as people read it: `4` cpus, `16Gi`, `2`
/// GPUs.
pub fn format_amount(key: &str, v: u64) -> String {
    match key {
        CPU => format_cpu(v),
        MEMORY => format_memory_human(v),
        k if k.starts_with(GPU_PREFIX) => format_gpus(v),
        _ => v.to_string(),
    }
}

/// A resource key as people read it: `cpu`, `memory`, `H100` GPUs,
/// `GPUs (any model)`.
pub fn resource_name(key: &str) -> String {
    match key.strip_prefix(GPU_PREFIX) {
        Some(ANY_GPU) => "GPUs (any model)".to_string(),
        Some(model) => format!("{model} GPUs"),
        None => key.to_string(),
    }
}

impl Queue {
    /// The queue's nominal quota of resource `key`; `None` when the queue
    /// does not govern it (it is not counted against the queue).
    pub fn nominal_of(&self, key: &str) -> Option<u64> {
        let q = &self.nominal;
        match key {
            CPU => q.cpu_millis,
            MEMORY => q.memory_bytes,
            ALLOCATIONS => q.allocations,
            k => {
                let model = k.strip_prefix(GPU_PREFIX)?;
                if q.gpus.is_empty() {
                    return None;
                }
                Some(
                    q.gpus
                        .get(model)
                        .copied()
                        .unwrap_or(0)
                        .saturating_mul(GPU_UNITS),
                )
            }
        }
    }

    /// Every resource the queue governs, with its nominal amount.
    pub fn nominal_amounts(&self) -> Amounts {
        quota_amounts(&self.nominal)
    }

    /// The most it may borrow of `key`; `None`: no limit of its own.
    pub fn borrowing_limit_of(&self, key: &str) -> Option<u64> {
        quota_amounts(&self.borrowing_limit).get(key).copied()
    }

    /// What of its nominal `key` it lends while unused.
    pub fn lendable_of(&self, key: &str) -> u64 {
        let nominal = self.nominal_of(key).unwrap_or(0);
        quota_amounts(&self.lending_limit)
            .get(key)
            .map_or(nominal, |l| (*l).min(nominal))
    }

    /// Whether jobs of namespace `ns` may submit here.
    pub fn admits_namespace(&self, ns: &str) -> bool {
        self.namespaces.iter().any(|n| n == "*" || n == ns)
    }

    /// How long its head lets smaller jobs go first.
    pub fn backfill_window(&self) -> Duration {
        self.backfill_window.unwrap_or(DEFAULT_BACKFILL_WINDOW)
    }

    /// The cohort it shares with: its own name when it names none (a
    /// cohort of one).
    pub fn cohort_key(&self) -> String {
        match &self.cohort {
            Some(c) => format!("cohort:{c}"),
            None => format!("queue:{}", self.name),
        }
    }
}

/// How many GPUs (whole) a GPU amount is, for metrics.
pub fn gpus_of(units: u64) -> f64 {
    units as f64 / GPU_UNITS as f64
}
