//! Time sources. Owns the [`Clock`] trait that both the shared dicts (TTLs)
//! and the `ngx.now` family read, so tests can hold time still or move it by
//! hand instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A wall-clock source: time elapsed since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    /// The current time as a duration since the Unix epoch.
    fn now(&self) -> Duration;

    /// The current time in whole milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.now().as_millis()).unwrap_or(u64::MAX)
    }
}

/// The real system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug, Default)]
pub struct ManualClock {
    nanos: AtomicU64,
}

impl ManualClock {
    /// A manual clock starting at `start` after the epoch.
    pub fn new(start: Duration) -> Arc<Self> {
        Arc::new(Self {
            nanos: AtomicU64::new(u64::try_from(start.as_nanos()).unwrap_or(u64::MAX)),
        })
    }

    /// Sets the current time.
    pub fn set(&self, now: Duration) {
        self.nanos.store(
            u64::try_from(now.as_nanos()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.nanos.fetch_add(
            u64::try_from(by.as_nanos()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
}
