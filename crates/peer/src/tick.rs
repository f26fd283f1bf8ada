//! One clock grid for the process's periodic work (announcements, chunk registrations, the
//! patience of a guessed read), so timers of many connections that are due at about the same
//! time fire in the same wake-up instead of one each.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

/// The grid's spacing: a deadline moves later by less than this.
pub(crate) const TICK: Duration = Duration::from_millis(25);

/// The first grid instant at or after `at`.
pub(crate) fn on_tick(at: Instant) -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    let Some(since) = at.checked_duration_since(epoch) else { return at };
    let tick = TICK.as_nanos();
    let rest = since.as_nanos() % tick;
    if rest == 0 {
        at
    } else {
        // `tick - rest` is below TICK, so it fits.
        at + Duration::from_nanos((tick - rest) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deadlines a little apart land on the same instant, never earlier than asked, and at most a
    /// tick later.
    #[tokio::test]
    async fn deadlines_share_grid_instants() {
        let now = Instant::now();
        let a = on_tick(now + Duration::from_millis(100));
        let b = on_tick(now + Duration::from_millis(101));
        assert!(a >= now + Duration::from_millis(100) && a < now + Duration::from_millis(100) + TICK);
        assert!(b >= now + Duration::from_millis(101));
        assert_eq!(on_tick(a), a, "a grid instant is its own tick");
        let c = on_tick(now + Duration::from_millis(100) + TICK / 5);
        assert!(c == a || c == a + TICK);
    }
}
