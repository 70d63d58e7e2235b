//! The gateway's time: the system's clocks, or a manual clock for deterministic tests.
//!
//! Throttles measure time on the monotonic clock, so a wall clock set back neither creates
//! tokens nor panics. Quotas count calendar periods in UTC on the wall clock; a wall clock set
//! back never returns a key to a period it has left (which would give quota back). On the
//! request path the wall clock is read at most once a second and followed on the monotonic
//! clock in between, so a change of the system clock reaches quotas within a second.
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
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of time for throttles and quotas. Cheap to clone.
#[derive(Clone, Debug)]
pub struct GatewayClock {
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    System {
        origin: Instant,
        wall: Arc<WallAnchor>,
    },
    Manual(Arc<ManualState>),
}

/// The wall clock as an offset from the monotonic one, read again at most once a second: a
/// quota needs the request's UTC second, and reading the wall clock for it on every request
/// costs about as much as the rest of the quota's decision. Between reads the wall time
/// follows the monotonic clock, which NTP's slewing moves apart from it by well under a
/// millisecond a second; a wall clock that is set (stepped) is seen within a second.
#[derive(Debug)]
struct WallAnchor {
    /// Wall time less monotonic time at the last read, in nanoseconds.
    offset_nanos: AtomicI64,
    /// The monotonic time, in nanoseconds, from which the wall clock is read again.
    read_again_at: AtomicU64,
}

impl WallAnchor {
    const READ_EVERY_NANOS: u64 = 1_000_000_000;

    fn new() -> Self {
        Self {
            offset_nanos: AtomicI64::new(0),
            // The first use reads.
            read_again_at: AtomicU64::new(0),
        }
    }

    /// The wall time, in seconds since the Unix epoch, at monotonic time `elapsed_nanos`;
    /// `wall` reads the wall clock (as time since the epoch) when the offset is due.
    fn unix_seconds_at(&self, elapsed_nanos: u64, wall: impl FnOnce() -> Duration) -> u64 {
        // Relaxed: the two words are each a valid reading on their own; a thread that sees
        // the new due time with the old offset uses an offset under a second old.
        let offset = if elapsed_nanos >= self.read_again_at.load(Ordering::Relaxed) {
            self.read(elapsed_nanos, wall)
        } else {
            self.offset_nanos.load(Ordering::Relaxed)
        };
        let elapsed = i64::try_from(elapsed_nanos).unwrap_or(i64::MAX);
        let unix_nanos = offset.saturating_add(elapsed).max(0);
        unix_nanos.unsigned_abs() / 1_000_000_000
    }

    #[cold]
    fn read(&self, elapsed_nanos: u64, wall: impl FnOnce() -> Duration) -> i64 {
        let wall_nanos = i64::try_from(wall().as_nanos()).unwrap_or(i64::MAX);
        let elapsed = i64::try_from(elapsed_nanos).unwrap_or(i64::MAX);
        let offset = wall_nanos.saturating_sub(elapsed);
        self.offset_nanos.store(offset, Ordering::Relaxed);
        self.read_again_at.store(
            elapsed_nanos.saturating_add(Self::READ_EVERY_NANOS),
            Ordering::Relaxed,
        );
        offset
    }
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
                wall: Arc::new(WallAnchor::new()),
            },
        }
    }

    /// Monotonic time since the clock was made.
    pub fn elapsed(&self) -> Duration {
        match &self.kind {
            Kind::System { origin, .. } => origin.elapsed(),
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

    /// The wall-clock second (since the Unix epoch, UTC) at monotonic time `elapsed` (a
    /// reading of [`elapsed`](Self::elapsed)): what a quota counts a request in, without a
    /// second clock read. The system clock's wall time is anchored to its monotonic time and
    /// read again at most once a second (see `WallAnchor`).
    pub(crate) fn unix_seconds_at(&self, elapsed: Duration) -> u64 {
        match &self.kind {
            Kind::System { wall, .. } => wall.unix_seconds_at(
                u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
                wall_since_epoch,
            ),
            Kind::Manual(state) => state.start_unix_seconds.saturating_add(elapsed.as_secs()),
        }
    }

    fn since_epoch(&self) -> Duration {
        match &self.kind {
            Kind::System { .. } => wall_since_epoch(),
            Kind::Manual(state) => {
                Duration::from_secs(state.start_unix_seconds).saturating_add(self.elapsed())
            }
        }
    }
}

/// The system's wall clock since the Unix epoch; zero for a clock set before 1970.
fn wall_since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
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
    fn the_wall_clock_is_read_again_once_a_second() {
        const SECOND: u64 = 1_000_000_000;
        let anchor = WallAnchor::new();
        let reads = std::cell::Cell::new(0);
        let wall = |seconds: u64| {
            let reads = &reads;
            move || {
                reads.set(reads.get() + 1);
                Duration::from_secs(seconds)
            }
        };
        // Monotonic 5 s when the wall clock says 1,000 s.
        assert_eq!(anchor.unix_seconds_at(5 * SECOND, wall(1000)), 1000);
        assert_eq!(reads.get(), 1);
        // Within the second: the anchor, not the wall clock (which was set to 2,000 meanwhile).
        assert_eq!(
            anchor.unix_seconds_at(5 * SECOND + SECOND / 2, wall(2000)),
            1000
        );
        assert_eq!(anchor.unix_seconds_at(6 * SECOND - 1, wall(2000)), 1000);
        assert_eq!(reads.get(), 1);
        // A second on: read again, and the clock set forward is seen.
        assert_eq!(anchor.unix_seconds_at(6 * SECOND, wall(2000)), 2000);
        assert_eq!(reads.get(), 2);
        assert_eq!(
            anchor.unix_seconds_at(6 * SECOND + SECOND / 2, wall(0)),
            2000
        );
        // A clock set back is seen too (quota periods never go back: see the engine).
        assert_eq!(anchor.unix_seconds_at(8 * SECOND, wall(1500)), 1500);
        assert_eq!(
            anchor.unix_seconds_at(8 * SECOND + 999_999_999, wall(0)),
            1500
        );
        assert_eq!(reads.get(), 3);
        // A wall clock before 1970 (read as 0) stays at 0 until it is read again.
        assert_eq!(anchor.unix_seconds_at(20 * SECOND, wall(0)), 0);
        assert_eq!(anchor.unix_seconds_at(21 * SECOND - 1, wall(0)), 0);
        // Monotonic time far beyond the wall time saturates instead of wrapping.
        assert_eq!(
            anchor.unix_seconds_at(u64::MAX, wall(u64::MAX / SECOND)),
            i64::MAX.unsigned_abs() / SECOND
        );
    }

    #[test]
    fn the_system_clock_at_a_reading_is_its_wall_clock() {
        let clock = GatewayClock::system();
        let before = clock.unix_seconds();
        let anchored = clock.unix_seconds_at(clock.elapsed());
        let after = clock.unix_seconds();
        assert!(
            (before..=after).contains(&anchored),
            "{before} {anchored} {after}"
        );
        let manual = ManualClock::starting_at(1000);
        assert_eq!(
            manual.clock().unix_seconds_at(Duration::from_millis(2500)),
            1002
        );
    }

    #[test]
    fn system_clock_is_monotonic() {
        let clock = GatewayClock::system();
        let first = clock.elapsed();
        assert!(clock.elapsed() >= first);
        assert!(clock.unix_seconds() > 1_700_000_000);
    }
}
