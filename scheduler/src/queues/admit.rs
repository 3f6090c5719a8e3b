//! One admission round over every waiting workload (see the module's
//! words in `mod.rs`): quota, then room on the view, then reclaim.

use std::collections::{BTreeMap, BTreeSet};

use skiff_model::job::PREEMPTION_GAP;
use skiff_model::queue::{self, Amounts};
use skiff_model::{Job, Plan, Stop};

use super::{QueueBook, QuotaFit, Removed};
use crate::bitset::Bitset;
use crate::config::Config;
use crate::view::ClusterView;

/// A workload the round admits: its plan (placements, and evictions of
/// what is reclaimed for it), the ids of its new allocations, and the
/// jobs it reclaims from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub plan: Plan,
    pub ids: Vec<String>,
    /// Job keys whose allocations are evicted to give capacity back.
    pub reclaimed: Vec<String>,
    /// It borrows from the cohort.
    pub borrowing: bool,
}

/// What the round decided for one waiting workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub job: String,
    /// `Some`: admitted now.
    pub admission: Option<Admission>,
    /// Why it waits (empty when admitted).
    pub reason: String,
}

/// Why a workload cannot go now.
enum Outcome {
    Admitted(Admission),
    Waits(String),
}

impl QueueBook {
    /// Runs one round: every waiting workload is looked at once, in order,
    /// and admitted if its request fits quota and is placed whole on
    /// `view` (each admission committed into it, as if at raft `index`).
    /// `job_of` gives each workload's job; `new_id` names new allocations.
    pub fn round<'j>(
        &mut self,
        view: &mut ClusterView<'_>,
        job_of: &dyn Fn(&str) -> Option<&'j Job>,
        cfg: &Config,
        new_id: &mut dyn FnMut() -> String,
        index: u64,
    ) -> Vec<Decision> {
        // Waiting workloads by queue, in queue order.
        let mut waiting: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, w) in self.workloads.iter().enumerate() {
            if !w.is_admitted() {
                waiting.entry(w.queue.clone()).or_default().push(i);
            }
        }
        for list in waiting.values_mut() {
            let ws = &self.workloads;
            list.sort_by(|&a, &b| {
                let (a, b) = (&ws[a], &ws[b]);
                (std::cmp::Reverse(a.priority), a.create_index, &a.job).cmp(&(
                    std::cmp::Reverse(b.priority),
                    b.create_index,
                    &b.job,
                ))
            });
        }
        let mut decisions = Vec::new();
        let mut seq = 0;
        // A head that waited past its queue's backfill window for room
        // (its quota fits) gets nodes held for it: nothing else this round
        // is placed there. One per cohort (the first in admission order),
        // so a cohort never drains more than one head's worth at once.
        let mut overdue: BTreeMap<String, (u64, std::cmp::Reverse<u8>, u64, usize)> =
            BTreeMap::new();
        for (q, list) in &waiting {
            let (Some(&head), Some(queue)) = (list.first(), self.queues.get(q)) else {
                continue;
            };
            let window = queue.backfill_window().as_millis() as u64;
            let w = &self.workloads[head];
            if w.waited_ms < window || self.quota_fit(queue, &w.request, &self.own(head)).is_err() {
                continue;
            }
            let key = (
                self.share(q, &w.request),
                std::cmp::Reverse(w.priority),
                w.create_index,
                head,
            );
            let best = overdue.entry(queue.cohort_key()).or_insert(key);
            if key < *best {
                *best = key;
            }
        }
        let overdue: Vec<usize> = overdue.values().map(|k| k.3).collect();
        let reserved = super::reserve::reserve(self, view, job_of, &overdue);
        let mut next: BTreeMap<String, usize> = waiting.keys().map(|q| (q.clone(), 0)).collect();
        loop {
            let mut heads: Vec<(u8, u64, std::cmp::Reverse<u8>, u64, usize)> = Vec::new();
            for (q, list) in &waiting {
                let at = next[q];
                if at >= list.len() {
                    continue;
                }
                let w = &self.workloads[list[at]];
                let nominal = self.queues.get(q).is_some_and(|queue| {
                    self.quota_fit(queue, &w.request, &self.own(list[at])) == Ok(QuotaFit::Nominal)
                });
                let share = self.share(q, &w.request);
                heads.push((
                    u8::from(!nominal),
                    share,
                    std::cmp::Reverse(w.priority),
                    w.create_index,
                    list[at],
                ));
            }
            let Some(&(.., wi)) = heads.iter().min_by(|a, b| {
                (a.0, a.1, a.2, a.3, &self.workloads[a.4].job).cmp(&(
                    b.0,
                    b.1,
                    b.2,
                    b.3,
                    &self.workloads[b.4].job,
                ))
            }) else {
                break;
            };
            let qname = self.workloads[wi].queue.clone();
            *next.get_mut(&qname).expect("a waiting queue") += 1;
            let job = self.workloads[wi].job.clone();
            let hidden = reserved.hidden_for(wi);
            let outcome = match job_of(&job) {
                Some(j) => self.try_admit(wi, j, view, cfg, hidden.as_ref()),
                None => Outcome::Waits("its job is gone".into()),
            };
            match outcome {
                Outcome::Admitted(mut a) => {
                    a.ids = a.plan.placements.iter().map(|_| new_id()).collect();
                    if let Some(j) = job_of(&job) {
                        view.commit(j, &a.plan, &a.ids, index);
                    }
                    // Admissions of one round keep their order (the state
                    // machine gives each its own index).
                    seq += 1;
                    self.record_admission(wi, &a, index + seq);
                    decisions.push(Decision {
                        job,
                        admission: Some(a),
                        reason: String::new(),
                    });
                }
                Outcome::Waits(mut reason) => {
                    if let Some(nodes) = reserved.nodes_of(wi, view) {
                        reason.push_str(&format!(
                            "; it waited past its queue's backfill window: {nodes} held for it while they drain"
                        ));
                    }
                    decisions.push(Decision {
                        job,
                        admission: None,
                        reason,
                    });
                }
            }
        }
        decisions
    }

    /// The book after an admission: the workload holds its request, the
    /// reclaimed ones hold nothing and wait again.
    fn record_admission(&mut self, wi: usize, a: &Admission, index: u64) {
        let w = &mut self.workloads[wi];
        w.admitted_index = index.max(1);
        let before = std::mem::replace(&mut w.holds, w.request.clone());
        let (q, req) = (w.queue.clone(), w.request.clone());
        let usage = self.usage.entry(q).or_default();
        queue::sub(usage, &before);
        queue::add(usage, &req);
        for victim in &a.reclaimed {
            if let Some(vi) = self.workload_index(victim) {
                let v = &mut self.workloads[vi];
                let held = std::mem::take(&mut v.holds);
                v.admitted_index = 0;
                let q = v.queue.clone();
                queue::sub(self.usage.entry(q).or_default(), &held);
            }
        }
    }

    /// What workload `wi` itself holds (what still runs of it), taken
    /// away: its whole request replaces it once admitted.
    fn own(&self, wi: usize) -> Removed {
        let w = &self.workloads[wi];
        let mut r = Removed::new();
        if !w.holds.is_empty() {
            r.insert(w.queue.clone(), w.holds.clone());
        }
        r
    }

    fn try_admit(
        &self,
        wi: usize,
        job: &Job,
        view: &ClusterView<'_>,
        cfg: &Config,
        hidden: Option<&Bitset>,
    ) -> Outcome {
        let w = &self.workloads[wi];
        let Some(q) = self.queues.get(&w.queue) else {
            return Outcome::Waits(format!("queue {} does not exist", w.queue));
        };
        let own = self.own(wi);
        let fit = self.quota_fit(q, &w.request, &own);
        let room = match &fit {
            Ok(f) => {
                let plan = place(job, view, cfg, None, hidden);
                if plan.unplaced == 0 {
                    return Outcome::Admitted(Admission {
                        plan,
                        ids: Vec::new(),
                        reclaimed: Vec::new(),
                        borrowing: *f == QuotaFit::Borrowing,
                    });
                }
                format!("no room: {}", plan.explanation)
            }
            Err(reason) => reason.clone(),
        };
        // Within its nominal quota (counting nothing it would reclaim):
        // take back what is lent. Otherwise only fair sharing may evict.
        let within_nominal = w.request.iter().all(|(k, r)| {
            q.nominal_of(k)
                .is_none_or(|n| self.used(&q.name, k, &own) + r <= n)
        });
        match self.reclaim(wi, job, view, cfg, within_nominal, hidden) {
            Some(a) => Outcome::Admitted(a),
            None => Outcome::Waits(room),
        }
    }

    /// The workloads that may be evicted for workload `wi`, in the order
    /// they are tried: borrowed slices of the cohort's other queues (and,
    /// within its own queue, work at least the preemption gap lower);
    /// those admitted beyond their queue's quota first, then lowest
    /// priority, youngest.
    fn candidates(&self, wi: usize, within_nominal: bool) -> Vec<usize> {
        let w = &self.workloads[wi];
        let Some(q) = self.queues.get(&w.queue) else {
            return Vec::new();
        };
        let my_share = self.share(&q.name, &w.request);
        let mut out = Vec::new();
        let mut beyond_all = BTreeSet::new();
        for other in self.cohort_of(q) {
            let mut mine: Vec<usize> = self
                .workloads
                .iter()
                .enumerate()
                .filter(|(_, v)| v.queue == other.name && v.is_admitted())
                .map(|(i, _)| i)
                .collect();
            mine.sort_by_key(|&i| {
                let v = &self.workloads[i];
                (
                    v.priority,
                    std::cmp::Reverse(v.admitted_index),
                    v.job.clone(),
                )
            });
            if other.name == q.name {
                out.extend(
                    mine.into_iter()
                        .filter(|&i| self.workloads[i].priority + PREEMPTION_GAP <= w.priority),
                );
                continue;
            }
            if !within_nominal && self.share(&other.name, &Amounts::new()) <= my_share {
                continue;
            }
            let none = Amounts::new();
            // Its borrowed slice: the workloads admitted beyond its nominal
            // quota (in admission order) first, then the rest; taken
            // while the queue is still above nominal.
            let mut by_admission = mine.clone();
            by_admission.sort_by_key(|&i| self.workloads[i].admitted_index);
            let mut running = Amounts::new();
            let mut beyond = BTreeSet::new();
            for &i in &by_admission {
                queue::add(&mut running, &self.workloads[i].holds);
                let over = w.request.keys().any(|k| {
                    other
                        .nominal_of(k)
                        .is_some_and(|n| running.get(k).copied().unwrap_or(0) > n)
                });
                if over {
                    beyond.insert(i);
                }
            }
            mine.sort_by_key(|&i| !beyond.contains(&i));
            beyond_all.extend(beyond);
            let mut removed = Removed::new();
            for i in mine {
                if !self.borrows_any(other, w.request.keys(), &removed) {
                    break;
                }
                queue::add(
                    removed.entry(other.name.clone()).or_default(),
                    &self.workloads[i].holds,
                );
                // Fair sharing evicts only while the victim's queue keeps
                // a share at least the evictor's after admission (so the
                // evictor is never evicted back).
                if !within_nominal && self.share_with(&other.name, &none, &removed) < my_share {
                    break;
                }
                out.push(i);
            }
        }
        // Other queues' workloads admitted beyond their quota first, then
        // lowest priority, youngest.
        out.sort_by_key(|&i| {
            let v = &self.workloads[i];
            (
                v.queue == w.queue,
                !beyond_all.contains(&i),
                v.priority,
                std::cmp::Reverse(v.admitted_index),
                v.job.clone(),
            )
        });
        out
    }

    /// Finds the fewest candidates whose eviction lets workload `wi` fit
    /// quota and room; the admission with their evictions.
    fn reclaim(
        &self,
        wi: usize,
        job: &Job,
        view: &ClusterView<'_>,
        cfg: &Config,
        within_nominal: bool,
        hidden: Option<&Bitset>,
    ) -> Option<Admission> {
        let w = &self.workloads[wi];
        let q = self.queues.get(&w.queue)?;
        let candidates = self.candidates(wi, within_nominal);
        if candidates.is_empty() {
            return None;
        }
        let works = |set: &[usize]| -> Option<(Plan, QuotaFit)> {
            let mut removed = self.own(wi);
            for &i in set {
                let v = &self.workloads[i];
                queue::add(removed.entry(v.queue.clone()).or_default(), &v.holds);
            }
            let fit = self.quota_fit(q, &w.request, &removed).ok()?;
            let jobs: BTreeSet<u32> = set
                .iter()
                .filter_map(|&i| view.job_index(&self.workloads[i].job))
                .collect();
            let plan = place(job, view, cfg, Some(&jobs), hidden);
            (plan.unplaced == 0).then_some((plan, fit))
        };
        let mut set = Vec::new();
        let mut found = None;
        for &c in &candidates {
            set.push(c);
            if let Some(ok) = works(&set) {
                found = Some(ok);
                break;
            }
        }
        let (mut plan, mut fit) = found?;
        // Put back every victim not needed, the last taken first.
        for c in set.clone().into_iter().rev() {
            let without: Vec<usize> = set.iter().copied().filter(|&x| x != c).collect();
            if let Some(ok) = works(&without) {
                set = without;
                (plan, fit) = ok;
            }
        }
        // Victims go whole: every live allocation of each victim job.
        let reason = format!("reclaimed for job {} (queue {})", job.key(), q.name);
        let evicted: BTreeSet<String> = plan.evictions.iter().map(|s| s.alloc_id.clone()).collect();
        let mut reclaimed = Vec::new();
        for &i in &set {
            let v = &self.workloads[i];
            reclaimed.push(v.job.clone());
            for id in view.live_allocs_of(&v.job) {
                if !evicted.contains(&id) {
                    plan.evictions.push(Stop {
                        alloc_id: id,
                        reason: reason.clone(),
                    });
                }
            }
        }
        for e in &mut plan.evictions {
            e.reason = reason.clone();
        }
        reclaimed.sort();
        Some(Admission {
            plan,
            ids: Vec::new(),
            reclaimed,
            borrowing: fit == QuotaFit::Borrowing,
        })
    }
}

/// The job's plan on `view` (evicting `reclaim`'s allocations where that
/// makes room), kept only when every replica it wants is placed.
fn place(
    job: &Job,
    view: &ClusterView<'_>,
    cfg: &Config,
    reclaim: Option<&BTreeSet<u32>>,
    hidden: Option<&Bitset>,
) -> Plan {
    let key = job.key();
    let mut plan = crate::reconcile_inner(&key, Some(job), None, view, cfg, reclaim, hidden);
    if plan.unplaced > 0 {
        plan.placements.clear();
        plan.evictions.clear();
        if plan.explanation.is_empty() {
            plan.explanation = "not every replica fits".into();
        }
    }
    plan
}
