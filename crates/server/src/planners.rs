//! Planners beyond the first (`skiff server --planners N`). Each is a
//! thread with its own scheduler copy (`sched_copy.rs`): the evaluation
//! loop hands it a batch, it brings its copy up to the state under the
//! state's read lock, copies the batch's jobs, and plans with no lock
//! held, while the loop plans another batch itself. Every plan then goes
//! through Raft, where the state machine checks each once more: that is
//! the one plan applier. Planners working at once do not see each other's
//! placements, so each tries its own stripe of the nodes first
//! (`skiff_scheduler::Stripe`); a plan that still raced another is refused
//! in part and its evaluation stays pending, to be planned again.

use std::sync::mpsc;

use skiff_model::Evaluation;
use skiff_scheduler::Stripe;
use skiff_store::command::PlanCommand;
use tokio::sync::oneshot;

use crate::sched_copy::SchedCopy;

/// A batch to plan, and where its plans go.
type Work = (Vec<Evaluation>, oneshot::Sender<Vec<PlanCommand>>);

/// The planner threads beyond the loop's own (planner 0).
pub(crate) struct Helpers {
    senders: Vec<mpsc::Sender<Work>>,
}

/// Planner `index`'s share of the nodes when `of` plan at once.
pub(crate) fn stripe(index: usize, of: usize) -> Option<Stripe> {
    (of > 1).then_some(Stripe {
        index: index as u32,
        of: of as u32,
    })
}

impl Helpers {
    /// Starts planners 1 to `of - 1`, each planning with `plan` (its own
    /// copy, the batch, its index); their threads end when the helpers
    /// are dropped.
    pub(crate) fn start<P>(of: usize, plan: P) -> Helpers
    where
        P: Fn(&mut SchedCopy, &[Evaluation], usize) -> Vec<PlanCommand> + Clone + Send + 'static,
    {
        let senders = (1..of.max(1))
            .filter_map(|index| {
                let (tx, rx) = mpsc::channel::<Work>();
                let plan = plan.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("skiff-planner-{index}"))
                    .spawn(move || {
                        let mut copy = SchedCopy::default();
                        while let Ok((evals, reply)) = rx.recv() {
                            // The loop gave up on this batch only if it
                            // stopped: nothing to tell.
                            let _ = reply.send(plan(&mut copy, &evals, index));
                        }
                    });
                match spawned {
                    Ok(_) => Some(tx),
                    Err(e) => {
                        tracing::warn!(planner = index, error = %e, "cannot start a planner thread; planning with fewer");
                        None
                    }
                }
            })
            .collect();
        Helpers { senders }
    }

    /// Hands `evals` to helper `i` (0-based: planner `i + 1`); `Err`
    /// gives them back when that planner is gone.
    pub(crate) fn plan(
        &self,
        i: usize,
        evals: Vec<Evaluation>,
    ) -> Result<oneshot::Receiver<Vec<PlanCommand>>, Vec<Evaluation>> {
        let Some(tx) = self.senders.get(i) else {
            return Err(evals);
        };
        let (reply, rx) = oneshot::channel();
        tx.send((evals, reply))
            .map_err(|mpsc::SendError((evals, _))| evals)?;
        Ok(rx)
    }

    /// How many planners plan at once, the loop's own included.
    pub(crate) fn planners(&self) -> usize {
        self.senders.len() + 1
    }
}

/// The pending evaluations split into rounds: in each, one batch (at most
/// `batch` evaluations, in pending order) per planner. A job's
/// evaluations all go to one planner, so no two planners place the same
/// job at once; jobs are dealt to planners in turn.
pub(crate) fn rounds(
    pending: Vec<Evaluation>,
    planners: usize,
    batch: usize,
) -> Vec<Vec<Vec<Evaluation>>> {
    let planners = planners.max(1);
    let mut lists: Vec<Vec<Evaluation>> = vec![Vec::new(); planners];
    let mut dealt: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for e in pending {
        let next = dealt.len() % planners;
        let p = *dealt.entry(e.job.clone()).or_insert(next);
        lists[p].push(e);
    }
    let mut chunks: Vec<std::vec::IntoIter<Vec<Evaluation>>> = lists
        .into_iter()
        .map(|l| {
            l.chunks(batch.max(1))
                .map(<[Evaluation]>::to_vec)
                .collect::<Vec<_>>()
                .into_iter()
        })
        .collect();
    let mut out = Vec::new();
    loop {
        let round: Vec<Vec<Evaluation>> = chunks
            .iter_mut()
            .map(|c| c.next().unwrap_or_default())
            .collect();
        if round.iter().all(Vec::is_empty) {
            return out;
        }
        out.push(round);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(id: &str, job: &str) -> Evaluation {
        Evaluation {
            id: id.into(),
            job: job.into(),
            trigger: skiff_model::EvalTrigger::JobRegister,
            status: skiff_model::EvalStatus::Pending,
            message: String::new(),
            create_index: 0,
            modify_index: 0,
        }
    }

    fn ids(round: &[Vec<Evaluation>]) -> Vec<Vec<&str>> {
        round
            .iter()
            .map(|b| b.iter().map(|e| e.id.as_str()).collect())
            .collect()
    }

    #[test]
    fn a_jobs_evaluations_go_to_one_planner_and_batches_stay_in_order() {
        let pending = vec![
            eval("1", "a"),
            eval("2", "b"),
            eval("3", "a"),
            eval("4", "c"),
            eval("5", "d"),
            eval("6", "c"),
        ];
        let r = rounds(pending.clone(), 2, 2);
        assert_eq!(r.len(), 2);
        assert_eq!(ids(&r[0]), [vec!["1", "3"], vec!["2", "5"]]);
        assert_eq!(ids(&r[1]), [vec!["4", "6"], vec![]]);
        // One planner: the pending order in batches, as before planners.
        let one = rounds(pending, 1, 4);
        assert_eq!(
            one.iter().map(|r| ids(r)).collect::<Vec<_>>(),
            [vec![vec!["1", "2", "3", "4"]], vec![vec!["5", "6"]]]
        );
        assert!(rounds(Vec::new(), 3, 64).is_empty());
    }
}
