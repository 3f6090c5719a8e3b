//! The closed sets of the model and their wire enums. Each pair of
//! functions is the one place a set crosses the wire; a wire number the set
//! does not know is refused naming the field. `ALL_*` lists let a test
//! check that every member survives the round trip.

use skiff_model as m;
use skiff_model::alloc::reason;
use skiff_model::FieldError;

use super::WireError;
use crate::pb;

fn unknown(field: &str, number: i32, what: &str) -> WireError {
    WireError(vec![FieldError::new(
        field,
        format!("{number} is not {what}"),
    )])
}

pub fn desired_to_wire(d: m::DesiredStatus) -> pb::DesiredStatus {
    match d {
        m::DesiredStatus::Run => pb::DesiredStatus::Run,
        m::DesiredStatus::Stop => pb::DesiredStatus::Stop,
    }
}

pub fn desired_from_wire(v: i32, field: &str) -> Result<m::DesiredStatus, WireError> {
    match pb::DesiredStatus::try_from(v) {
        Ok(pb::DesiredStatus::Run) => Ok(m::DesiredStatus::Run),
        Ok(pb::DesiredStatus::Stop) => Ok(m::DesiredStatus::Stop),
        _ => Err(unknown(field, v, "a desired status")),
    }
}

impl From<m::AllocStatus> for pb::AllocStatus {
    fn from(s: m::AllocStatus) -> Self {
        match s {
            m::AllocStatus::Pending => pb::AllocStatus::Pending,
            m::AllocStatus::Running => pb::AllocStatus::Running,
            m::AllocStatus::Complete => pb::AllocStatus::Complete,
            m::AllocStatus::Failed => pb::AllocStatus::Failed,
            m::AllocStatus::Lost => pb::AllocStatus::Lost,
        }
    }
}

/// Reads an alloc status off the wire; `field` names it in the error.
pub fn alloc_status_from_wire(v: i32, field: &str) -> Result<m::AllocStatus, WireError> {
    match pb::AllocStatus::try_from(v) {
        Ok(pb::AllocStatus::Pending) => Ok(m::AllocStatus::Pending),
        Ok(pb::AllocStatus::Running) => Ok(m::AllocStatus::Running),
        Ok(pb::AllocStatus::Complete) => Ok(m::AllocStatus::Complete),
        Ok(pb::AllocStatus::Failed) => Ok(m::AllocStatus::Failed),
        Ok(pb::AllocStatus::Lost) => Ok(m::AllocStatus::Lost),
        _ => Err(unknown(field, v, "an allocation status")),
    }
}

/// Every reason an allocation may give (`skiff_model::alloc::reason`), and
/// its wire value; "" is none.
pub const ALL_REASONS: [(&str, pb::AllocReason); 9] = [
    ("", pb::AllocReason::Unspecified),
    (reason::OOM_KILLED, pb::AllocReason::OomKilled),
    (reason::ERROR, pb::AllocReason::Error),
    (reason::COMPLETED, pb::AllocReason::Completed),
    (reason::STOPPED, pb::AllocReason::Stopped),
    (reason::BACK_OFF, pb::AllocReason::BackOff),
    (reason::PROBE_FAILED, pb::AllocReason::ProbeFailed),
    (reason::START_FAILED, pb::AllocReason::StartFailed),
    (reason::PULLING, pb::AllocReason::Pulling),
];

/// The wire form of an allocation's reason; one the set does not know
/// (from a newer agent) goes as none.
pub fn reason_to_wire(r: &str) -> pb::AllocReason {
    ALL_REASONS
        .iter()
        .find(|(word, _)| *word == r)
        .map_or(pb::AllocReason::Unspecified, |(_, w)| *w)
}

pub fn reason_from_wire(v: i32, field: &str) -> Result<String, WireError> {
    ALL_REASONS
        .iter()
        .find(|(_, w)| *w as i32 == v)
        .map(|(word, _)| word.to_string())
        .ok_or_else(|| unknown(field, v, "an allocation reason"))
}

pub const ALL_DEPLOYMENT_STATUSES: [m::DeploymentStatus; 6] = [
    m::DeploymentStatus::Running,
    m::DeploymentStatus::Paused,
    m::DeploymentStatus::Successful,
    m::DeploymentStatus::Failed,
    m::DeploymentStatus::RolledBack,
    m::DeploymentStatus::Cancelled,
];

pub fn deployment_status_to_wire(s: m::DeploymentStatus) -> pb::DeploymentStatus {
    match s {
        m::DeploymentStatus::Running => pb::DeploymentStatus::Running,
        m::DeploymentStatus::Paused => pb::DeploymentStatus::Paused,
        m::DeploymentStatus::Successful => pb::DeploymentStatus::Successful,
        m::DeploymentStatus::Failed => pb::DeploymentStatus::Failed,
        m::DeploymentStatus::RolledBack => pb::DeploymentStatus::RolledBack,
        m::DeploymentStatus::Cancelled => pb::DeploymentStatus::Cancelled,
    }
}

pub fn deployment_status_from_wire(v: i32, field: &str) -> Result<m::DeploymentStatus, WireError> {
    ALL_DEPLOYMENT_STATUSES
        .into_iter()
        .find(|s| deployment_status_to_wire(*s) as i32 == v)
        .ok_or_else(|| unknown(field, v, "a rollout status"))
}

pub const ALL_EVAL_TRIGGERS: [m::EvalTrigger; 6] = [
    m::EvalTrigger::JobRegister,
    m::EvalTrigger::JobDeregister,
    m::EvalTrigger::NodeUpdate,
    m::EvalTrigger::AllocUpdate,
    m::EvalTrigger::Preemption,
    m::EvalTrigger::Rollout,
];

pub fn eval_trigger_to_wire(t: m::EvalTrigger) -> pb::EvalTrigger {
    match t {
        m::EvalTrigger::JobRegister => pb::EvalTrigger::JobRegister,
        m::EvalTrigger::JobDeregister => pb::EvalTrigger::JobDeregister,
        m::EvalTrigger::NodeUpdate => pb::EvalTrigger::NodeUpdate,
        m::EvalTrigger::AllocUpdate => pb::EvalTrigger::AllocUpdate,
        m::EvalTrigger::Preemption => pb::EvalTrigger::Preemption,
        m::EvalTrigger::Rollout => pb::EvalTrigger::Rollout,
    }
}

pub fn eval_trigger_from_wire(v: i32, field: &str) -> Result<m::EvalTrigger, WireError> {
    ALL_EVAL_TRIGGERS
        .into_iter()
        .find(|t| eval_trigger_to_wire(*t) as i32 == v)
        .ok_or_else(|| unknown(field, v, "an evaluation trigger"))
}

pub const ALL_EVAL_STATUSES: [m::EvalStatus; 3] = [
    m::EvalStatus::Pending,
    m::EvalStatus::Complete,
    m::EvalStatus::Blocked,
];

pub fn eval_status_to_wire(s: m::EvalStatus) -> pb::EvalStatus {
    match s {
        m::EvalStatus::Pending => pb::EvalStatus::Pending,
        m::EvalStatus::Complete => pb::EvalStatus::Complete,
        m::EvalStatus::Blocked => pb::EvalStatus::Blocked,
    }
}

pub fn eval_status_from_wire(v: i32, field: &str) -> Result<m::EvalStatus, WireError> {
    ALL_EVAL_STATUSES
        .into_iter()
        .find(|s| eval_status_to_wire(*s) as i32 == v)
        .ok_or_else(|| unknown(field, v, "an evaluation status"))
}

pub fn job_type_from_wire(v: i32, field: &str) -> Result<m::JobType, WireError> {
    match pb::JobType::try_from(v) {
        Ok(pb::JobType::Unspecified | pb::JobType::Service) => Ok(m::JobType::Service),
        Ok(pb::JobType::Batch) => Ok(m::JobType::Batch),
        Err(_) => Err(unknown(field, v, "a job type")),
    }
}

pub fn gang_failure_from_wire(v: i32, field: &str) -> Result<m::GangFailure, WireError> {
    match pb::GangFailure::try_from(v) {
        Ok(pb::GangFailure::Unspecified | pb::GangFailure::RestartGang) => {
            Ok(m::GangFailure::RestartGang)
        }
        Ok(pb::GangFailure::Fail) => Ok(m::GangFailure::Fail),
        Err(_) => Err(unknown(field, v, "a gang failure policy")),
    }
}
