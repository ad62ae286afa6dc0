//! Which core the uplink sends to: the healthy one with the lowest round-trip time.
//!
//! Sans I/O: the uplink feeds in what the transport measured (the smoothed round-trip time of
//! a live connection to each endpoint, `None` where there is none) and the failed deliveries,
//! with the current time, and reads back the endpoint to use. The rules:
//!
//! - An endpoint whose delivery failed is *held* for a while (`hold`, 10 s in production): it
//!   is not chosen again before that unless every endpoint is held. So a core that keeps
//!   answering `unavailable` costs one attempt per hold, not one per batch.
//! - Among the endpoints not held, those with a measured round-trip time compete: the fastest
//!   wins, but the current one is only left for one faster by at least [`SWITCH_MARGIN_RATIO`]
//!   of its time and [`SWITCH_MARGIN_MIN`], so measurement noise does not make the uplink flap.
//!   An endpoint without a live connection (down, or not connected yet) never beats one with.
//! - Without any measurement (at start, or a transport that does not measure) the endpoints
//!   are used in configuration order: the current one while it is not held, otherwise the
//!   next one after it that is not held.
//! - A failure moves the uplink off the failed endpoint at once: to the fastest other one, or
//!   the next one in order. When every endpoint is held, the endpoints take turns.

use std::time::Duration;
use tokio::time::Instant;

/// The current endpoint is left only for one faster by this share of its round-trip time...
pub(crate) const SWITCH_MARGIN_RATIO: f64 = 0.2;
/// ...and by at least this much.
pub(crate) const SWITCH_MARGIN_MIN: Duration = Duration::from_millis(1);

#[derive(Debug)]
pub(crate) struct Selector {
    current: usize,
    /// Per endpoint: not to be chosen before this instant (after a failed delivery).
    held_until: Vec<Option<Instant>>,
    hold: Duration,
}

impl Selector {
    /// `endpoints` is at least 1 (the configuration guarantees it).
    pub(crate) fn new(endpoints: usize, hold: Duration) -> Self {
        Self {
            current: 0,
            held_until: vec![None; endpoints.max(1)],
            hold,
        }
    }

    pub(crate) fn current(&self) -> usize {
        self.current
    }

    fn held(&self, i: usize, now: Instant) -> bool {
        self.held_until[i].is_some_and(|until| now < until)
    }

    /// The endpoint to use now, given the round-trip time measured to each (same order as
    /// the endpoints; a missing entry counts as `None`).
    pub(crate) fn choose(&mut self, rtts: &[Option<Duration>], now: Instant) -> usize {
        let n = self.held_until.len();
        let rtt = |i: usize| rtts.get(i).copied().flatten();
        let fastest = (0..n)
            .filter(|&i| !self.held(i, now))
            .filter_map(|i| rtt(i).map(|r| (r, i)))
            .min();
        if let Some((best, i)) = fastest {
            let keep = !self.held(self.current, now)
                && rtt(self.current).is_some_and(|cur| {
                    let margin = cur.mul_f64(SWITCH_MARGIN_RATIO).max(SWITCH_MARGIN_MIN);
                    best + margin > cur
                });
            if !keep {
                self.current = i;
            }
        } else if self.held(self.current, now)
            && let Some(next) = (1..n)
                .map(|k| (self.current + k) % n)
                .find(|&i| !self.held(i, now))
        {
            self.current = next;
        }
        self.current
    }

    /// A delivery to endpoint `failed` did not succeed at `now`: hold it and choose another.
    pub(crate) fn failed(
        &mut self,
        failed: usize,
        rtts: &[Option<Duration>],
        now: Instant,
    ) -> usize {
        let n = self.held_until.len();
        if let Some(slot) = self.held_until.get_mut(failed) {
            *slot = Some(now + self.hold);
        }
        if self.current == failed {
            // Where to go when every endpoint is held: the next one, in turn.
            self.current = (failed + 1) % n;
        }
        self.choose(rtts, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOLD: Duration = Duration::from_secs(10);

    fn ms(v: u64) -> Option<Duration> {
        Some(Duration::from_millis(v))
    }

    #[test]
    fn the_fastest_live_endpoint_wins_whatever_its_place_in_the_list() {
        let now = Instant::now();
        let mut s = Selector::new(3, HOLD);
        assert_eq!(s.choose(&[ms(50), ms(5), ms(20)], now), 1);
        // Not connected (None) never beats a live connection, however slow.
        assert_eq!(s.choose(&[None, None, ms(300)], now), 2);
    }

    #[test]
    fn without_measurements_the_configured_order_is_kept() {
        let now = Instant::now();
        let mut s = Selector::new(3, HOLD);
        assert_eq!(s.choose(&[None, None, None], now), 0);
        assert_eq!(s.choose(&[], now), 0);
        assert_eq!(s.failed(0, &[], now), 1);
        assert_eq!(s.choose(&[], now), 1, "stays on the next one");
        assert_eq!(s.failed(1, &[], now), 2);
        assert_eq!(s.failed(2, &[], now), 0, "all held: they take turns");
        assert_eq!(s.failed(0, &[], now), 1);
    }

    #[test]
    fn small_differences_do_not_make_it_flap() {
        let now = Instant::now();
        let mut s = Selector::new(2, HOLD);
        assert_eq!(s.choose(&[ms(10), ms(12)], now), 0);
        // 9 ms is not 20 % better than 10 ms: stay.
        assert_eq!(s.choose(&[ms(10), ms(9)], now), 0);
        assert_eq!(s.choose(&[ms(10), ms(7)], now), 1);
        // Sub-millisecond noise on a LAN: the 1 ms floor applies.
        let mut s = Selector::new(2, HOLD);
        let us = |v| Some(Duration::from_micros(v));
        assert_eq!(s.choose(&[us(400), us(500)], now), 0);
        assert_eq!(s.choose(&[us(400), us(150)], now), 0);
        assert_eq!(s.choose(&[us(1500), us(150)], now), 1);
    }

    #[test]
    fn a_failed_endpoint_is_left_for_the_next_fastest_and_held() {
        let t0 = Instant::now();
        let mut s = Selector::new(3, HOLD);
        let rtts = [ms(50), ms(5), ms(20)];
        assert_eq!(s.choose(&rtts, t0), 1);
        // The fastest fails while its connection still looks alive: the next fastest, not the
        // next in the list.
        assert_eq!(s.failed(1, &rtts, t0), 2);
        assert_eq!(s.choose(&rtts, t0 + Duration::from_secs(9)), 2);
        // The hold is over and it still measures fastest: back to it.
        assert_eq!(s.choose(&rtts, t0 + HOLD), 1);
        // Its connection is gone (None): it is not chosen, held or not.
        assert_eq!(s.choose(&[ms(50), None, ms(20)], t0 + HOLD), 2);
    }

    #[test]
    fn when_every_measured_endpoint_is_held_an_unmeasured_one_is_tried() {
        let t0 = Instant::now();
        let mut s = Selector::new(3, HOLD);
        let rtts = [ms(5), ms(8), None];
        assert_eq!(s.choose(&rtts, t0), 0);
        assert_eq!(s.failed(0, &rtts, t0), 1);
        assert_eq!(s.failed(1, &rtts, t0), 2);
        // And when that fails too, the turns go round.
        assert_eq!(s.failed(2, &rtts, t0), 0);
    }

    #[test]
    fn a_failure_of_an_endpoint_not_in_use_only_holds_it() {
        let t0 = Instant::now();
        let mut s = Selector::new(2, HOLD);
        let rtts = [ms(5), ms(8)];
        assert_eq!(s.choose(&rtts, t0), 0);
        assert_eq!(s.failed(1, &rtts, t0), 0);
        assert_eq!(s.failed(0, &rtts, t0), 1, "both held: the next one");
    }
}
