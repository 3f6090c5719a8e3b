//! Deployments (one per rollout of a service version) and the version
//! history of a job.
//!
//! Times here are wall-clock milliseconds that a server observed and put
//! into a Raft command as data; the state machine never reads a clock.

use serde::{Deserialize, Serialize};

use crate::job::JobSpec;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentStatus {
    /// Moving allocations to the new version.
    #[default]
    Running,
    /// Frozen by an operator (`skiff rollout pause`).
    Paused,
    /// Every replica runs the new version and proved healthy.
    Successful,
    /// Stopped by a failure; no rollback followed (auto_rollback off, or no
    /// earlier version rolled out successfully).
    Failed,
    /// Stopped (by a failure, or `skiff rollout undo`) and replaced by a
    /// rollout of an earlier version.
    RolledBack,
    /// Replaced by a newer version before it finished.
    Cancelled,
}

impl DeploymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentStatus::Running => "running",
            DeploymentStatus::Paused => "paused",
            DeploymentStatus::Successful => "successful",
            DeploymentStatus::Failed => "failed",
            DeploymentStatus::RolledBack => "rolled_back",
            DeploymentStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<DeploymentStatus> {
        Some(match text {
            "running" => DeploymentStatus::Running,
            "paused" => DeploymentStatus::Paused,
            "successful" => DeploymentStatus::Successful,
            "failed" => DeploymentStatus::Failed,
            "rolled_back" => DeploymentStatus::RolledBack,
            "cancelled" => DeploymentStatus::Cancelled,
            _ => return None,
        })
    }

    /// Running or paused: the rollout has not ended.
    pub fn is_active(self) -> bool {
        matches!(self, DeploymentStatus::Running | DeploymentStatus::Paused)
    }
}

/// One rollout of one version of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// `JOB-INDEX`: unique over the cluster's life.
    pub id: String,
    pub job: String,
    /// The version rolled out.
    pub version: u64,
    /// The version the job ran before (0 for a new job).
    pub from_version: u64,
    pub status: DeploymentStatus,
    /// Why it is in its status, in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Canaries asked for (0: none).
    #[serde(default)]
    pub canary: u32,
    /// An operator promoted the canaries.
    #[serde(default)]
    pub promoted: bool,
    /// This rollout returns to an earlier version (`rollout undo`, or an
    /// automatic rollback).
    #[serde(default)]
    pub rollback: bool,
    /// When the controller first saw it (0: not yet).
    #[serde(default)]
    pub started_ms: u64,
    /// When an allocation last proved healthy (or the rollout started or
    /// resumed): `progress_deadline` counts from here.
    #[serde(default)]
    pub progress_ms: u64,
    /// When it ended (0 while active).
    #[serde(default)]
    pub ended_ms: u64,
    pub create_index: u64,
    pub modify_index: u64,
    /// Where the control plane stores it (its record is `JOB/SLOT`),
    /// reused once the rollout is dropped (see [`JobVersion::slot`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub slot: u32,
}

impl Deployment {
    /// Canaries wait for `skiff rollout promote`.
    pub fn awaiting_promotion(&self) -> bool {
        self.canary > 0 && !self.promoted
    }
}

/// One version of a job, as kept for `rollout history` and `rollout undo`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobVersion {
    pub version: u64,
    /// The spec as applied (its `replicas` is not restored by an undo).
    /// Boxed: the history's list stays small, so dropping the oldest
    /// version moves a few words per version, not whole specs.
    pub spec: Box<JobSpec>,
    /// Raft index at which this version was first created.
    pub create_index: u64,
    /// A rollout of this version succeeded: a rollback may return here.
    #[serde(default)]
    pub stable: bool,
    /// How it came to be: `applied`, `rollback to version N`, ...
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
    /// Where the control plane stores it (its record is `JOB/SLOT`): the
    /// lowest number no other kept version holds, so a new version takes
    /// over the record of the one it pushed out.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub slot: u32,
    /// [`JobSpec::version_fingerprint`] of `spec`, 0 when not known (then
    /// [`JobHistory::same_as`] compares the spec itself). Kept in memory
    /// only: it spares comparing a new spec with every kept one.
    #[serde(skip)]
    pub fingerprint: u64,
}

/// Equal when everything but the (derived) fingerprint is.
impl PartialEq for JobVersion {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version
            && self.spec == other.spec
            && self.create_index == other.create_index
            && self.stable == other.stable
            && self.note == other.note
            && self.slot == other.slot
    }
}

impl Eq for JobVersion {}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The lowest slot none of `taken` holds.
pub fn free_slot(taken: impl IntoIterator<Item = u32>) -> u32 {
    // Slots are few (one per kept version): a bit set covers the usual case.
    let (mut low, mut high) = (0u64, Vec::new());
    for t in taken {
        match t {
            0..64 => low |= 1 << t,
            _ => high.push(t),
        }
    }
    if low != u64::MAX {
        return low.trailing_ones();
    }
    high.sort_unstable();
    let mut free = 64;
    for t in high {
        if t == free {
            free += 1;
        } else if t > free {
            break;
        }
    }
    free
}

/// The versions of one job, oldest first, at most `versions_kept`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobHistory {
    pub versions: Vec<JobVersion>,
    /// The number the next new version gets.
    pub next_version: u64,
}

impl JobHistory {
    pub fn get(&self, version: u64) -> Option<&JobVersion> {
        self.versions.iter().find(|v| v.version == version)
    }

    pub fn get_mut(&mut self, version: u64) -> Option<&mut JobVersion> {
        self.versions.iter_mut().find(|v| v.version == version)
    }

    /// A kept version whose task and hard placement rules are those of
    /// `spec`: applying `spec` returns the job to it.
    pub fn same_as(&self, spec: &JobSpec) -> Option<u64> {
        let fingerprint = spec.version_fingerprint();
        self.versions
            .iter()
            .rev()
            .filter(|v| v.fingerprint == 0 || v.fingerprint == fingerprint)
            .find(|v| v.spec.same_version(spec))
            .map(|v| v.version)
    }

    /// Fills in each version's fingerprint (after loading).
    pub fn fill_fingerprints(&mut self) {
        for v in &mut self.versions {
            v.fingerprint = v.spec.version_fingerprint();
        }
    }

    /// The newest version that rolled out successfully, other than `not`.
    pub fn last_stable(&self, not: u64) -> Option<u64> {
        self.versions
            .iter()
            .rev()
            .find(|v| v.stable && v.version != not)
            .map(|v| v.version)
    }

    /// The newest version before `current` in the history's order.
    pub fn previous(&self, current: u64) -> Option<u64> {
        let pos = self.versions.iter().position(|v| v.version == current)?;
        self.versions[..pos].last().map(|v| v.version)
    }

    /// Drops the oldest versions beyond `keep`, never `current`.
    pub fn trim(&mut self, keep: u32, current: u64) {
        while self.versions.len() > keep.max(1) as usize {
            match self.versions.iter().position(|v| v.version != current) {
                Some(i) => {
                    self.versions.remove(i);
                }
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::free_slot;

    #[test]
    fn the_free_slot_is_the_lowest_one_nobody_holds() {
        assert_eq!(free_slot([]), 0);
        assert_eq!(free_slot([0, 1, 2]), 3);
        assert_eq!(free_slot([3, 0, 1]), 2);
        assert_eq!(free_slot([1, 2]), 0);
        assert_eq!(free_slot(0..64), 64);
        assert_eq!(free_slot((0..64).chain([65, 64, 67])), 66);
    }
}
