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

    /// Events with an index greater than `after`, oldest first: about
    /// `limit` of them, but never part of an index (the events of one entry
    /// all come, or none), so a reader that goes on after the last index it
    /// got misses nothing.
    pub(crate) fn after(&self, after: u64, limit: usize) -> Result<Vec<Event>, Compacted> {
        if after < self.resumable_from {
            return Err(Compacted {
                first: self.resumable_from,
            });
        }
        let start = self.events.partition_point(|e| e.index <= after);
        let mut out: Vec<Event> = self
            .events
            .iter()
            .skip(start)
            .take(limit)
            .cloned()
            .collect();
        if let Some(last) = out.last().map(|e| e.index) {
            let rest = self
                .events
                .iter()
                .skip(start + out.len())
                .take_while(|e| e.index == last)
                .cloned()
                .collect::<Vec<_>>();
            out.extend(rest);
        }
        Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn event(index: u64, key: &str) -> Event {
        Event {
            index,
            table: crate::state::Table::Alloc,
            key: key.into(),
            value: None,
        }
    }

    #[test]
    fn a_batch_of_events_never_ends_inside_an_index() {
        let mut log = EventLog::new(0);
        log.extend(vec![
            event(1, "a"),
            event(2, "b"),
            event(2, "c"),
            event(2, "d"),
            event(3, "e"),
        ]);
        let first = log.after(0, 2).unwrap();
        let keys: Vec<&str> = first.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c", "d"], "index 2 comes whole");
        let next = log.after(first.last().unwrap().index, 2).unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].key, "e");
    }
}
