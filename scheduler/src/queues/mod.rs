//! Team queues: which waiting jobs are admitted, and what is reclaimed for
//! them. A pure function of the queues, the workloads (jobs naming a
//! queue) and the cluster view, like the rest of the scheduler.
//!
//! - **Quota.** A workload's whole request must fit its queue's unused
//!   nominal quota, or borrowed quota: the cohort's queues lend what they
//!   do not use (up to their lending limits), a queue borrows up to its
//!   borrowing limit ([`QueueBook::quota_fit`]).
//! - **Room.** It must also be placed whole by the bin-packer on the
//!   view, or it is not admitted (a quota-only check would admit jobs
//!   that fit no node).
//! - **Order.** One round looks at each waiting workload once. Each step
//!   takes the queues' heads (priority, then submission), those that fit
//!   within nominal quota first, then the lowest fair share after
//!   admission, and tries the first. A head that cannot go lets the ones
//!   behind it try (backfill); once it has waited its queue's backfill
//!   window for room, nodes are held for it (`reserve.rs`), one head per
//!   cohort at a time.
//! - **Fair share** is Kueue's dominant resource share of *borrowed*
//!   amounts: per resource, borrowed over what the cohort can lend, per
//!   mille; the largest, over the weight ([`QueueBook::share`]).
//! - **Reclaim.** A workload within its nominal quota that does not fit
//!   because capacity is lent out evicts borrowed workloads of the
//!   cohort's other queues (lowest priority, youngest first, whole jobs);
//!   a borrowing one may evict borrowed workloads of queues whose share is
//!   above its own after admission (no ping-pong). Only a queue's
//!   borrowed slice is ever a candidate: its workloads are taken while
//!   the queue is still above its nominal quota.

mod admit;
mod reserve;
pub mod sim;

use std::collections::BTreeMap;

use skiff_model::queue::{self, Amounts, Queue};

pub use admit::{Admission, Decision};

/// A job that names a queue, as the book sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// The job's key.
    pub job: String,
    pub queue: String,
    pub priority: u8,
    /// Submission order (the job's creation index).
    pub create_index: u64,
    /// Its whole request (see `skiff_model::queue::request_of`).
    pub request: Amounts,
    /// The index it was admitted at; 0: waiting.
    pub admitted_index: u64,
    /// What it holds against its queue now: its request while admitted
    /// and not done, what still runs otherwise.
    pub holds: Amounts,
    /// How long it has waited (ms, the caller's clock), for the backfill
    /// window.
    pub waited_ms: u64,
    /// Why it may not be admitted at all now (its namespace no longer
    /// submits to the queue): it waits with this reason, behind nobody.
    pub refused: Option<String>,
}

impl Workload {
    pub fn is_admitted(&self) -> bool {
        self.admitted_index > 0
    }
}

/// Where a queue stands (`skiff queue ls`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStatus {
    pub name: String,
    pub cohort: Option<String>,
    pub weight: u32,
    pub nominal: Amounts,
    pub usage: Amounts,
    /// Usage above nominal, per resource.
    pub borrowed: Amounts,
    /// Of its unused nominal quota, what other queues of the cohort use.
    pub lent: Amounts,
    /// Weighted dominant share of borrowed resources, per mille
    /// (`u64::MAX`: borrowing at weight 0).
    pub share: u64,
    pub admitted: u32,
    pub pending: u32,
}

/// The queues and their workloads, with each queue's usage.
#[derive(Debug, Clone, Default)]
pub struct QueueBook {
    pub(crate) queues: BTreeMap<String, Queue>,
    /// Sorted by job key.
    pub(crate) workloads: Vec<Workload>,
    pub(crate) usage: BTreeMap<String, Amounts>,
    /// The index of the round under way: workloads admitted above it were
    /// admitted by this round and are never its victims.
    pub(crate) round_index: u64,
    /// Each queue's workloads (indexes into `workloads`), made at the
    /// start of a round.
    pub(crate) members: BTreeMap<String, Vec<usize>>,
}

/// How a request fits a queue's quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum QuotaFit {
    /// Within the queue's unused nominal quota.
    Nominal,
    /// Only by borrowing from the cohort, within limits.
    Borrowing,
}

/// Usage taken away, by queue (victims being considered).
pub(crate) type Removed = BTreeMap<String, Amounts>;

impl QueueBook {
    pub fn new(queues: impl IntoIterator<Item = Queue>, mut workloads: Vec<Workload>) -> Self {
        workloads.sort_by(|a, b| a.job.cmp(&b.job));
        let queues: BTreeMap<String, Queue> =
            queues.into_iter().map(|q| (q.name.clone(), q)).collect();
        let mut usage: BTreeMap<String, Amounts> = BTreeMap::new();
        for w in &workloads {
            queue::add(usage.entry(w.queue.clone()).or_default(), &w.holds);
        }
        QueueBook {
            queues,
            workloads,
            usage,
            round_index: u64::MAX,
            members: BTreeMap::new(),
        }
    }

    pub fn queue(&self, name: &str) -> Option<&Queue> {
        self.queues.get(name)
    }

    pub fn workloads(&self) -> &[Workload] {
        &self.workloads
    }

    /// Puts `w` in the book in place of the workload of the same job, if
    /// any (what it held moves with it): a spec being planned.
    pub fn upsert(&mut self, mut w: Workload) {
        match self.workload_index(&w.job) {
            Some(i) => {
                let old = std::mem::replace(&mut self.workloads[i], w);
                let usage = self.usage.entry(old.queue.clone()).or_default();
                queue::sub(usage, &old.holds);
                let new = &self.workloads[i];
                queue::add(self.usage.entry(new.queue.clone()).or_default(), &new.holds);
            }
            None => {
                w.holds = Amounts::new();
                let at = self
                    .workloads
                    .partition_point(|x| x.job.as_str() < w.job.as_str());
                self.workloads.insert(at, w);
            }
        }
    }

    pub(crate) fn workload_index(&self, job: &str) -> Option<usize> {
        self.workloads
            .binary_search_by(|w| w.job.as_str().cmp(job))
            .ok()
    }

    /// What `queue` holds of resource `key`, less what `removed` takes.
    pub(crate) fn used(&self, queue: &str, key: &str, removed: &Removed) -> u64 {
        let u = self
            .usage
            .get(queue)
            .and_then(|a| a.get(key))
            .copied()
            .unwrap_or(0);
        let r = removed
            .get(queue)
            .and_then(|a| a.get(key))
            .copied()
            .unwrap_or(0);
        u.saturating_sub(r)
    }

    /// The queues sharing with `q` (itself included), by name.
    pub(crate) fn cohort_of<'s>(&'s self, q: &'s Queue) -> impl Iterator<Item = &'s Queue> + 's {
        let key = q.cohort_key();
        self.queues.values().filter(move |o| o.cohort_key() == key)
    }

    /// What the cohort can lend of `key` in all, and what its queues use
    /// of that now (each queue's usage above the part of its nominal
    /// quota it keeps for itself).
    fn pool(&self, q: &Queue, key: &str, removed: &Removed) -> (u64, u64) {
        let (mut pool, mut used) = (0u64, 0u64);
        // A queue whose nominal quota does not govern `key` neither
        // lends nor borrows it: its use is outside the pool.
        for o in self.cohort_of(q).filter(|o| o.nominal_of(key).is_some()) {
            let lendable = o.lendable_of(key);
            let kept = o.nominal_of(key).unwrap_or(0).saturating_sub(lendable);
            pool = pool.saturating_add(lendable);
            used = used.saturating_add(self.used(&o.name, key, removed).saturating_sub(kept));
        }
        (pool, used)
    }

    /// Whether `request` fits queue `q`'s quota with `removed` taken
    /// away; the error is the reason it waits, naming the resource.
    pub(crate) fn quota_fit(
        &self,
        q: &Queue,
        request: &Amounts,
        removed: &Removed,
    ) -> Result<QuotaFit, String> {
        let mut fit = QuotaFit::Nominal;
        for (key, &req) in request {
            let Some(nominal) = q.nominal_of(key) else {
                continue;
            };
            let used = self.used(&q.name, key, removed);
            let need = used.saturating_add(req);
            if need <= nominal {
                continue;
            }
            let what = |v: u64| queue::format_amount(key, v);
            let mut head = format!(
                "queue {} uses {}/{} {}, job needs {}",
                q.name,
                what(used),
                what(nominal),
                queue::resource_name(key),
                what(req)
            );
            // GPUs of no model in a queue owed GPUs only by model: the
            // usual slip; say how to ask.
            let names: Vec<&str> = q
                .nominal
                .gpus
                .keys()
                .map(String::as_str)
                .filter(|m| *m != skiff_model::namespace::ANY_GPU)
                .collect();
            if key == &queue::gpu_key(None) && nominal == 0 && !names.is_empty() {
                head.push_str(&format!(
                    " (the queue is owed GPUs only by model: {}; ask for one with `gpu: {{model: ...}}`, or give the queue `any:`)",
                    names.join(", ")
                ));
            }
            let Some(cohort) = &q.cohort else {
                let never = if req > nominal {
                    "; it can never be admitted here: it asks for more than the queue's whole quota"
                        .to_string()
                } else {
                    String::new()
                };
                return Err(format!(
                    "{head}; the queue has no cohort to borrow from{never}"
                ));
            };
            // The most the queue could ever hold: what it keeps, what the
            // whole cohort lends (its own lendable part included), within
            // its borrowing limit.
            let kept = nominal.saturating_sub(q.lendable_of(key));
            let (pool, pool_used) = self.pool(q, key, removed);
            let reach = kept.saturating_add(pool);
            let most = q
                .borrowing_limit_of(key)
                .map_or(reach, |l| reach.min(nominal.saturating_add(l)));
            if req > most {
                return Err(format!(
                    "{head}; it can never be admitted here: queue {} can hold at most {} {} (its nominal quota and what it may borrow from cohort {cohort})",
                    q.name,
                    what(most),
                    queue::resource_name(key),
                ));
            }
            let borrow = need - nominal;
            if let Some(limit) = q.borrowing_limit_of(key) {
                if borrow > limit {
                    return Err(format!(
                        "{head}; that borrows {} beyond its borrowing limit of {}",
                        what(borrow),
                        what(limit)
                    ));
                }
            }
            let avail = pool.saturating_sub(pool_used);
            let extra = need.saturating_sub(kept) - used.saturating_sub(kept);
            if extra > avail {
                let own_unused = q.lendable_of(key).saturating_sub(used.saturating_sub(kept));
                return Err(format!(
                    "{head}; cohort {cohort} has {} to lend",
                    what(avail.saturating_sub(own_unused))
                ));
            }
            fit = QuotaFit::Borrowing;
        }
        Ok(fit)
    }

    /// Whether queue `q` with `removed` taken away uses more than its
    /// nominal quota of any resource in `keys` (it is borrowing).
    pub(crate) fn borrows_any<'k>(
        &self,
        q: &Queue,
        keys: impl IntoIterator<Item = &'k String>,
        removed: &Removed,
    ) -> bool {
        keys.into_iter().any(|k| {
            q.nominal_of(k)
                .is_some_and(|n| self.used(&q.name, k, removed) > n)
        })
    }

    /// Queue `name`'s weighted dominant share of borrowed resources, per
    /// mille, with `extra` added to its usage: 0 when it borrows nothing,
    /// `u64::MAX` when it borrows at weight 0.
    pub fn share(&self, name: &str, extra: &Amounts) -> u64 {
        self.share_with(name, extra, &Removed::new())
    }

    /// [`QueueBook::share`] with `removed` taken away too.
    pub(crate) fn share_with(&self, name: &str, extra: &Amounts, removed: &Removed) -> u64 {
        let Some(q) = self.queues.get(name) else {
            return 0;
        };
        let mut top = 0u64;
        for (key, nominal) in q.nominal_amounts() {
            let used = self
                .used(name, &key, removed)
                .saturating_add(extra.get(&key).copied().unwrap_or(0));
            let borrowed = used.saturating_sub(nominal);
            if borrowed == 0 {
                continue;
            }
            let lendable = self
                .cohort_of(q)
                .map(|o| o.lendable_of(&key))
                .fold(0u64, u64::saturating_add);
            let ratio = u64::try_from(u128::from(borrowed) * 1000 / u128::from(lendable.max(1)))
                .unwrap_or(u64::MAX);
            top = top.max(ratio.max(1));
        }
        match (top, q.weight) {
            (0, _) => 0,
            (_, 0) => u64::MAX,
            (t, w) => t.saturating_mul(1000) / u64::from(w),
        }
    }

    /// Every queue's standing, by name.
    pub fn status(&self) -> Vec<QueueStatus> {
        let mut rows = Vec::new();
        for q in self.queues.values() {
            let usage = self.usage.get(&q.name).cloned().unwrap_or_default();
            let nominal = q.nominal_amounts();
            let mut borrowed = Amounts::new();
            for (k, n) in &nominal {
                let u = usage.get(k).copied().unwrap_or(0);
                if u > *n {
                    borrowed.insert(k.clone(), u - n);
                }
            }
            let (admitted, pending) =
                self.workloads
                    .iter()
                    .filter(|w| w.queue == q.name)
                    .fold((0, 0), |(a, p), w| {
                        if w.is_admitted() {
                            (a + 1, p)
                        } else {
                            (a, p + 1)
                        }
                    });
            rows.push(QueueStatus {
                name: q.name.clone(),
                cohort: q.cohort.clone(),
                weight: q.weight,
                lent: self.lent_by(q),
                nominal,
                usage,
                borrowed,
                share: self.share(&q.name, &Amounts::new()),
                admitted,
                pending,
            });
        }
        rows
    }

    /// What the cohort's borrowers use of `q`'s unused lendable quota:
    /// the cohort's borrowed total, laid over the lenders in name order.
    fn lent_by(&self, q: &Queue) -> Amounts {
        let mut lent = Amounts::new();
        for key in q.nominal_amounts().keys() {
            let mut borrowed: u64 = self
                .cohort_of(q)
                .filter_map(|o| {
                    let n = o.nominal_of(key)?;
                    Some(self.used(&o.name, key, &Removed::new()).saturating_sub(n))
                })
                .fold(0, u64::saturating_add);
            for o in self.cohort_of(q) {
                let used = self.used(&o.name, key, &Removed::new());
                let kept = o.nominal_of(key).unwrap_or(0) - o.lendable_of(key);
                let unused = o.lendable_of(key).saturating_sub(used.saturating_sub(kept));
                let take = unused.min(borrowed);
                borrowed -= take;
                if o.name == q.name && take > 0 {
                    lent.insert(key.clone(), take);
                }
            }
        }
        lent
    }
}

#[cfg(test)]
mod tests;
