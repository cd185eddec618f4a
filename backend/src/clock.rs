//! The time source of everything time-dependent (sale windows, pay-by
//! times), injectable so tests can hold or move time.

use std::sync::{
    Arc,
    atomic::{AtomicI64, Ordering},
};

/// Milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }
}

/// Another clock shifted by a fixed offset (`clock.offset_ms`): lets a
/// node run with a skewed clock on purpose, e.g. to test what a sale does
/// when its nodes disagree about the time.
#[derive(Clone)]
pub struct OffsetClock {
    inner: Arc<dyn Clock>,
    offset_ms: i64,
}

impl OffsetClock {
    pub fn new(inner: Arc<dyn Clock>, offset_ms: i64) -> Self {
        Self { inner, offset_ms }
    }
}

impl Clock for OffsetClock {
    fn now_ms(&self) -> i64 {
        self.inner.now_ms().saturating_add(self.offset_ms)
    }
}

/// `clock` shifted by `offset_ms`, or `clock` itself when the offset is 0.
pub fn with_offset(clock: Arc<dyn Clock>, offset_ms: i64) -> Arc<dyn Clock> {
    if offset_ms == 0 {
        clock
    } else {
        Arc::new(OffsetClock::new(clock, offset_ms))
    }
}

/// A clock that only moves when told to.
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(now_ms: i64) -> Self {
        Self(Arc::new(AtomicI64::new(now_ms)))
    }

    pub fn set(&self, now_ms: i64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }

    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_clock_runs_ahead_of_its_source() {
        let manual = ManualClock::new(1_000);
        let shifted = with_offset(Arc::new(manual.clone()), 2_000);
        assert_eq!(shifted.now_ms(), 3_000);
        manual.advance(5);
        assert_eq!(shifted.now_ms(), 3_005);
        assert_eq!(with_offset(Arc::new(manual), 0).now_ms(), 1_005);
    }
}
