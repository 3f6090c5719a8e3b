//! Applying committed entries: commands to the state machine (answering
//! the proposals this server made), membership changes to Raft's
//! configuration and the address book; and installing a snapshot from
//! the leader in place of both.

use protobuf::Message as _;
use raft::eraftpb::{ConfChangeType, ConfChangeV2, Entry, EntryType, Snapshot};
use raft_proto::ConfChangeI as _;

use super::{decode_state, own_proposal, ConfChangeContext, Driver};
use crate::command::{self, Decoded};
use crate::error::StoreError;
use crate::events::Event;
use crate::state::{Applied, Outcome};
use crate::statedb;

impl Driver {
    /// Applies committed entries in order (those already applied are
    /// skipped), publishes their changes to watchers, hands the changed
    /// records to the saver, and answers the proposals made here.
    pub(super) fn apply(&mut self, entries: Vec<Entry>) -> Result<(), StoreError> {
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(());
        };
        let mut replies = Vec::new();
        let mut conf_replies = Vec::new();
        let mut new_events = Vec::new();
        let mut kinds: Vec<&'static str> = Vec::new();
        {
            let mut state = self
                .shared
                .state
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for e in entries {
                if e.index <= state.index {
                    continue;
                }
                match e.get_entry_type() {
                    EntryType::EntryNormal if e.data.is_empty() => state.skip(e.index),
                    EntryType::EntryNormal => {
                        let waiting = own_proposal(&e.context, self.id)
                            .is_some_and(|id| self.pending.contains_key(&id));
                        let outcome = match command::decode(&e.data) {
                            Decoded::Command(c) => {
                                let kind = c.kind();
                                kinds.push(kind);
                                let out = state.apply_owned(e.index, *c, waiting);
                                tracing::debug!(index = e.index, kind, "applied");
                                out
                            }
                            Decoded::Unknown { version, reason } => {
                                tracing::warn!(index = e.index, version, %reason, "skipping a command this server does not understand");
                                state.skip(e.index);
                                Outcome::Skipped
                            }
                        };
                        if let Some(id) = own_proposal(&e.context, self.id) {
                            if let Some(reply) = self.pending.remove(&id) {
                                replies.push((
                                    reply,
                                    Applied {
                                        index: e.index,
                                        outcome,
                                    },
                                ));
                            }
                        }
                    }
                    EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                        let was_member = self.is_member();
                        let cc = if e.get_entry_type() == EntryType::EntryConfChange {
                            raft::eraftpb::ConfChange::parse_from_bytes(&e.data)
                                .map_err(raft::Error::from)?
                                .into_v2()
                        } else {
                            ConfChangeV2::parse_from_bytes(&e.data).map_err(raft::Error::from)?
                        };
                        let cs = self.raw.apply_conf_change(&cc)?;
                        tracing::info!(index = e.index, voters = ?cs.voters, learners = ?cs.learners, "membership changed");
                        self.raw.mut_store().set_conf_state(cs)?;
                        let ctx: Option<ConfChangeContext> =
                            serde_json::from_slice(&e.context).ok();
                        let removed: Vec<u64> = cc
                            .get_changes()
                            .iter()
                            .filter(|c| c.get_change_type() == ConfChangeType::RemoveNode)
                            .map(|c| c.node_id)
                            .collect();
                        let added = ctx.as_ref().and_then(|c| c.server.as_ref());
                        state.apply_membership(e.index, added, &removed);
                        if let Some(ctx) = ctx {
                            if let Some(reply) = self.pending_conf.remove(&ctx.proposal) {
                                conf_replies.push((reply, e.index));
                            }
                        }
                        if was_member && !self.is_member() {
                            self.removed = true;
                        }
                    }
                }
                // Each changed record is encoded once: for the watchers
                // here, and for the batch that persists it below.
                for (table, key) in std::mem::take(&mut state.changes) {
                    let value = statedb::record_json(&state, table, &key);
                    self.saver.record(table, key.clone(), value.clone());
                    new_events.push(Event {
                        index: e.index,
                        table,
                        key,
                        value,
                    });
                }
            }
        }
        if !kinds.is_empty() {
            let mut counts = self
                .shared
                .applied_kinds
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for kind in kinds {
                *counts.entry(kind).or_default() += 1;
            }
        }
        if self.saver.due() {
            self.save_behind()?;
        }
        if !new_events.is_empty() {
            self.shared
                .events
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .extend(new_events);
        }
        self.applied_tx.send_replace(last);
        for (reply, outcome) in replies {
            let _ = reply.send(Ok(outcome));
        }
        for (reply, index) in conf_replies {
            let _ = reply.send(Ok(index));
        }
        Ok(())
    }

    fn is_member(&self) -> bool {
        let cs = self.raw.store().conf_state();
        cs.voters.contains(&self.id) || cs.learners.contains(&self.id)
    }

    /// Replaces the log and the state with a snapshot from the leader.
    pub(super) fn install_snapshot(&mut self, snap: Snapshot) -> Result<(), StoreError> {
        let index = snap.get_metadata().index;
        let state = decode_state(&snap)?;
        tracing::info!(index, "installing a snapshot from the leader");
        // Log first: if we crash before the state is replaced, the next
        // start restores the state from the snapshot kept in the log.
        self.raw.mut_store().apply_snapshot(&snap)?;
        self.saver.replace_all(&state)?;
        {
            let mut guard = self
                .shared
                .state
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            *guard = state;
        }
        self.shared
            .events
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .reset(index);
        self.applied_tx.send_replace(index);
        Ok(())
    }
}
