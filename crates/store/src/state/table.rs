//! The collections of the state's records, as the store saves them and
//! watchers see them change.

use serde::{Deserialize, Serialize};

/// Which collection a changed key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    Job,
    Node,
    Alloc,
    Eval,
    Server,
    Deployment,
    History,
    /// The CA, join tokens and joined names: one record, never sent to
    /// watchers.
    Access,
}

/// The key of slot `slot` of job `job`'s rollouts or kept versions (the
/// job's own key holds their index). `#` is in no job key (those are
/// `NAME` or `NAMESPACE/NAME`), so the two never meet.
pub fn slot_key(job: &str, slot: u32) -> String {
    format!("{job}#{slot}")
}

/// The job and slot of a slot key; `None` for a job's index key.
pub fn split_slot_key(key: &str) -> Option<(&str, u32)> {
    if let Some((job, slot)) = key.rsplit_once('#') {
        return slot.parse().ok().map(|s| (job, s));
    }
    None
}

impl Table {
    pub const ALL: [Table; 8] = [
        Table::Job,
        Table::Node,
        Table::Alloc,
        Table::Eval,
        Table::Server,
        Table::Deployment,
        Table::History,
        Table::Access,
    ];

    pub fn prefix(self) -> &'static str {
        match self {
            Table::Job => "job/",
            Table::Node => "node/",
            Table::Alloc => "alloc/",
            Table::Eval => "eval/",
            Table::Server => "server/",
            Table::Deployment => "deployment/",
            Table::History => "history/",
            Table::Access => "access/",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Table::Job => "job",
            Table::Node => "node",
            Table::Alloc => "alloc",
            Table::Eval => "eval",
            Table::Server => "server",
            Table::Deployment => "deployment",
            Table::History => "history",
            Table::Access => "access",
        }
    }
}
