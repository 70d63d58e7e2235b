//! The gateway's time: the system's clocks, or a manual clock for deterministic tests.
//!
//! Throttles measure time on the monotonic clock, so a wall clock set back neither creates
//! tokens nor panics. Quotas count calendar periods in UTC on the wall clock; a wall clock set
//! back never returns a key to a period it has left (which would give quota back).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower_gateway::clock::ManualClock;
//!
//! // 2026-01-01T00:00:00Z
//! let manual = ManualClock::starting_at(1_767_225_600);
//! let clock = manual.clock();
//! manual.advance(Duration::from_secs(90));
//! assert_eq!(clock.unix_seconds(), 1_767_225_690);
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of time for throttles and quotas. Cheap to clone.
#[derive(Clone, Debug)]
pub struct GatewayClock {
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    System { origin: Instant },
    Manual(Arc<ManualState>),
}

#[derive(Debug)]
struct ManualState {
    start_unix_seconds: u64,
    elapsed_nanos: AtomicU64,
}

impl GatewayClock {
    /// The system's monotonic and wall clocks.
    pub fn system() -> Self {
        Self {
            kind: Kind::System {
                origin: Instant::now(),
            },
        }
    }

    /// Monotonic time since the clock was made.
    pub fn elapsed(&self) -> Duration {
        match &self.kind {
            Kind::System { origin } => origin.elapsed(),
            Kind::Manual(state) => {
                Duration::from_nanos(state.elapsed_nanos.load(Ordering::Acquire))
            }
        }
    }

    /// Wall-clock time in seconds since the Unix epoch (UTC). A system clock set before 1970
    /// reads as 0.
    pub fn unix_seconds(&self) -> u64 {
        self.since_epoch().as_secs()
    }

    /// Wall-clock time in milliseconds since the Unix epoch, for what several instances
    /// share (response cache entries on Redis).
    #[cfg(feature = "redis")]
    pub(crate) fn unix_millis(&self) -> u64 {
        u64::try_from(self.since_epoch().as_millis()).unwrap_or(u64::MAX)
    }

    fn since_epoch(&self) -> Duration {
        match &self.kind {
            Kind::System { .. } => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
            Kind::Manual(state) => {
                Duration::from_secs(state.start_unix_seconds).saturating_add(self.elapsed())
            }
        }
    }
}

impl Default for GatewayClock {
    fn default() -> Self {
        Self::system()
    }
}

/// A clock that moves only when told to, for tests of throttles and quota periods.
#[derive(Clone, Debug)]
pub struct ManualClock {
    state: Arc<ManualState>,
}

impl ManualClock {
    /// A clock whose wall time starts at `unix_seconds` (UTC) and whose monotonic time
    /// starts at zero.
    pub fn starting_at(unix_seconds: u64) -> Self {
        Self {
            state: Arc::new(ManualState {
                start_unix_seconds: unix_seconds,
                elapsed_nanos: AtomicU64::new(0),
            }),
        }
    }

    /// The [`GatewayClock`] to give the gateway.
    pub fn clock(&self) -> GatewayClock {
        GatewayClock {
            kind: Kind::Manual(Arc::clone(&self.state)),
        }
    }

    /// Moves both clocks forward (saturating at about 584 years).
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .state
            .elapsed_nanos
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                Some(now.saturating_add(nanos))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_both_times_together() {
        let manual = ManualClock::starting_at(1000);
        let clock = manual.clock();
        assert_eq!(clock.elapsed(), Duration::ZERO);
        manual.advance(Duration::from_millis(2500));
        assert_eq!(clock.elapsed(), Duration::from_millis(2500));
        assert_eq!(clock.unix_seconds(), 1002);
        manual.advance(Duration::MAX);
        assert_eq!(clock.elapsed(), Duration::from_nanos(u64::MAX));
    }

    #[test]
    fn system_clock_is_monotonic() {
        let clock = GatewayClock::system();
        let first = clock.elapsed();
        assert!(clock.elapsed() >= first);
        assert!(clock.unix_seconds() > 1_700_000_000);
    }
}
