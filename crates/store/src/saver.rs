//! Saving the state machine's records: what changed since the last save,
//! when the next save is due, and the thread that writes each batch, so
//! the Raft thread never waits on the state database (except when it
//! must: before trimming the log, installing a snapshot or stopping).
//!
//! The Raft log holds every applied entry durably and is not trimmed past
//! the last save, so a crash loses nothing: the entries after the saved
//! index are applied again on start.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::StoreError;
use crate::state::{State, Table};
use crate::statedb::{StateDb, Unsaved};

/// How often the state machine's changed records are written. Writing
/// each record once per interval, not once per entry, saves most of the
/// database's work when the same records change often (a busy job's
/// record, its history and rollout indexes), and a version or rollout
/// that is created and trimmed again within one interval is never written
/// at all.
const SAVE_EVERY: Duration = Duration::from_secs(30);

/// [`SAVE_EVERY`] plus up to half of it, drawn anew for each save, so that
/// servers started together do not all save at the same moment (a save
/// takes a core for a while; three at once on a small machine show in
/// every server's write latency).
fn save_interval() -> Duration {
    SAVE_EVERY + SAVE_EVERY.mul_f64(rand::random::<f64>() / 2.0)
}
/// ...or once this many records are waiting (bounds the memory they hold).
const SAVE_RECORDS: usize = 50_000;

/// What the saver thread did since the store opened: saves, the records
/// they wrote, and how long they took (the commit and the flush).
#[derive(Debug, Default)]
pub struct SaveStats {
    saves: AtomicU64,
    records: AtomicU64,
    micros: AtomicU64,
    last_micros: AtomicU64,
}

/// [`SaveStats`] as read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SaveCounts {
    pub saves: u64,
    pub records: u64,
    /// Time spent saving, all saves together.
    pub total: Duration,
    /// How long the last save took.
    pub last: Duration,
}

impl SaveStats {
    fn saved(&self, records: usize, took: Duration) {
        let micros = took.as_micros() as u64;
        self.saves.fetch_add(1, Ordering::Relaxed);
        self.records.fetch_add(records as u64, Ordering::Relaxed);
        self.micros.fetch_add(micros, Ordering::Relaxed);
        self.last_micros.store(micros, Ordering::Relaxed);
    }

    pub fn read(&self) -> SaveCounts {
        SaveCounts {
            saves: self.saves.load(Ordering::Relaxed),
            records: self.records.load(Ordering::Relaxed),
            total: Duration::from_micros(self.micros.load(Ordering::Relaxed)),
            last: Duration::from_micros(self.last_micros.load(Ordering::Relaxed)),
        }
    }
}

/// Records to save, the applied index and unblock index they bring the
/// saved state to, and where to answer.
struct SaveJob {
    records: Unsaved,
    index: u64,
    unblock: u64,
    done: mpsc::Sender<Result<(), StoreError>>,
}

/// The Raft thread's side of saving: the records changed since the last
/// save, the save timer, and at most one save in flight on the saver
/// thread. Its error, if any, surfaces at the next save or wait.
pub(crate) struct Saver {
    db: StateDb,
    /// Records changed since the state was last written, encoded.
    unsaved: Unsaved,
    /// When the timer saves next (see [`save_interval`]).
    next_save: Instant,
    /// Batches for the saver thread, with where to answer.
    jobs: SyncSender<SaveJob>,
    /// The applied index of the save in flight, and its answer.
    in_flight: Option<(u64, Receiver<Result<(), StoreError>>)>,
    /// The applied index of the last save written: the log is never
    /// trimmed past it, so a restart can apply the rest again.
    saved_index: u64,
}

impl Saver {
    /// Starts the saver thread for `db`, whose saved state is at `index`.
    pub(crate) fn start(
        db: StateDb,
        index: u64,
        stats: Arc<SaveStats>,
    ) -> Result<Saver, StoreError> {
        Ok(Saver {
            jobs: spawn_saver(db.clone(), stats)?,
            db,
            unsaved: Unsaved::new(),
            next_save: Instant::now() + save_interval(),
            in_flight: None,
            saved_index: index,
        })
    }

    /// Notes a record changed (`None`: removed), encoded.
    pub(crate) fn record(&mut self, table: Table, key: String, value: Option<Arc<str>>) {
        self.unsaved.insert((table, key), value);
    }

    /// After applying entries: enough records wait, or the timer is due.
    pub(crate) fn due(&self) -> bool {
        self.unsaved.len() >= SAVE_RECORDS || Instant::now() >= self.next_save
    }

    /// On a tick: the timer is due and something changed.
    pub(crate) fn due_on_tick(&self) -> bool {
        !self.unsaved.is_empty() && Instant::now() >= self.next_save
    }

    /// The applied index of the last save written.
    pub(crate) fn saved_index(&self) -> u64 {
        self.saved_index
    }

    pub(crate) fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Starts a save of the records changed so far, which bring the saved
    /// state to `index` (and `unblock`): written by the saver thread while
    /// the caller goes on with Raft. Waits first for the save in flight.
    pub(crate) fn save_behind(&mut self, index: u64, unblock: u64) -> Result<(), StoreError> {
        self.wait()?;
        // The next interval likely changes as many records: sized for them
        // up front, the map does not rehash as it fills.
        let capacity = self.unsaved.len();
        let records = std::mem::replace(&mut self.unsaved, Unsaved::with_capacity(capacity));
        self.next_save = Instant::now() + save_interval();
        let (done, wait) = mpsc::channel();
        let job = SaveJob {
            records,
            index,
            unblock,
            done,
        };
        match self.jobs.send(job) {
            Ok(()) => {
                self.in_flight = Some((index, wait));
                Ok(())
            }
            Err(mpsc::SendError(job)) => {
                self.db.commit(job.records, job.index, job.unblock)?;
                self.db.flush()?;
                self.saved_index = index;
                Ok(())
            }
        }
    }

    /// Waits until the save in flight, if any, is written.
    pub(crate) fn wait(&mut self) -> Result<(), StoreError> {
        match self.in_flight.take() {
            Some((index, wait)) => {
                wait.recv().unwrap_or(Err(StoreError::Stopped))?;
                self.saved_index = index;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Notes a save that has finished, without waiting for one that has not.
    pub(crate) fn poll(&mut self) -> Result<(), StoreError> {
        if let Some((index, wait)) = &self.in_flight {
            match wait.try_recv() {
                Ok(result) => {
                    let index = *index;
                    self.in_flight = None;
                    result?;
                    self.saved_index = index;
                }
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => {
                    self.in_flight = None;
                    return Err(StoreError::Stopped);
                }
            }
        }
        Ok(())
    }

    /// Replaces the saved state with `state` (a snapshot from the leader),
    /// durably, after the save in flight: that one must land before, not
    /// after, the replacement. The changes not yet saved are dropped with
    /// the state they belonged to.
    pub(crate) fn replace_all(&mut self, state: &State) -> Result<(), StoreError> {
        self.wait()?;
        self.db.replace_all(state)?;
        self.unsaved.clear();
        self.next_save = Instant::now() + save_interval();
        self.saved_index = state.index;
        Ok(())
    }

    /// Forces everything written so far to disk.
    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()
    }
}

/// The thread that writes state batches, one at a time.
fn spawn_saver(db: StateDb, stats: Arc<SaveStats>) -> Result<SyncSender<SaveJob>, StoreError> {
    let (tx, rx) = mpsc::sync_channel::<SaveJob>(1);
    std::thread::Builder::new()
        .name("state-saver".into())
        .spawn(move || {
            for job in rx {
                // Flushed before it counts as saved: the log is trimmed up
                // to a saved index, so that index must survive a crash.
                let (records, started) = (job.records.len(), Instant::now());
                let result = db
                    .commit(job.records, job.index, job.unblock)
                    .and_then(|()| db.flush());
                stats.saved(records, started.elapsed());
                let _ = job.done.send(result);
            }
        })
        .map_err(|source| StoreError::Io {
            path: "the state-saver thread".into(),
            source,
        })?;
    Ok(tx)
}
