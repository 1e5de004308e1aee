//! Open-loop pacing for latency phases (wrk2-style), so that latency is measured at a load the
//! design can sustain and corrected for coordinated omission.
//!
//! A closed loop sends as fast as the design accepts, so a stalled design also stalls the load
//! that would have observed the stall: its percentiles are queue-full latency, and they hide
//! the events that were never sent during a stall (Gil Tene, "How NOT to measure latency";
//! wrk2). Here producer k of n sends its i-th event at the intended time
//! `start + i * n / rate` seconds, computed from `start` rather than from the previous send so
//! the schedule never drifts; it sleeps until then, and when it is already late it sends at
//! once and skips nothing. Latency is measured from the intended time, so the time an event
//! spent waiting behind a slow predecessor is counted, as it would be for a real client.
//!
//! `send_sleeping` runs that schedule for every paced producer (net's and the baseline's): a
//! producer that spins or yields holds a core the kernel's I/O workers need (on 2 cores a
//! spinning thread kept the worker completing a shard's write off the CPU for ~0.4 s). It
//! sleeps until the next event
//! is due (`clock_nanosleep` on an absolute `CLOCK_MONOTONIC` deadline, with the thread's timer
//! slack cut to `SLEEP_TIMER_SLACK_NS`) and, each time it wakes, sends every event whose
//! intended time has passed, each stamped with its own intended time. Wake-ups are at least a
//! wake period apart (`WAKE_PERIOD_US_DEFAULT`): each one costs CPU, so an event may wait up to
//! one period for its wake-up, and that wait counts in its latency like any other.
//!
//! All times are `net_engine::monotonic_ns` (CLOCK_MONOTONIC ns), the clock net's shards stamp
//! persistence with; the clock is a parameter so that the arithmetic can be tested with a fake.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Paced rate when `--rate` is not given, events/s over all producers.
pub const RATE_PER_S_DEFAULT: u64 = 1_000_000;

/// The default rate is used only below this share (%) of the baseline's measured throughput:
/// nearer saturation the baseline's queues fill and the phase measures queueing again.
pub const RATE_SHARE_OF_BASELINE_MAX_PCT: u64 = 60;

/// Share (%) of the baseline's measured throughput paced at when the default rate is too high.
pub const RATE_SHARE_OF_BASELINE_FALLBACK_PCT: u64 = 50;

/// Paced events when `--latency-events` is not given: at most this many ...
pub const EVENTS_DEFAULT_MAX: u64 = 2_000_000;

/// ... and at most this many seconds' worth at the paced rate.
pub const PHASE_S_DEFAULT: u64 = 2;

/// How far ahead of the release the schedule starts, so that producer threads are running
/// (not still being woken by the barrier) when their first event is due.
pub const START_LEAD_NS: u64 = 1_000_000;

const _: () = assert!(RATE_SHARE_OF_BASELINE_FALLBACK_PCT < RATE_SHARE_OF_BASELINE_MAX_PCT);

/// The paced rate: `requested` when given; otherwise the default unless it is at least
/// `RATE_SHARE_OF_BASELINE_MAX_PCT` of the baseline's measured throughput, in which case
/// `RATE_SHARE_OF_BASELINE_FALLBACK_PCT` of it, so that both designs can sustain the pace.
pub fn rate_per_s(requested: Option<u64>, baseline_events_per_s: u64) -> u64 {
    if let Some(rate) = requested {
        return rate;
    }
    let baseline = u128::from(baseline_events_per_s);
    if u128::from(RATE_PER_S_DEFAULT) * 100 >= baseline * u128::from(RATE_SHARE_OF_BASELINE_MAX_PCT)
    {
        let fallback = baseline * u128::from(RATE_SHARE_OF_BASELINE_FALLBACK_PCT) / 100;
        return u64::try_from(fallback).expect("below a u64 rate").max(1);
    }
    RATE_PER_S_DEFAULT
}

/// Paced events: `requested` when given, else the smaller of `EVENTS_DEFAULT_MAX` and
/// `PHASE_S_DEFAULT` seconds at `rate_per_s`.
pub fn events(requested: Option<u64>, rate_per_s: u64) -> u64 {
    requested.unwrap_or_else(|| EVENTS_DEFAULT_MAX.min(rate_per_s.saturating_mul(PHASE_S_DEFAULT)))
}

/// A paced phase shared by its producers: the rate, and the start time that the releasing
/// thread publishes just before the release (the barrier orders it before every read).
#[derive(Debug, Clone)]
pub struct Pace {
    rate_per_s: u64,
    producers: u64,
    start_ns: Arc<AtomicU64>,
}

impl Pace {
    pub fn new(rate_per_s: u64, producers: usize) -> Pace {
        assert!(
            rate_per_s > 0 && producers > 0,
            "a pace needs a rate and producers"
        );
        Pace {
            rate_per_s,
            producers: producers as u64,
            start_ns: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Starts the schedule `START_LEAD_NS` after `now_ns`; call before releasing producers.
    pub fn start(&self, now_ns: u64) {
        self.start_ns
            .store(now_ns + START_LEAD_NS, Ordering::Release);
    }

    /// Every producer's schedule; call after the release.
    pub fn schedule(&self) -> Schedule {
        let start_ns = self.start_ns.load(Ordering::Acquire);
        assert!(
            start_ns > 0,
            "the pace is started before producers are released"
        );
        Schedule {
            start_ns,
            rate_per_s: self.rate_per_s,
            producers: self.producers,
        }
    }
}

/// One producer's intended send times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    start_ns: u64,
    rate_per_s: u64,
    producers: u64,
}

impl Schedule {
    /// When event `i` of a producer is due: `start + i * producers / rate` seconds, exact in
    /// integer nanoseconds (no accumulated rounding).
    pub fn intended_ns(&self, i: u64) -> u64 {
        let offset = u128::from(i) * u128::from(self.producers) * 1_000_000_000
            / u128::from(self.rate_per_s);
        self.start_ns + u64::try_from(offset).expect("a phase lasts less than 584 years")
    }

    /// How many events are due at `now_ns`: those whose intended time is at or before it.
    /// `intended_ns(i) <= now` holds exactly when `i * producers * 1e9 < (now - start + 1) *
    /// rate` (the floor in `intended_ns`), so the count is that bound divided, rounded up.
    pub fn due_by(&self, now_ns: u64) -> u64 {
        let Some(elapsed_ns) = now_ns.checked_sub(self.start_ns) else {
            return 0;
        };
        let period = u128::from(self.producers) * 1_000_000_000;
        let due = ((u128::from(elapsed_ns) + 1) * u128::from(self.rate_per_s)).div_ceil(period);
        u64::try_from(due).unwrap_or(u64::MAX)
    }

    /// The events of `0..events` not yet sent (`next..`) that are due at `now_ns`.
    pub fn due_range(&self, next: u64, events: u64, now_ns: u64) -> Range<u64> {
        next..self.due_by(now_ns).clamp(next, events.max(next))
    }
}

/// Timer slack of a sleeping producer, ns: how much later than asked the kernel may wake it
/// (to merge wake-ups). The default, 50 µs, is five events apart at 100 k events/s and would
/// count as latency; 1 µs keeps the wake-up close to the deadline.
pub const SLEEP_TIMER_SLACK_NS: u64 = 1_000;

/// Shortest time between a sleeping producer's wake-ups, µs, unless given. One sleep and
/// wake-up cost about 35 µs of CPU on the development VM whatever the timer slack, so waking
/// for every event due (10 µs apart at 100 k events/s) took 70-90% of a core; at most one
/// wake-up per 100 µs took under 20%, and adds at most 100 µs to an event's latency (the
/// producer's lag histogram shows how late its sends were).
pub const WAKE_PERIOD_US_DEFAULT: u64 = 100;

/// Sends events `0..events` of `schedule` from a thread that sleeps while none is due: each
/// time it wakes (`clock()` read once), `send(i, intended_ns, now_ns)` is called for every
/// event `i` whose intended time has passed, in order; then it sleeps (`sleep_until`) until
/// the next one is due, but no sooner than `wake_period_ns` after a wake-up that sent. Stops
/// at the first error `send` returns.
pub fn send_sleeping<E>(
    schedule: &Schedule,
    events: u64,
    wake_period_ns: u64,
    clock: impl Fn() -> u64,
    mut sleep_until: impl FnMut(u64),
    mut send: impl FnMut(u64, u64, u64) -> Result<(), E>,
) -> Result<(), E> {
    let mut next = 0;
    let mut earliest_wake_ns = 0;
    while next < events {
        let now_ns = clock();
        let due = schedule.due_range(next, events, now_ns);
        if !due.is_empty() {
            for i in due.clone() {
                send(i, schedule.intended_ns(i), now_ns)?;
            }
            next = due.end;
            earliest_wake_ns = now_ns.saturating_add(wake_period_ns);
        }
        if next < events {
            sleep_until(schedule.intended_ns(next).max(earliest_wake_ns));
        }
    }
    Ok(())
}

/// Cuts the calling thread's timer slack to `SLEEP_TIMER_SLACK_NS`, so that its sleeps end
/// close to their deadline.
pub fn tighten_timer_slack() -> std::io::Result<()> {
    let slack = libc::c_ulong::try_from(SLEEP_TIMER_SLACK_NS).expect("slack fits c_ulong");
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and changes only this thread's
    // timer slack; no memory is passed.
    let rc = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, slack, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Sleeps until `deadline_ns` on the `monotonic_ns` clock (`CLOCK_MONOTONIC`, absolute, so a
/// late call or a signal does not push the wake-up later); returns at once if it has passed.
pub fn sleep_until(deadline_ns: u64) {
    let deadline = libc::timespec {
        tv_sec: libc::time_t::try_from(deadline_ns / 1_000_000_000).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::try_from(deadline_ns % 1_000_000_000).expect("below 1e9"),
    };
    loop {
        // SAFETY: `deadline` is a valid timespec that outlives the call; the remaining-time
        // pointer may be null with TIMER_ABSTIME.
        let rc = unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &deadline,
                std::ptr::null_mut(),
            )
        };
        if rc != libc::EINTR {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn default_rate_falls_back_to_half_the_baseline_near_its_saturation() {
        assert_eq!(rate_per_s(Some(123), 10), 123, "a requested rate is kept");
        assert_eq!(rate_per_s(None, 5_000_000), RATE_PER_S_DEFAULT);
        assert_eq!(rate_per_s(None, 1_700_000), RATE_PER_S_DEFAULT);
        assert_eq!(
            rate_per_s(None, 1_666_667),
            RATE_PER_S_DEFAULT,
            "just above 60%"
        );
        assert_eq!(rate_per_s(None, 1_666_666), 833_333, "just at 60%");
        assert_eq!(rate_per_s(None, 1_500_000), 750_000);
        assert_eq!(rate_per_s(None, 1), 1, "never zero");
        assert_eq!(rate_per_s(None, u64::MAX), RATE_PER_S_DEFAULT);
    }

    #[test]
    fn default_events_are_two_seconds_capped_at_two_million() {
        assert_eq!(events(Some(7), 1_000_000), 7);
        assert_eq!(events(None, 1_000_000), 2_000_000);
        assert_eq!(events(None, 5_000_000), 2_000_000);
        assert_eq!(events(None, 300_000), 600_000);
    }

    #[test]
    fn schedule_spaces_each_producer_by_producers_over_rate_without_drift() {
        let pace = Pace::new(750_000, 2);
        pace.start(1_000);
        let s = pace.schedule();
        let start = 1_000 + START_LEAD_NS;
        assert_eq!(s.intended_ns(0), start);
        assert_eq!(s.intended_ns(1), start + 2_666); // 2/750k s = 2666.67 ns, floored
        assert_eq!(s.intended_ns(3), start + 8_000);
        assert_eq!(
            s.intended_ns(750_000),
            start + 2_000_000_000,
            "no drift after 2 s"
        );
    }

    #[test]
    fn due_by_counts_exactly_the_events_whose_intended_time_has_passed() {
        for (rate, producers) in [(750_000, 2), (100_000, 1), (3, 1), (1_000_000_007, 3)] {
            let pace = Pace::new(rate, producers);
            pace.start(5_000);
            let s = pace.schedule();
            assert_eq!(s.due_by(0), 0, "before the start nothing is due");
            assert_eq!(s.due_by(s.intended_ns(0) - 1), 0);
            for i in [0, 1, 2, 7, 1_000, 123_456] {
                let at = s.intended_ns(i);
                assert_eq!(s.due_by(at), i + 1, "at event {i}'s time (rate {rate})");
                if s.intended_ns(i + 1) > at + 1 {
                    assert_eq!(s.due_by(at + 1), i + 1);
                }
                assert_eq!(
                    s.due_by(s.intended_ns(i + 1) - 1),
                    i + 1,
                    "just before i + 1"
                );
            }
        }
    }

    #[test]
    fn due_range_starts_at_next_and_stops_at_the_last_event() {
        let pace = Pace::new(1_000_000, 1); // one event per µs
        pace.start(0);
        let s = pace.schedule();
        let start = START_LEAD_NS;
        assert_eq!(s.due_range(0, 10, start - 1), 0..0);
        assert_eq!(s.due_range(0, 10, start), 0..1);
        assert_eq!(s.due_range(2, 10, start + 4_500), 2..5);
        assert_eq!(
            s.due_range(5, 10, start + 4_500),
            5..5,
            "nothing new is due"
        );
        assert_eq!(
            s.due_range(3, 10, start + 1_000_000),
            3..10,
            "capped at the events"
        );
        assert_eq!(s.due_range(10, 10, start + 1_000_000), 10..10);
    }

    /// Runs `send_sleeping` over 20 events 10 µs apart on a fake clock that each sleep moves
    /// `oversleep_ns` past its deadline (as a coarse timer would); returns the deadlines slept
    /// to, relative to the schedule's start, after checking that every event went once, in
    /// order, never early, stamped with its own intended time.
    fn sleep_through(wake_period_ns: u64, oversleep_ns: u64) -> Vec<i64> {
        let pace = Pace::new(100_000, 1);
        pace.start(0);
        let s = pace.schedule();
        let now = Cell::new(0);
        let mut deadlines = Vec::new();
        let mut sent = Vec::new();
        let result: Result<(), ()> = send_sleeping(
            &s,
            20,
            wake_period_ns,
            || now.get(),
            |deadline| {
                deadlines.push(deadline as i64 - START_LEAD_NS as i64);
                now.set(now.get().max(deadline) + oversleep_ns);
            },
            |i, intended_ns, now_ns| {
                assert!(now_ns >= intended_ns, "event {i} went early");
                sent.push((i, intended_ns));
                Ok(())
            },
        );
        assert_eq!(result, Ok(()));
        let expected: Vec<_> = (0..20).map(|i| (i, s.intended_ns(i))).collect();
        assert_eq!(sent, expected);
        deadlines
    }

    #[test]
    fn sleeping_sender_sends_every_event_due_at_each_wake_up() {
        // Woken 25 µs late, each wake-up finds three events due (the late one and two more).
        let deadlines = sleep_through(0, 25_000);
        let us = [0, 30, 60, 90, 120, 150, 180];
        assert_eq!(deadlines, us.map(|us| us * 1_000).to_vec());
    }

    #[test]
    fn sleeping_sender_wakes_no_sooner_than_the_wake_period() {
        // The first wake-up is the schedule's start; after each, the next comes 35 µs later
        // although an event is due every 10 µs.
        let deadlines = sleep_through(35_000, 0);
        let us = [0, 35, 70, 105, 140, 175, 210];
        assert_eq!(deadlines, us.map(|us| us * 1_000).to_vec());
        // When the next event is due later than the period, it is slept to.
        let pace = Pace::new(1_000, 1); // one event per ms
        pace.start(0);
        let s = pace.schedule();
        let now = Cell::new(s.intended_ns(0));
        let mut deadlines = Vec::new();
        let result: Result<(), ()> = send_sleeping(
            &s,
            3,
            35_000,
            || now.get(),
            |deadline| {
                deadlines.push(deadline);
                now.set(deadline);
            },
            |_, _, _| Ok(()),
        );
        assert_eq!(result, Ok(()));
        assert_eq!(deadlines, vec![s.intended_ns(1), s.intended_ns(2)]);
    }

    #[test]
    fn sleeping_sender_stops_at_the_first_error() {
        let pace = Pace::new(1_000, 1);
        pace.start(0);
        let s = pace.schedule();
        let mut sent = 0;
        let result = send_sleeping(
            &s,
            10,
            WAKE_PERIOD_US_DEFAULT * 1_000,
            || u64::MAX / 2,
            |_| unreachable!("everything is due"),
            |i, _, _| {
                sent += 1;
                if i == 3 { Err(i) } else { Ok(()) }
            },
        );
        assert_eq!(result, Err(3));
        assert_eq!(sent, 4);
    }
}
