//! Log compaction: trimming the log behind the last save once it has
//! grown long enough, and the snapshot of the whole state raft-rs asks
//! for when a peer is behind the log's start.

use raft::eraftpb::SnapshotMetadata;

use super::Driver;
use crate::error::StoreError;

impl Driver {
    /// Trims the log once enough entries piled up (up to the last save:
    /// the saved state covers what is dropped), and makes a snapshot of the
    /// state when Raft asked for one (a peer is behind the log's start).
    pub(super) fn maybe_compact(&mut self) -> Result<(), StoreError> {
        let applied = *self.applied_tx.borrow();
        let store = self.raw.store();
        let requested = store.take_snapshot_request() && applied > store.snapshot_index();
        let since = self.compacted_at;
        let due = self.snapshot_entries > 0 && applied >= since + self.snapshot_entries;
        if !requested && !due {
            return Ok(());
        }
        let before = self.compacted_before;
        self.compacted_before = since;
        self.compacted_at = applied;
        self.saver.poll()?;
        if self.saver.saved_index() < before && !self.saver.in_flight() {
            // The log can be trimmed only up to the last save: one two
            // compactions ago at the latest, so the log stays about three
            // compactions long however rarely the timer saves. (Each save
            // writes every record changed since the last, once: under
            // sustained writes to the same jobs, fewer saves is less work.)
            self.save_behind()?;
        }
        let trim_to = if self.snapshot_entries == 0 {
            0 // snapshots only for peers that need one; the log is kept
        } else {
            // Keep a tail so that followers a little behind catch up from
            // the log, and nothing after the last save: a restart applies
            // that again (later saves let later compactions trim more).
            applied
                .saturating_sub(self.snapshot_entries / 2)
                .min(self.saver.saved_index())
        };
        if !requested {
            tracing::debug!(index = applied, trim_to, "compacting the log");
            return self.raw.mut_store().trim(trim_to);
        }
        let store = self.raw.store();
        let term = raft::Storage::term(store, applied)?;
        let mut meta = SnapshotMetadata {
            index: applied,
            term,
            ..Default::default()
        };
        meta.set_conf_state(store.conf_state().clone());
        let data = {
            let state = self
                .shared
                .state
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            serde_json::to_vec(&*state).expect("state serializes")
        };
        tracing::info!(
            index = applied,
            trim_to,
            bytes = data.len(),
            "snapshot taken for a peer; compacting the log"
        );
        self.raw.mut_store().compact(meta, data, trim_to)
    }
}
