//! Time as the agent reads it: the one `now_ms` (exit records, GPU health)
//! and the [`Clock`] the reconciler asks, so its decisions can be tested
//! with a clock the test moves.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The wall-clock time `ms` milliseconds after the Unix epoch.
pub fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// One reading of both clocks. The wall clock times back-offs (they
/// count from the exit time a shim recorded, which may be from before an
/// agent restart); the monotonic one says how long ago a report was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub wall: SystemTime,
    pub mono: Instant,
}

/// Where the reconciler reads the time. The real one is [`SystemClock`].
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Now;
}

/// The machine's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Now {
        Now {
            wall: SystemTime::now(),
            mono: Instant::now(),
        }
    }
}

/// A clock that moves only when the test says.
#[cfg(test)]
#[derive(Debug)]
pub struct ManualClock(std::sync::Mutex<Now>);

#[cfg(test)]
impl ManualClock {
    /// Starts at `ms` after the Unix epoch.
    pub fn at_ms(ms: u64) -> ManualClock {
        ManualClock(std::sync::Mutex::new(Now {
            wall: from_ms(ms),
            mono: Instant::now(),
        }))
    }

    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock().unwrap();
        now.wall += by;
        now.mono += by;
    }
}

#[cfg(test)]
impl Clock for ManualClock {
    fn now(&self) -> Now {
        *self.0.lock().unwrap()
    }
}

impl<C: Clock + ?Sized> Clock for std::sync::Arc<C> {
    fn now(&self) -> Now {
        (**self).now()
    }
}
