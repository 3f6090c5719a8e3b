//! The watch history: the latest changes of the state, each with the
//! Raft index that made it, for watchers to resume from. The driver
//! appends to it as it applies entries; the handle reads it.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::state::Table;

/// One change of the state, for watchers: `value` is the record's JSON
/// after the change, `None` when it was deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub index: u64,
    pub table: Table,
    pub key: String,
    pub value: Option<Arc<str>>,
}

/// The watch history no longer reaches back to the index asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// The oldest index a watch may resume from.
    pub first: u64,
}

/// Most recent events kept for watchers to resume from.
const EVENT_HISTORY: usize = 20_000;

pub(crate) struct EventLog {
    events: VecDeque<Event>,
    /// Watches may resume from any index >= this one.
    resumable_from: u64,
}

impl EventLog {
    /// An empty history that watches may resume from `index` on.
    pub(crate) fn new(index: u64) -> EventLog {
        EventLog {
            events: VecDeque::new(),
            resumable_from: index,
        }
    }

    /// Events with an index greater than `after`, oldest first, at most
    /// `limit` of them.
    pub(crate) fn after(&self, after: u64, limit: usize) -> Result<Vec<Event>, Compacted> {
        if after < self.resumable_from {
            return Err(Compacted {
                first: self.resumable_from,
            });
        }
        let start = self.events.partition_point(|e| e.index <= after);
        Ok(self
            .events
            .iter()
            .skip(start)
            .take(limit)
            .cloned()
            .collect())
    }

    /// Appends the events of newly applied entries, dropping the oldest
    /// past [`EVENT_HISTORY`].
    pub(crate) fn extend(&mut self, new: Vec<Event>) {
        self.events.extend(new);
        while self.events.len() > EVENT_HISTORY {
            if let Some(old) = self.events.pop_front() {
                self.resumable_from = self.resumable_from.max(old.index);
            }
        }
    }

    /// Forgets every event: the state was replaced at `index` (a
    /// snapshot), and watches resume from there.
    pub(crate) fn reset(&mut self, index: u64) {
        self.events.clear();
        self.resumable_from = index;
    }
}
