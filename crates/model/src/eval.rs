//! Evaluations: a request for the scheduler to look at one job again.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalTrigger {
    JobRegister,
    JobDeregister,
    NodeUpdate,
    AllocUpdate,
    /// A higher-priority job evicted some of the job's allocations.
    Preemption,
    /// The job's rollout moved: allocations proved healthy or not, or an
    /// operator paused, resumed, promoted or undid it.
    Rollout,
}

impl EvalTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            EvalTrigger::JobRegister => "job_register",
            EvalTrigger::JobDeregister => "job_deregister",
            EvalTrigger::NodeUpdate => "node_update",
            EvalTrigger::AllocUpdate => "alloc_update",
            EvalTrigger::Preemption => "preemption",
            EvalTrigger::Rollout => "rollout",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalStatus {
    /// Waiting for the leader's scheduler.
    #[default]
    Pending,
    /// A plan was committed and every wanted replica is placed.
    Complete,
    /// Some replicas could not be placed; retried when the cluster changes.
    Blocked,
}

impl EvalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EvalStatus::Pending => "pending",
            EvalStatus::Complete => "complete",
            EvalStatus::Blocked => "blocked",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evaluation {
    pub id: String,
    pub job: String,
    pub trigger: EvalTrigger,
    pub status: EvalStatus,
    /// Why replicas could not be placed, when blocked.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    pub create_index: u64,
    pub modify_index: u64,
}
