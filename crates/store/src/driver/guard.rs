//! Messages from peers that raft-rs would stop the process on. A correct
//! member never sends them; a faulty or hostile one must not be able to
//! bring a server down with one, so they are dropped before `step`.
//! (Found by the `peer` fuzz target, `crates/fuzzing`.)

use raft::eraftpb::{Message, MessageType};

use super::Driver;

impl Driver {
    /// Why `msg` must not reach raft-rs, or `None` when it may.
    pub(super) fn unsafe_to_step(&self, msg: &Message) -> Option<&'static str> {
        let log = &self.raw.raft.raft_log;
        match msg.get_msg_type() {
            // raft-rs: "to_commit is out of range"; a leader sends
            // min(match, commit).
            MessageType::MsgHeartbeat if msg.commit > log.last_index() => {
                Some("a heartbeat committing past the end of the log")
            }
            // raft-rs: "stepped empty MsgProp".
            MessageType::MsgPropose if msg.entries.is_empty() => Some("an empty proposal"),
            // raft-rs reads the request's context from the first entry.
            MessageType::MsgReadIndex | MessageType::MsgReadIndexResp if msg.entries.is_empty() => {
                Some("a read request without its context")
            }
            MessageType::MsgAppend => {
                // Entries follow the one they are appended after, one by one.
                let consecutive = msg
                    .entries
                    .iter()
                    .enumerate()
                    .all(|(i, e)| e.index == msg.index + 1 + i as u64);
                if !consecutive {
                    return Some("entries that do not follow one another");
                }
                // raft-rs: "entry conflict with committed entry".
                let rewrites_committed = msg.entries.iter().any(|e| {
                    e.index <= log.committed && log.term(e.index).is_ok_and(|t| t != e.term)
                });
                if rewrites_committed {
                    return Some("entries that would replace committed ones");
                }
                None
            }
            _ => None,
        }
    }
}
