//! One admission round over every waiting workload (see the module's
//! words in `mod.rs`): quota, then room on the view, then reclaim.

use std::collections::{BTreeMap, BTreeSet};

use skiff_model::job::PREEMPTION_GAP;
use skiff_model::queue::{self, Amounts};
use skiff_model::{Job, Plan, Stop};

use super::{QueueBook, QuotaFit, Removed};
use crate::bitset::Bitset;
use crate::config::Config;
use crate::view::{ClusterView, NodeIdx};

/// How many nodes a reclaim searches one by one (those with the most
/// GPUs its candidates hold first).
const RECLAIM_NODES: usize = 32;

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

/// Which jobs of a round fit no node even with every node empty, each
/// found once, on a copy of the nodes made when first asked.
#[derive(Default)]
struct Unplaceable {
    nodes: Option<Vec<skiff_model::Node>>,
    /// By job: the scheduler's explanation when no empty node holds it.
    known: BTreeMap<String, Option<String>>,
}

impl Unplaceable {
    /// Why no empty node could hold `job`, if none could.
    fn check(&mut self, job: &Job, view: &ClusterView<'_>, cfg: &Config) -> Option<String> {
        let key = job.key();
        if let Some(never) = self.known.get(&key) {
            return never.clone();
        }
        let nodes = self
            .nodes
            .get_or_insert_with(|| view.nodes.iter().map(|s| s.node.as_ref().clone()).collect());
        let empty = ClusterView::new(
            nodes.iter(),
            std::iter::empty::<&skiff_model::Allocation>(),
            |_| None,
        );
        let plan = place(job, &empty, cfg, None, None);
        let never = (plan.unplaced > 0).then_some(plan.explanation);
        self.known.insert(key, never.clone());
        never
    }
}

/// A queue head's place in the admission order: within its own quota
/// first, then the lowest share after admission, then priority, then age.
type HeadKey = (u8, u64, std::cmp::Reverse<u8>, u64, usize);

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
        self.round_index = index;
        self.members.clear();
        for (i, w) in self.workloads.iter().enumerate() {
            self.members.entry(w.queue.clone()).or_default().push(i);
        }
        // Waiting workloads by queue, in queue order.
        let mut waiting: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut refused = Vec::new();
        for (i, w) in self.workloads.iter().enumerate() {
            if w.is_admitted() {
                continue;
            }
            match &w.refused {
                Some(why) => refused.push(Decision {
                    job: w.job.clone(),
                    admission: None,
                    reason: why.clone(),
                }),
                None => waiting.entry(w.queue.clone()).or_default().push(i),
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
        let mut decisions = refused;
        let mut seq = 0;
        // A head that waited past its queue's backfill window for room
        // (its quota fits) gets nodes held for it: nothing else this round
        // is placed there. One per cohort (the first in admission order),
        // so a cohort never drains more than one head's worth at once.
        // A head that no layout of the cluster could hold (a gang wider
        // than the cluster, a replica bigger than any node) is never held
        // for: it would hold every node it fits for ever.
        let mut overdue: BTreeMap<String, (u64, std::cmp::Reverse<u8>, u64, usize)> =
            BTreeMap::new();
        // Heads no empty node could hold (their reasons say so, from
        // `try_admit`'s look at the same `unplaceable`).
        let mut never: BTreeSet<usize> = BTreeSet::new();
        let mut unplaceable = Unplaceable::default();
        for (q, list) in &waiting {
            let (Some(&head), Some(queue)) = (list.first(), self.queues.get(q)) else {
                continue;
            };
            let window = queue.backfill_window().as_millis() as u64;
            let w = &self.workloads[head];
            if w.waited_ms < window || self.quota_fit(queue, &w.request, &self.own(head)).is_err() {
                continue;
            }
            if job_of(&w.job).is_some_and(|job| unplaceable.check(job, view, cfg).is_some()) {
                never.insert(head);
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
        // Each queue's head with its order key, kept until its queue moves
        // on or its cohort's usage changes (an admission): the key reads
        // only the queue's own quota and its cohort's pool.
        let mut heads: BTreeMap<&str, HeadKey> = BTreeMap::new();
        loop {
            for (q, list) in &waiting {
                let at = next[q];
                if at >= list.len() || heads.contains_key(q.as_str()) {
                    continue;
                }
                let w = &self.workloads[list[at]];
                let nominal = self.queues.get(q).is_some_and(|queue| {
                    self.quota_fit(queue, &w.request, &self.own(list[at])) == Ok(QuotaFit::Nominal)
                });
                let share = self.share(q, &w.request);
                heads.insert(
                    q,
                    (
                        u8::from(!nominal),
                        share,
                        std::cmp::Reverse(w.priority),
                        w.create_index,
                        list[at],
                    ),
                );
            }
            let Some(&(.., wi)) = heads.values().min_by(|a, b| {
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
            heads.remove(qname.as_str());
            let job = self.workloads[wi].job.clone();
            let hidden = reserved.hidden_for(wi);
            let outcome = match job_of(&job) {
                Some(j) => self.try_admit(wi, j, view, cfg, hidden.as_ref(), &mut unplaceable),
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
                    // Its cohort's usage moved (reclaims stay within it).
                    let cohort = self.queues.get(&qname).map(|q| q.cohort_key());
                    heads.retain(|q, _| self.queues.get(*q).map(|q| q.cohort_key()) != cohort);
                    decisions.push(Decision {
                        job,
                        admission: Some(a),
                        reason: String::new(),
                    });
                }
                Outcome::Waits(mut reason) => {
                    if never.contains(&wi) {
                        reason.push_str(", so no node is held for it");
                    }
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
        unplaceable: &mut Unplaceable,
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
        // No eviction can place a job that fits no node even empty: the
        // search would try every candidate for nothing.
        if let Some(why) = unplaceable.check(job, view, cfg) {
            return Outcome::Waits(format!(
                "{room}; it could not be placed even with every node empty ({why})"
            ));
        }
        // Within its nominal quota (counting nothing it would reclaim):
        // take back what is lent. Otherwise only fair sharing may evict.
        let within_nominal = w.request.iter().all(|(k, r)| {
            q.nominal_of(k)
                .is_none_or(|n| self.used(&q.name, k, &own).saturating_add(*r) <= n)
        });
        match self.reclaim(wi, job, view, cfg, within_nominal, hidden) {
            Some(a) => Outcome::Admitted(a),
            None => Outcome::Waits(room),
        }
    }

    /// The workloads that may be evicted for workload `wi`, most
    /// preferred first: within its own queue, work at least the
    /// preemption gap lower; in the cohort's other queues that borrow
    /// (and, when `wi` would borrow too, whose fair share is above its
    /// own), every admitted workload, those admitted beyond their queue's
    /// quota first, then lowest priority, youngest. Never a workload this
    /// round admitted: a round does not undo its own admissions (that
    /// would restart work for nothing, and a fair-share eviction of one
    /// can be answered by an eviction back in the next round). Which of
    /// them may go together is [`QueueBook::may_take`]'s rule.
    fn candidates(&self, wi: usize, within_nominal: bool) -> Vec<usize> {
        let w = &self.workloads[wi];
        let Some(q) = self.queues.get(&w.queue) else {
            return Vec::new();
        };
        let members = |name: &str| self.members.get(name).into_iter().flatten().copied();
        let before_round =
            |v: &super::Workload| v.is_admitted() && v.admitted_index <= self.round_index;
        let mut my_share = None;
        let mut out = Vec::new();
        let mut beyond_all = BTreeSet::new();
        for other in self.cohort_of(q) {
            if other.name == q.name {
                out.extend(members(&q.name).filter(|&i| {
                    let v = &self.workloads[i];
                    before_round(v) && v.priority + PREEMPTION_GAP <= w.priority
                }));
                continue;
            }
            if !self.borrows_any(other, contested(&w.request), &Removed::new()) {
                continue;
            }
            if !within_nominal {
                let mine = *my_share.get_or_insert_with(|| self.share(&q.name, &w.request));
                if self.share(&other.name, &Amounts::new()) <= mine {
                    continue;
                }
            }
            // Its admitted workloads, and any job that waits again (it
            // asked for more, or moved here) while its allocations run
            // on: it holds what runs, admitted for none of it, so it is
            // the first to count beyond the queue's quota.
            let mut mine: Vec<usize> = members(&other.name)
                .filter(|&i| {
                    let v = &self.workloads[i];
                    before_round(v) || (!v.is_admitted() && !v.holds.is_empty())
                })
                .collect();
            // Its borrowed slice: the workloads admitted once it was
            // beyond its nominal quota (in admission order).
            mine.sort_by_key(|&i| match self.workloads[i].admitted_index {
                0 => u64::MAX,
                at => at,
            });
            let mut running = Amounts::new();
            for &i in &mine {
                queue::add(&mut running, &self.workloads[i].holds);
                let over = contested(&w.request).any(|k| {
                    other
                        .nominal_of(k)
                        .is_some_and(|n| running.get(k).copied().unwrap_or(0) > n)
                });
                if over {
                    beyond_all.insert(i);
                }
            }
            out.extend(mine);
        }
        out.sort_by_key(|&i| {
            let v = &self.workloads[i];
            (
                v.queue == w.queue,
                !beyond_all.contains(&i),
                v.is_admitted(),
                v.priority,
                std::cmp::Reverse(v.admitted_index),
                v.job.clone(),
            )
        });
        out
    }

    /// Whether candidate `v` may be evicted for workload `wi` on top of
    /// the victims already chosen (`removed`: what they hold, by queue).
    /// Another queue's work goes only while that queue still borrows; for
    /// a `wi` that would borrow itself (`my_share`: its share after
    /// admission), only while that queue keeps a fair share at least that
    /// after it (so the evictor is never evicted back).
    fn may_take(&self, wi: usize, v: usize, removed: &Removed, my_share: Option<u64>) -> bool {
        let (w, x) = (&self.workloads[wi], &self.workloads[v]);
        if x.queue == w.queue {
            return true;
        }
        let Some(other) = self.queues.get(&x.queue) else {
            return false;
        };
        if !self.borrows_any(other, contested(&w.request), removed) {
            return false;
        }
        let Some(my_share) = my_share else {
            return true;
        };
        let mut after = removed.clone();
        queue::add(after.entry(x.queue.clone()).or_default(), &x.holds);
        self.share_with(&x.queue, &Amounts::new(), &after) >= my_share
    }

    /// Finds victims whose eviction lets workload `wi` fit quota and room;
    /// the admission with their evictions. Two searches, each taking
    /// candidates in preference order until the workload fits: one over
    /// every candidate, and, for a workload owed its nominal quota that
    /// waited past its backfill window, one per node over the candidates
    /// running there (the [`RECLAIM_NODES`] nodes with the most to give
    /// first), so that the GPUs freed are on one node rather than
    /// scattered where no replica fits. Of the sets found, the one
    /// evicting the lowest priority, then losing the least work (GPUs
    /// held times how long ago admitted), wins; the victims it does not
    /// need are put back.
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
        let my_share = (!within_nominal).then(|| self.share(&q.name, &w.request));
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
        // Candidates from `order` while the rule allows, until it works
        // (tried only once `ready` says the set could be enough).
        let take = |order: &mut dyn Iterator<Item = usize>,
                    ready: &dyn Fn(&[usize]) -> bool|
         -> Option<(Vec<usize>, Plan, QuotaFit)> {
            let (mut set, mut removed) = (Vec::new(), Removed::new());
            for c in order {
                if !self.may_take(wi, c, &removed, my_share) {
                    continue;
                }
                let v = &self.workloads[c];
                queue::add(removed.entry(v.queue.clone()).or_default(), &v.holds);
                set.push(c);
                if ready(&set) {
                    if let Some((plan, fit)) = works(&set) {
                        return Some((set, plan, fit));
                    }
                }
            }
            None
        };
        let mut found = take(&mut candidates.iter().copied(), &|_| true);
        // Node by node only for a workload owed its nominal quota that has
        // waited past its queue's backfill window: until then, work ending
        // by itself may give it room without losing anyone's work.
        let overdue = w.waited_ms >= q.backfill_window().as_millis() as u64;
        if within_nominal && overdue {
            let frees: BTreeMap<usize, Vec<(NodeIdx, u32)>> = candidates
                .iter()
                .map(|&c| (c, view.live_gpus_of(&self.workloads[c].job)))
                .collect();
            let newest = self
                .workloads
                .iter()
                .map(|v| v.admitted_index)
                .max()
                .unwrap_or(0);
            let cost = |set: &[usize]| {
                let top = set.iter().map(|&i| self.workloads[i].priority).max();
                let lost: u128 = set
                    .iter()
                    .map(|&i| {
                        let gpus: u32 = frees[&i].iter().map(|f| f.1).sum();
                        let age = newest + 1 - self.workloads[i].admitted_index.min(newest);
                        u128::from(1 + gpus) * u128::from(age)
                    })
                    .sum();
                (top, lost)
            };
            let ask = job.spec.task.ask().gpus;
            let mut on_node: BTreeMap<NodeIdx, u32> = BTreeMap::new();
            for &(n, g) in frees.values().flatten() {
                *on_node.entry(n).or_default() += g;
            }
            let mut nodes: Vec<(u32, NodeIdx)> = on_node
                .iter()
                .filter(|(&n, _)| hidden.is_none_or(|h| !h.contains(n as usize)))
                .map(|(&n, &g)| (g + view.free_gpus_on(n), n))
                .filter(|&(g, _)| g >= ask)
                .collect();
            nodes.sort_by_key(|&(g, n)| (std::cmp::Reverse(g), n));
            for &(_, n) in nodes.iter().take(RECLAIM_NODES) {
                let there = |c: &usize| frees[c].iter().any(|f| f.0 == n);
                let ready = |set: &[usize]| {
                    let freed: u32 = set
                        .iter()
                        .flat_map(|c| &frees[c])
                        .filter(|f| f.0 == n)
                        .map(|f| f.1)
                        .sum();
                    freed + view.free_gpus_on(n) >= ask
                };
                let Some(one) = take(&mut candidates.iter().copied().filter(there), &ready) else {
                    continue;
                };
                if found.as_ref().is_none_or(|f| cost(&one.0) < cost(&f.0)) {
                    found = Some(one);
                }
            }
        }
        let (mut set, mut plan, mut fit) = found?;
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

/// The resources a reclaim for `request` looks at in other queues: its
/// GPU keys when it asks for GPUs (a queue that borrows a core keeps its
/// GPU jobs within its GPU quota), else every resource it asks for.
fn contested(request: &Amounts) -> impl Iterator<Item = &String> {
    let gpus = request
        .iter()
        .any(|(k, &v)| k.starts_with(queue::GPU_PREFIX) && v > 0);
    request
        .iter()
        .filter(move |(k, &v)| !gpus || (k.starts_with(queue::GPU_PREFIX) && v > 0))
        .map(|(k, _)| k)
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
    // No victims chosen: nothing may be evicted (not even by priority).
    let none = BTreeSet::new();
    let reclaim = Some(reclaim.unwrap_or(&none));
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
