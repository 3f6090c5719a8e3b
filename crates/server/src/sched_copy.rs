//! The leader scheduler's own copy of what it plans from: every node, a
//! small summary of every allocation (no task), and the jobs' priorities.
//! Brought up to date under the state's read lock at the start of each
//! batch, touching only the nodes whose allocations changed since (the
//! state's marks), so the batch is then planned without holding a lock the
//! Raft thread needs to apply.
//!
//! The view itself is kept too (`ClusterView::owned`): each sync notes the
//! allocations that went and those that changed, and the next `view` (out
//! of the lock) hands them to it after undoing the guesses the last batch
//! committed into it, so a batch costs work in proportion to what changed,
//! not to every allocation. It is built again when a node changes (rare: a
//! registration, a drain, a node going down) and when too many of its
//! positions are empty.

use std::collections::{BTreeMap, HashMap};

use skiff_model::Node;
use skiff_scheduler::{AllocSummary, ClusterView};
use skiff_store::State;

#[derive(Default)]
pub struct SchedCopy {
    /// The state's index it matches; 0: never filled.
    pub index: u64,
    /// The index its nodes were copied at.
    nodes_at: u64,
    pub nodes: Vec<Node>,
    /// By allocation id.
    pub allocs: BTreeMap<String, AllocSummary>,
    /// Allocation ids by node, as copied, each with the modify index its
    /// summary was made at (what a sync compares, walking a changed node's
    /// ids beside the state's, without looking the summaries up).
    by_node: HashMap<String, BTreeMap<String, u64>>,
    /// Every job's priority.
    pub priorities: HashMap<String, u8>,
    /// The team queue of every job in one.
    pub queues: HashMap<String, String>,
    /// The kept view; `None`: build it at the next `view`.
    kept: Option<ClusterView<'static>>,
    /// Ids of the allocations that went, and of those added or changed,
    /// since the kept view was last brought up to date.
    went: Vec<String>,
    changed: Vec<String>,
    /// How many times the view was built whole (for tests).
    pub builds: u64,
}

/// A view of `state` as the scheduler reads it: every node and
/// allocation, each job's priority and team queue (for planning from the
/// state itself: tests, `PlanJob`, `skiff queue describe`).
pub fn state_view(state: &State) -> ClusterView<'_> {
    let mut view = ClusterView::new(state.nodes.values(), state.allocs.values(), |name| {
        state.jobs.get(name).map(|j| j.spec.priority)
    });
    view.set_queues(|name| state.jobs.get(name).and_then(|j| j.spec.queue.clone()));
    view
}

impl SchedCopy {
    /// The kept view of the copy, as [`state_view`] is of the state.
    /// Plans committed into it are undone at the next sync.
    pub fn view(&mut self) -> &mut ClusterView<'static> {
        if let Some(view) = &mut self.kept {
            let (allocs, priorities, queues) = (&self.allocs, &self.priorities, &self.queues);
            view.refresh(
                self.went.iter().map(String::as_str),
                self.changed.iter().filter_map(|id| allocs.get(id)),
                |name| priorities.get(name).copied(),
                |name| queues.get(name).cloned(),
            );
            let (empty, all) = view.garbage();
            if empty > 4096 && empty * 2 > all {
                self.kept = None;
            }
        }
        self.went.clear();
        self.changed.clear();
        let (nodes, allocs, priorities, queues) =
            (&self.nodes, &self.allocs, &self.priorities, &self.queues);
        let builds = &mut self.builds;
        self.kept.get_or_insert_with(|| {
            *builds += 1;
            let mut view =
                ClusterView::owned(nodes, allocs.values(), |name| priorities.get(name).copied());
            view.set_queues(|name| queues.get(name).cloned());
            view
        })
    }

    /// Brings the copy to `state`. Returns how many allocation summaries
    /// it made (the work done, for tests and metrics).
    pub fn sync(&mut self, state: &State) -> usize {
        if self.index == state.index && self.index != 0 {
            return 0;
        }
        if self.index == 0 || state.nodes_changed_at() > self.nodes_at {
            self.nodes = state.nodes.values().cloned().collect();
            self.nodes_at = state.index;
            self.kept = None;
        }
        self.priorities = state
            .jobs
            .iter()
            .map(|(name, j)| (name.clone(), j.spec.priority))
            .collect();
        self.queues = state
            .jobs
            .iter()
            .filter_map(|(name, j)| Some((name.clone(), j.spec.queue.clone()?)))
            .collect();
        let changed = match state.nodes_with_alloc_changes_after(self.index) {
            Some(nodes) if self.index != 0 => nodes,
            _ => {
                // Start over: every allocation.
                self.allocs = state
                    .allocs
                    .iter()
                    .map(|(id, a)| (id.clone(), AllocSummary::from(a)))
                    .collect();
                self.by_node.clear();
                for a in self.allocs.values() {
                    self.by_node
                        .entry(a.node.clone())
                        .or_default()
                        .insert(a.id.clone(), a.modify_index);
                }
                self.index = state.index;
                self.kept = None;
                return self.allocs.len();
            }
        };
        let mut made = 0;
        let keep = self.kept.is_some();
        for node in changed {
            let held = self.by_node.entry(node.to_string()).or_default();
            // Both in id order: walked side by side, the state's
            // allocations looked up (their modify index) but not the copy's.
            let mut now = state.alloc_ids_on_node(node).peekable();
            let mut had = held.iter().peekable();
            let mut gone = Vec::new();
            let mut fresh = Vec::new();
            loop {
                let order = match (had.peek(), now.peek()) {
                    (None, None) => break,
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (Some((h, _)), Some(n)) => h.as_str().cmp(n),
                };
                match order {
                    std::cmp::Ordering::Less => {
                        gone.extend(had.next().map(|(id, _)| id.clone()));
                    }
                    std::cmp::Ordering::Equal => {
                        let (_, &made_at) = had.next().expect("peeked");
                        let id = now.next().expect("peeked");
                        match state.allocs.get(id) {
                            Some(a) if a.modify_index != made_at => fresh.push(a),
                            Some(_) => {}
                            None => gone.push(id.to_string()),
                        }
                    }
                    std::cmp::Ordering::Greater => {
                        let id = now.next().expect("peeked");
                        fresh.extend(state.allocs.get(id));
                    }
                }
            }
            for id in gone {
                held.remove(&id);
                self.allocs.remove(&id);
                if keep {
                    self.went.push(id);
                }
            }
            for a in fresh {
                self.allocs.insert(a.id.clone(), AllocSummary::from(a));
                held.insert(a.id.clone(), a.modify_index);
                if keep {
                    self.changed.push(a.id.clone());
                }
                made += 1;
            }
            if held.is_empty() {
                self.by_node.remove(node);
            }
        }
        self.index = state.index;
        made
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use skiff_model::{AllocStatus, EvalStatus, JobSpec, Resources};
    use skiff_store::command::{AllocUpdate, NodeRegistration};
    use skiff_store::Command;

    pub(crate) fn apply(state: &mut State, cmd: Command) {
        let i = state.index + 1;
        state.apply(i, &cmd);
    }

    /// Registers node `name` offering `cpu_millis` and 8 GiB.
    pub(crate) fn register(state: &mut State, name: &str, cpu_millis: u64) {
        apply(
            state,
            Command::RegisterNode {
                registration: NodeRegistration {
                    name: name.into(),
                    capacity: Resources::new(cpu_millis, 8 << 30),
                    address: "127.0.0.1:7702".into(),
                    agent_version: "test".into(),
                    ..Default::default()
                },
            },
        );
    }

    /// The first pending evaluation.
    pub(crate) fn pending_eval(state: &State) -> skiff_model::Evaluation {
        state
            .evals
            .values()
            .find(|e| e.status == EvalStatus::Pending)
            .cloned()
            .expect("a pending evaluation")
    }

    /// Allocation `id`'s node reports it `status` (running and ready; or
    /// ended with exit code 0 when complete, 1 when failed).
    pub(crate) fn report(state: &mut State, id: &str, status: AllocStatus, at_ms: u64) {
        let node = state.allocs[id].node.clone();
        let exit_code = match status {
            AllocStatus::Complete => Some(0),
            AllocStatus::Failed => Some(1),
            _ => None,
        };
        apply(
            state,
            Command::UpdateAllocStatus {
                node,
                updates: vec![AllocUpdate {
                    alloc_id: id.to_string(),
                    status,
                    exit_code,
                    healthy: (status == AllocStatus::Running).then_some(true),
                    ..AllocUpdate::default()
                }],
                at_ms,
            },
        );
    }

    /// The copy and its kept view match `state` as if built afresh.
    fn matches(copy: &mut SchedCopy, state: &State) {
        assert_eq!(copy.allocs, fresh(state));
        assert_eq!(copy.view().shape(), state_view(state).shape());
    }

    fn fresh(state: &State) -> BTreeMap<String, AllocSummary> {
        state
            .allocs
            .iter()
            .map(|(id, a)| (id.clone(), AllocSummary::from(a)))
            .collect()
    }

    #[test]
    fn the_copy_follows_the_state_touching_only_what_changed() {
        let mut state = State::default();
        for n in ["n1", "n2", "n3"] {
            register(&mut state, n, 8_000);
        }
        let spec = JobSpec::from_yaml(
            "name: web\nreplicas: 6\ntask: {image: 'oci:/i', resources: {cpu: 1, memory: 64Mi}}",
        )
        .unwrap();
        apply(&mut state, Command::UpsertJob { spec });
        let mut copy = SchedCopy::default();
        assert_eq!(copy.sync(&state), 0, "no allocations yet");
        assert_eq!(copy.nodes.len(), 3);
        let eval = pending_eval(&state);
        // A guess committed into the kept view (as a batch's earlier plan
        // is) is undone at the next sync when the state did not take it.
        copy.sync(&state);
        copy.view();
        let builds = copy.builds;
        let guess = crate::evals::plan_eval(&state, &eval, Default::default());
        let job = state.jobs["web"].clone();
        let plan = skiff_model::Plan {
            placements: guess
                .placements
                .iter()
                .map(|p| p.placement.clone())
                .collect(),
            ..Default::default()
        };
        let ids: Vec<String> = guess.placements.iter().map(|p| p.id.clone()).collect();
        let view = copy.view();
        view.commit(&job, &plan, &ids, state.index);
        assert_ne!(view.shape(), state_view(&state).shape());
        copy.sync(&state);
        matches(&mut copy, &state);

        let plan = crate::evals::plan_eval(&state, &eval, Default::default());
        apply(&mut state, Command::ApplyPlan { plan });
        assert_eq!(copy.sync(&state), 6);
        matches(&mut copy, &state);
        assert_eq!(copy.sync(&state), 0, "nothing changed since");
        assert_eq!(copy.builds, builds, "the view was kept, not built again");

        // One allocation reports running: one summary is made again.
        let id = state.allocs.keys().next().unwrap().clone();
        report(&mut state, &id, AllocStatus::Running, 1);
        assert_eq!(copy.sync(&state), 1);
        matches(&mut copy, &state);

        // A guessed stop is undone too, even when nothing else changed.
        let stop = skiff_model::Plan {
            stops: vec![skiff_model::Stop {
                alloc_id: state.allocs.keys().next().unwrap().clone(),
                reason: "a guess".into(),
            }],
            ..Default::default()
        };
        let view = copy.view();
        view.commit(&job, &stop, &[], state.index);
        assert_ne!(view.shape(), state_view(&state).shape());
        assert_eq!(copy.sync(&state), 0);
        matches(&mut copy, &state);

        // The job goes: its allocations are stopped, then collected.
        apply(&mut state, Command::DeleteJob { name: "web".into() });
        copy.sync(&state);
        matches(&mut copy, &state);
        let ids: Vec<String> = state.allocs.keys().cloned().collect();
        for id in &ids {
            report(&mut state, id, AllocStatus::Complete, 2);
        }
        apply(&mut state, Command::CollectAllocs { alloc_ids: ids });
        copy.sync(&state);
        matches(&mut copy, &state);
        assert_eq!(copy.builds, builds, "the view was kept, not built again");

        // A state loaded since (a snapshot installed): copied whole again.
        state.rebuild_indexes();
        let before = copy.index;
        apply(
            &mut state,
            Command::SetNodeEligibility {
                name: "n1".into(),
                cordoned: true,
                draining: false,
                drain_deadline_ms: None,
            },
        );
        assert!(state.index > before);
        copy.sync(&state);
        assert!(copy.nodes.iter().any(|n| n.name == "n1" && n.cordoned));
        matches(&mut copy, &state);
    }

    /// A small deterministic generator (splitmix64), so a failure repeats.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
            (z ^ (z >> 31)) % n
        }
    }

    #[test]
    fn the_kept_view_equals_a_fresh_one_through_random_batches_and_changes() {
        let mut state = State::default();
        for n in 0..6 {
            register(&mut state, &format!("n{n}"), 4_000 + 2_000 * (n % 2));
        }
        let mut copy = SchedCopy::default();
        let mut rng = Rng(7);
        let mut planned = 0;
        for step in 0..400 {
            match rng.below(6) {
                0 | 1 => {
                    let spec = JobSpec::from_yaml(&format!(
                        "name: j{}\nreplicas: {}\npriority: {}\ntask: {{image: 'oci:/i', network: none, resources: {{cpu: {}m, memory: 64Mi}}}}",
                        rng.below(5),
                        rng.below(7),
                        40 + rng.below(30),
                        250 * (1 + rng.below(4)),
                    ))
                    .unwrap();
                    apply(&mut state, Command::UpsertJob { spec });
                }
                2 => {
                    // A batch as the leader plans it: on the kept view,
                    // each plan committed into it; some plans then lost.
                    let pending: Vec<_> = state
                        .evals
                        .values()
                        .filter(|e| e.status == EvalStatus::Pending)
                        .cloned()
                        .collect();
                    copy.sync(&state);
                    let batch = crate::evals::Batch::of(&state, &pending);
                    let plans = crate::evals::plan_copied(
                        &mut copy,
                        &batch,
                        &pending,
                        Default::default(),
                        None,
                    );
                    for plan in plans {
                        if rng.below(4) != 0 {
                            planned += plan.placements.len();
                            apply(&mut state, Command::ApplyPlan { plan });
                        }
                    }
                }
                3 => {
                    let live: Vec<String> = state
                        .allocs
                        .values()
                        .filter(|a| !a.status.is_terminal())
                        .map(|a| a.id.clone())
                        .collect();
                    if live.is_empty() {
                        continue;
                    }
                    let id = &live[rng.below(live.len() as u64) as usize];
                    let status = match rng.below(4) {
                        0 => AllocStatus::Failed,
                        1 => AllocStatus::Complete,
                        _ => AllocStatus::Running,
                    };
                    report(&mut state, id, status, step);
                }
                4 => {
                    let name = format!("j{}", rng.below(5));
                    apply(&mut state, Command::DeleteJob { name });
                }
                _ => {
                    let ended: Vec<String> = state
                        .allocs
                        .values()
                        .filter(|a| a.status.is_terminal())
                        .map(|a| a.id.clone())
                        .collect();
                    apply(&mut state, Command::CollectAllocs { alloc_ids: ended });
                }
            }
            if rng.below(3) == 0 {
                copy.sync(&state);
                matches(&mut copy, &state);
            }
        }
        copy.sync(&state);
        matches(&mut copy, &state);
        assert!(planned > 50, "the batches placed work: {planned}");
        assert!(
            copy.builds < 10,
            "the view was kept: {} builds",
            copy.builds
        );
    }
}
