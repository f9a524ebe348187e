//! hotpool's own keep-alive: keep an idle container while the chance that a call
//! takes it soon is worth its memory, learned online per function; prewarm
//! ahead of the calls a busy function's recent rates forecast, and before calls
//! that come like clockwork. Every start is paid for: a prewarm is made only
//! when the chance that it serves a call beats the price of its start, and
//! letting a container go counts the start that brings it back.
//!
//! **Prices.** One currency, the cold start: a second of idle memory costs
//! `memory / cold_start_gb_s` of one, and a container start costs
//! [`START_COST`] of one (the engine's CPU time for a start against the
//! caller's wait for it, a second of either weighed alike), and more while
//! starts queue for their turn: each start then makes those behind it wait
//! about as long as it waited, so the wait the function's own starts had
//! lately, in starts' times, is added to its price (a start that waited two
//! starts' times costs 2.3). Letting a container go that is started again
//! soon is weighed at that price. The forecast's margin is not (a prewarm
//! and the cold start it saves would queue alike; see [`START_COST`]), nor
//! is keeping one through a gap rather than bringing it back on the clock:
//! the clockwork starts its containers as far ahead as they took to start
//! last time, so their waits delay no call, and pays for that in memory.
//!
//! **Keep-alive.** Every idle spell of a container ends one of two ways: a call
//! takes the container (its length is observed), or the container is removed.
//! A call that then finds no idle container at its level (see
//! [`KeepAlivePolicy`]) would have taken the container last removed at that
//! level, so that spell's length is observed too ("it would have been reused
//! after I"). Spells never followed by a call count as never reused.
//!
//! Spells are kept per class of level (1, 2, 3, 4-5, 6-7, 8-11, ...): the
//! container a lone call reuses every few seconds and the hundredth container
//! of a burst that comes back once an hour are different bets. From the spells
//! of a class (in log-spaced bins, older ones fading; all levels pooled until
//! the class has seen a few), the policy picks the idle timeout T that
//! minimises, per idle spell,
//!
//! ```text
//! memory x E[min(I, T)] x price  +  E[miss; I > T]
//! ```
//!
//! in units of one cold start, where `price` says what a second of idle memory
//! costs: one cold start is worth `cold_start_gb_s` of it (by default 3000
//! GB-seconds, fifty minutes of a 1 GiB container). A miss, the container let
//! go before it was wanted again, costs a cold start when the call found
//! nothing, and a start ([`START_COST`]) when one was started again ahead of
//! it: a prewarm served the call, or the forecast wanted a container at that
//! level again. Until it has seen
//! a few spells, T is the break-even time itself (a rent-or-buy rule), at most
//! ten minutes. Nothing is fitted to a trace: the constant that matters is the
//! price, and it moves the policy along its curve of cold starts against memory.
//!
//! **Clockwork.** A function's *busy spell* runs from a call that finds none
//! in flight until none is (a timer's fan-out of a hundred calls is one).
//! When the last [`REGULAR_PERIODS`] periods between the beginnings of its
//! spells are nearly equal (all but [`IRREGULAR_PERIODS`] within a tenth of
//! their median), the next spell is due a median period after the last ones
//! (the median of what each says), and the containers it needs are started
//! ahead of then by as long as the last such prewarm took to start them all
//! ([`PREWARM_LEAD`] at least) and kept until a tenth of a period plus its
//! longest spell past it (and by their timeouts after that): up to the
//! highest level that more than a start's price of the last spells reached.
//! Which containers are brought back that way: those its timeout lets go
//! before the spell is due; or, when keeping one through the gap costs more
//! than a start and its wait for its call (the lead and half a spell), all
//! of them, let go as the function becomes idle. A restart is a bet on the
//! clock: the clock must have held for [`REGULAR_PERIODS`] periods, and only
//! levels that the last spells reached often enough to pay for their start
//! are brought back. A spell of a call or two between the spells of a function
//! whose spells reach many calls at once, outside its window, is a stray: it
//! leaves the clock alone, and when the due spell comes while its calls are
//! still in flight, the spell begins with its own first call in the window.
//! The clock tells strays so even while no container needs bringing back.
//!
//! **Forecast.** A function busy enough that a call within a start of a
//! quiet engine ([`FIRST_HORIZON`]) is at least as likely as a start's price
//! keeps ready, idle or starting, the containers the calls of its horizon
//! (one container start, as its own starts have taken lately from their
//! start turn on) need: arrivals less returns, each counted at its rate over
//! the last [`RATE_EVENTS`] (but when the last returns spread over longer
//! than a call stays, as when calls rise after a lull, the calls in flight
//! come back at one per stay each: the stay by Little's law, over the last
//! [`STAY_MEMORY`]), plus
//! [`FORECAST_DEVIATIONS`] standard deviations of the two as Poisson counts,
//! both over the time a call stays (the horizon at most: shorter calls come
//! back within it). The horizon is one start because it reckons again at
//! every arrival and return: a call further ahead can have its container
//! started at a later reckoning, still in time, or by then not need it. The
//! margin is where the chance that the last container it adds serves a call
//! falls to the price of its start. So when calls come faster than containers
//! come back, starts run ahead of them instead of behind; and the containers
//! it wants are not let go within the horizon after it last reckoned. A
//! container let go at a level the forecast wants again cost a start, not a
//! cold start, and the keep-alive learns so: with the forecast covering rises,
//! surplus containers go sooner, but not when they would be started again
//! soon. The waits for memory and for a start turn are left out of the
//! horizon: they are every function's, and a forecast that covered them would
//! ask for more starts, which make them longer still (on the trace, under a
//! start capacity like this machine's engine's, starts then waited four times
//! as long). For the same reason which functions it acts for does not follow
//! the measured starts: a loaded engine's slow starts would bring in more
//! functions, whose starts would load it further.
//!
//! **Learned.** What it hands on ([`AdaptiveLearned`]): the spells and the
//! timeouts they chose (with what each miss cost), the weight of the next one,
//! its last busy spells (when they began, their peaks and spans) and how long
//! the function has been idle. The rates of the last calls, how long calls
//! stay, the last removed containers, the horizon, the price of a start and
//! the clockwork's lead are not: they are about the last seconds or minutes
//! (the horizon and the price are measured again at the next start, the lead
//! at the next clockwork prewarm, which begins [`PREWARM_LEAD`] ahead until
//! then).

use std::collections::VecDeque;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{CENTURY, Found, KeepAlivePolicy, Learned, after, aged};

/// The idle timeout before anything is learned, if the break-even time is longer.
const PRIOR_TIMEOUT: Duration = Duration::from_secs(600);
/// The shortest and longest idle timeouts chosen.
const MIN_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_TIMEOUT: Duration = Duration::from_secs(4 * 3600);
/// The lower edge of the first bin; each bin is √2 times wider than the last.
const FIRST_EDGE_S: f64 = 0.25;
const BINS: usize = 40;
/// Observations before the learned timeout replaces the break-even one.
const MIN_OBSERVATIONS: f64 = 10.0;
/// How fast old observations fade: each new idle spell weighs this much more
/// than the one before (half-life about 7000 spells).
const GROWTH: f64 = 1.0001;
/// Levels whose last removed container is remembered for a later call to match.
const REMOVED_REMEMBERED: usize = 4096;
/// Classes of levels with spells of their own; the last holds every level above.
const LEVEL_CLASSES: usize = 24;
/// Periods between busy spells that must be nearly equal before the policy
/// prewarms, how equal (within this factor of their median), and the
/// shortest idle gap worth it.
const REGULAR_PERIODS: usize = 8;
const REGULAR_SPREAD: f64 = 1.1;
const MIN_PREWARM_GAP: Duration = Duration::from_secs(4);
/// Periods among them that may be off, and the rest still regular.
const IRREGULAR_PERIODS: usize = 2;
/// How long before a due spell a clockwork prewarm starts, at least, and
/// until one has been timed (then as long as its starts took: the policy's
/// `lead`).
const PREWARM_LEAD: Duration = Duration::from_secs(1);
/// The demand forecast: the horizon it covers before the function's first
/// start is measured (one container start: 230 ms p50 through Docker here, the
/// replay's 250 ms), the shortest and longest it follows the measured starts
/// to, and how much of the horizon each start's time makes up (an average
/// over the last few starts); the arrivals and returns its rates are measured
/// over, the fewest arrivals within [`FIRST_HORIZON`] for it to act (where
/// the chance of at least one, as a Poisson count, is a start's price:
/// -ln(1 - [`START_COST`])), and how many standard deviations above the
/// expected deficit it provides for (see [`START_COST`]).
const FIRST_HORIZON: Duration = Duration::from_millis(250);
const SHORTEST_HORIZON: Duration = Duration::from_millis(50);
const LONGEST_HORIZON: Duration = Duration::from_secs(10);
const HORIZON_WEIGHT: f64 = 0.25;
const RATE_EVENTS: usize = 16;
const FORECAST_MIN_ARRIVALS: f64 = 0.357;
const FORECAST_DEVIATIONS: f64 = 0.52;
/// How long the time calls spent in flight, and the calls that came back, are
/// remembered for a call's stay (each fades to 1/e over this).
const STAY_MEMORY: Duration = Duration::from_secs(300);
/// What one container start costs, in cold starts. A cold start is a call
/// waiting for a start (250 ms here) and the start itself, which costs the
/// engine CPU time (105 ms of dockerd and containerd, measured here: see
/// `crate::replay::ENGINE_START_COST`); a second of either weighed alike, the
/// start is 105 / 355 of the cold start. A prewarm pays it whether or not a
/// call comes, so it is worth starting only when the chance that it serves a
/// call that would otherwise start cold is above it; [`FORECAST_DEVIATIONS`]
/// is where a normal count exceeds its mean with that chance (P(Z > 0.52) =
/// 0.30).
const START_COST: f64 = 0.3;
/// How much each start's wait for its turn makes up of a function's price of
/// a start (an average over about the last ten starts).
const START_WAIT_WEIGHT: f64 = 0.1;
/// The weight past which every weight is scaled down, before they overflow.
const RESCALE_ABOVE: f64 = 1e200;

/// The idle spells seen at some levels: lengths of those that ended in reuse,
/// by bin, what letting them go before that would have cost (in cold starts),
/// and the count of all, each weighted by the policy's `weight` at the time it
/// was added (so older ones fade), and the timeout they call for (`None` while
/// they are too few).
#[derive(Debug, Clone)]
struct Spells {
    reused: [f64; BINS],
    missed: [f64; BINS],
    all: f64,
    timeout: Option<Duration>,
}

impl Spells {
    const NONE: Spells = Spells {
        reused: [0.0; BINS],
        missed: [0.0; BINS],
        all: 0.0,
        timeout: None,
    };
}

#[derive(Debug)]
pub(crate) struct Adaptive {
    /// What a second of one container idle costs, in cold starts.
    price_per_second: f64,
    /// The timeout before anything is learned.
    prior: Duration,
    /// Spells at every level, and by class of level.
    pooled: Spells,
    by_level: Vec<Spells>,
    /// The weight of the next observation.
    weight: f64,
    /// When the idle spell of the container last removed at each level began.
    removed: Vec<Option<Instant>>,
    /// The function's calls in flight, and when it last became idle.
    running: usize,
    idle_since: Option<Instant>,
    /// Its busy spell under way, and its last ones ([`REGULAR_PERIODS`]
    /// periods' worth, the oldest first).
    busy: Option<Busy>,
    busy_spells: VecDeque<Busy>,
    /// Its clock, with its clockwork prewarm, set as it last became idle.
    clock: Option<Clock>,
    /// When its last calls arrived and returned, and how long they stay.
    arrivals: Recent,
    returns: Recent,
    stay: Stay,
    /// At the last arrival or return: when, and the highest level the
    /// forecast wanted up (the calls in flight and the deficit above them).
    forecast: Option<(Instant, usize)>,
    /// How far ahead the forecast looks: what a start has taken lately.
    horizon: Duration,
    /// What a start costs lately, in cold starts: [`START_COST`] plus the
    /// wait it makes the starts queued behind it have (about its own wait for
    /// a turn).
    start_cost: f64,
    /// How long before a due spell its clockwork prewarm starts: as long as
    /// the last one took to start its containers, their waits for a turn
    /// included (the longest start of the busy spell it served), so they are
    /// ready when the spell is due; [`PREWARM_LEAD`] at least.
    lead: Duration,
    /// The longest a start took since the function was last idle, its wait
    /// for a turn included.
    longest_start: Duration,
}

/// A busy spell of the function, from a call that found none in flight until
/// none is: when it began, the most calls it had in flight at once, and the
/// time from its first arrival to its last.
#[derive(Debug, Clone, Copy)]
struct Busy {
    began: Instant,
    peak: usize,
    span: Duration,
}

/// When the next busy spell of a function whose spells begin like clockwork
/// is due: from `start` (the policy's lead before due) to `end`, reaching up
/// to `levels` (see [`Adaptive::next_clock`]). A spell begun before
/// `earliest` is not the due one begun early (the clock allows a tenth of a
/// period either way). It tells strays from spells whether or not the
/// function's containers need bringing back for the spell (`prewarm`).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Clock {
    start: Instant,
    earliest: Instant,
    end: Instant,
    levels: usize,
    prewarm: Option<Prewarm>,
}

impl Clock {
    /// Whether `busy` is a stray: a spell of a call or two, begun outside the
    /// window, of a function whose spells reach many calls at once.
    fn strays(&self, busy: &Busy) -> bool {
        !(self.start..self.end).contains(&busy.began) && busy.peak * 2 < self.levels
    }
}

/// The containers of a function whose busy spells begin like clockwork that
/// are started again at its clock's `start` and kept waiting for the spell's
/// calls until its `end`: levels up to `levels`. `let_go` says it pays to let
/// those go as the function becomes idle and start them again, rather than
/// keep them through the gap.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Prewarm {
    levels: usize,
    let_go: bool,
}

/// The times of the last [`RATE_EVENTS`] events of one kind.
#[derive(Debug, Default)]
struct Recent(VecDeque<Instant>);

impl Recent {
    fn push(&mut self, at: Instant) {
        if self.0.len() == RATE_EVENTS {
            self.0.pop_front();
        }
        self.0.push_back(at);
    }

    /// The time since the oldest event kept; `None` before the first.
    fn span(&self, now: Instant) -> Option<Duration> {
        Some(now.saturating_duration_since(*self.0.front()?))
    }

    /// Events per second at `now`: the last ones over the time since the
    /// oldest; 0 until there are enough, or if they all came at once (which
    /// says nothing of a rate).
    fn rate(&self, now: Instant) -> f64 {
        match self.0.front() {
            Some(oldest) if self.0.len() == RATE_EVENTS => {
                let span = now.saturating_duration_since(*oldest).as_secs_f64();
                if span > 0.0 {
                    RATE_EVENTS as f64 / span
                } else {
                    0.0
                }
            }
            _ => 0.0,
        }
    }
}

/// How long a call of the function stays, by Little's law: the time calls
/// spent in flight over the calls that came back, both fading over
/// [`STAY_MEMORY`]. Over the calls that came back, not those that arrived:
/// a burst of long calls none of which is back yet reads as long calls, not
/// as short ones.
#[derive(Debug, Default)]
struct Stay {
    in_flight_s: f64,
    returned: f64,
    noted: Option<Instant>,
}

impl Stay {
    /// A call arrived or returned at `now`, `running` calls in flight before.
    fn note(&mut self, now: Instant, running: usize, returned: bool) {
        if let Some(noted) = self.noted {
            let elapsed = now.saturating_duration_since(noted).as_secs_f64();
            let fade = (-elapsed / STAY_MEMORY.as_secs_f64()).exp();
            self.in_flight_s = self.in_flight_s * fade + running as f64 * elapsed;
            self.returned *= fade;
        }
        if returned {
            self.returned += 1.0;
        }
        self.noted = Some(now);
    }

    /// Seconds a call stays; `None` before one came back.
    fn seconds(&self) -> Option<f64> {
        (self.returned > 0.0 && self.in_flight_s > 0.0).then(|| self.in_flight_s / self.returned)
    }
}

impl Adaptive {
    /// The policy of a function whose containers have `memory` bytes, where a
    /// cold start is worth `cold_start_gb_s` of idle memory.
    pub(crate) fn new(memory: u64, cold_start_gb_s: f64) -> Adaptive {
        let gigabytes = memory as f64 / f64::from(1 << 30);
        let price_per_second = gigabytes / cold_start_gb_s;
        Adaptive {
            price_per_second,
            prior: break_even(price_per_second).min(PRIOR_TIMEOUT),
            pooled: Spells::NONE,
            by_level: Vec::new(),
            weight: 1.0,
            removed: Vec::new(),
            running: 0,
            idle_since: None,
            busy: None,
            busy_spells: VecDeque::new(),
            clock: None,
            arrivals: Recent::default(),
            returns: Recent::default(),
            stay: Stay::default(),
            forecast: None,
            horizon: FIRST_HORIZON,
            start_cost: START_COST,
            lead: PREWARM_LEAD,
            longest_start: Duration::ZERO,
        }
    }

    /// Containers, idle or starting, that the calls expected over the next
    /// horizon need at `now`: arrivals less returns, with a margin
    /// for chance (both counted as Poisson at their recent rates); none while
    /// fewer than [`FORECAST_MIN_ARRIVALS`] calls are expected within a start
    /// of a quiet engine.
    fn forecast_deficit(&self, now: Instant) -> usize {
        let horizon = self.horizon.as_secs_f64();
        let (arrival_rate, return_rate) = (self.arrivals.rate(now), self.return_rate(now));
        if arrival_rate * FIRST_HORIZON.as_secs_f64() < FORECAST_MIN_ARRIVALS {
            return 0;
        }
        // Arrivals outrun returns, and chance moves them, only over the time a
        // call stays (by Little's law, the calls in flight over the arrival
        // rate), the horizon at most: calls far shorter than the horizon come
        // back within it, so a thousand one-millisecond calls a second need a
        // few spare containers, not the dozens their counts over a whole
        // horizon would differ and vary by.
        let stay = (self.running.max(1) as f64 / arrival_rate).min(horizon);
        let chance = ((arrival_rate + return_rate) * stay).sqrt();
        let deficit = (arrival_rate - return_rate) * stay + FORECAST_DEVIATIONS * chance;
        // Rounded up: a container past where the margin's rule, read for
        // whole containers, stops (rounding to the nearest). On the trace's
        // samples (3 start slots) rounding to the nearest cost 0.3-2.9% more
        // by the policy's own prices on 12 of 14 samples and seeds, and 0.3%
        // less on the other two; most likely because rates measured over past
        // calls lag a rise, which the extra container covers.
        deficit.max(0.0).ceil() as usize
    }

    /// Returns per second at `now`: their rate over the last [`RATE_EVENTS`],
    /// unless those spread over longer than a call stays, as when calls rise
    /// after a lull. The calls in flight then come back sooner than that
    /// rate says: each about a stay after it arrived, so at least one per
    /// stay each.
    fn return_rate(&self, now: Instant) -> f64 {
        let measured = self.returns.rate(now);
        match (self.stay.seconds(), self.returns.span(now)) {
            (Some(stay), Some(span)) if span.as_secs_f64() > stay => {
                measured.max(self.running as f64 / stay)
            }
            _ => measured,
        }
    }

    /// The timeout of an idle container at `level`.
    fn timeout(&self, level: usize) -> Duration {
        self.by_level
            .get(class_of(level))
            .and_then(|spells| spells.timeout)
            .or(self.pooled.timeout)
            .unwrap_or(self.prior)
    }

    /// An idle spell at `level` that ended in reuse after `spell`; letting
    /// the container go before would have cost `cost` cold starts.
    fn observe(&mut self, level: usize, spell: Duration, cost: f64) {
        let bin = bin_of(spell);
        let (weight, price) = (self.weight, self.price_per_second);
        let add = |spells: &mut Spells| {
            spells.reused[bin] += weight;
            spells.missed[bin] += weight * cost;
            spells.timeout = choose_timeout(spells, weight, price);
        };
        add(self.class_mut(level));
        add(&mut self.pooled);
    }

    /// The forecast wants containers up to `wanted`: a container let go at a
    /// level up to there is started again (or a call finds none), so its
    /// removal cost a start.
    fn wanted_again(&mut self, now: Instant, wanted: usize) {
        for level in self.running + 1..=wanted.min(self.removed.len().saturating_sub(1)) {
            if let Some(began) = self.removed[level].take() {
                self.observe(level, now.saturating_duration_since(began), self.start_cost);
            }
        }
    }

    /// Sets the forecast at `now`, with `running` calls in flight.
    fn reckon(&mut self, now: Instant) {
        let wanted = self.running + self.forecast_deficit(now);
        self.forecast = Some((now, wanted));
        self.wanted_again(now, wanted);
    }

    fn class_mut(&mut self, level: usize) -> &mut Spells {
        let class = class_of(level);
        if self.by_level.len() <= class {
            self.by_level.resize(class + 1, Spells::NONE);
        }
        &mut self.by_level[class]
    }

    /// The busy spell under way ended at `now`. A stray one (a call or two
    /// between the spells of a function whose spells reach many calls at
    /// once, outside its window) changes nothing; any other is its latest
    /// spell, and sets the next clock.
    fn busy_ended(&mut self, now: Instant) {
        let Some(busy) = self.busy.take() else { return };
        let stray = self.clock.is_some_and(|clock| clock.strays(&busy));
        if stray {
            return;
        }
        if self.busy_spells.len() > REGULAR_PERIODS {
            self.busy_spells.pop_front();
        }
        self.busy_spells.push_back(busy);
        if self.clock.is_some_and(|clock| clock.prewarm.is_some()) {
            self.lead = self.longest_start.max(PREWARM_LEAD);
        }
        self.longest_start = Duration::ZERO;
        self.clock = self.next_clock(now);
    }

    /// When the next busy spell is due, and the period: the median time
    /// between the last ones' beginnings, each of which says when it is due
    /// whole periods later (the median of what they say). `None` unless all
    /// but [`IRREGULAR_PERIODS`] periods are within [`REGULAR_SPREAD`] of it.
    fn next_due(beginnings: [Instant; REGULAR_PERIODS + 1]) -> Option<(Instant, Duration)> {
        let mut periods = [Duration::ZERO; REGULAR_PERIODS];
        for (period, pair) in periods.iter_mut().zip(beginnings.windows(2)) {
            *period = pair[1].saturating_duration_since(pair[0]);
        }
        periods.sort_unstable();
        let period = periods[REGULAR_PERIODS / 2];
        let alike = periods
            .iter()
            .filter(|p| p.as_secs_f64() <= period.as_secs_f64() * REGULAR_SPREAD)
            .filter(|p| p.as_secs_f64() * REGULAR_SPREAD >= period.as_secs_f64())
            .count();
        if alike + IRREGULAR_PERIODS < REGULAR_PERIODS {
            return None;
        }
        let mut said = beginnings;
        for (periods_on, began) in (1..=said.len()).rev().zip(&mut said) {
            *began = after(*began, period * periods_on as u32);
        }
        said.sort_unstable();
        Some((said[said.len() / 2], period))
    }

    /// The clock after the function became idle at `since`, `None` unless
    /// its busy spells begin like clockwork ([`Self::next_due`]) and the next
    /// is due far enough ahead; its clockwork prewarm is `None` unless some
    /// container the next spell needs would be gone by then, let go by its
    /// timeout or by the price ([`Prewarm::let_go`]).
    fn next_clock(&self, since: Instant) -> Option<Clock> {
        // Worked out as the function becomes idle, after every call of a lone
        // caller: on the stack.
        let mut beginnings = [self.busy_spells.front()?.began; REGULAR_PERIODS + 1];
        if self.busy_spells.len() != beginnings.len() {
            return None;
        }
        for (slot, busy) in beginnings.iter_mut().zip(&self.busy_spells) {
            *slot = busy.began;
        }
        let (due, period) = Self::next_due(beginnings)?;
        let gap = due.saturating_duration_since(since);
        if gap < MIN_PREWARM_GAP {
            return None;
        }
        // Levels are brought back up to the highest that more than a start's
        // price of the last spells reached (so each one brought back serves a
        // call with at least that chance).
        let (mut peaks, mut spans) = ([0; REGULAR_PERIODS], [Duration::ZERO; REGULAR_PERIODS]);
        let last = self.busy_spells.iter().skip(1);
        for ((peak, span), busy) in peaks.iter_mut().zip(&mut spans).zip(last) {
            (*peak, *span) = (busy.peak, busy.span);
        }
        peaks.sort_unstable_by(|a, b| b.cmp(a));
        let levels = peaks[(START_COST * REGULAR_PERIODS as f64) as usize].max(1);
        spans.sort_unstable();
        let (span, longest_span) = (spans[REGULAR_PERIODS / 2], spans[REGULAR_PERIODS - 1]);
        // A container kept through the gap costs its memory all along; one
        // let go and started again costs a start, and its memory from the
        // prewarm until its call: the lead and half a spell's span, on
        // average. The start is priced without the waits for a turn: begun a
        // lead ahead, the prewarm's starts queue among themselves, delaying
        // no call, and the time they wait is paid as the lead's memory.
        let kept = self.price_per_second * gap.as_secs_f64();
        let restarted = START_COST + self.price_per_second * (self.lead + span / 2).as_secs_f64();
        let let_go = kept > restarted;
        // Else up to the highest level whose timeout lets it go before due.
        let brought_back = if let_go {
            Some(levels)
        } else {
            (1..=levels)
                .rev()
                .find(|level| self.timeout(*level) + self.lead < gap)
        };
        let allowed = period.mul_f64(REGULAR_SPREAD - 1.0);
        Some(Clock {
            start: due.checked_sub(self.lead).unwrap_or(due).max(since),
            earliest: due.checked_sub(allowed).unwrap_or(due),
            end: after(due, allowed + longest_span),
            levels,
            prewarm: brought_back.map(|levels| Prewarm { levels, let_go }),
        })
    }
}

impl KeepAlivePolicy for Adaptive {
    fn call_arrived(&mut self, now: Instant, found: Found, level: usize) {
        let removed = self.removed.get_mut(level).and_then(Option::take);
        let (began, cost) = match found {
            Found::Idle(since) => (Some(since), 1.0),
            // The container removed at this level was started again.
            Found::Prewarmed => (removed, self.start_cost),
            Found::Nothing => (removed, 1.0),
        };
        if let Some(began) = began {
            self.observe(level, now.saturating_duration_since(began), cost);
        }
        self.arrivals.push(now);
        self.stay.note(now, self.running, false);
        // The due spell's first call in its window begins it, even while the
        // calls of a stray from well before are still in flight: the stray
        // does not move the clock.
        let due_spell_begins = self.busy.is_some_and(|busy| {
            self.clock.is_some_and(|clock| {
                busy.began < clock.earliest
                    && clock.strays(&busy)
                    && (clock.start..clock.end).contains(&now)
            })
        });
        if level == 1 || due_spell_begins {
            self.busy = Some(Busy {
                began: now,
                peak: 0,
                span: Duration::ZERO,
            });
        }
        if let Some(busy) = &mut self.busy {
            busy.peak = busy.peak.max(level);
            busy.span = now.saturating_duration_since(busy.began);
        }
        self.running = level;
        self.reckon(now);
    }

    fn call_returned(&mut self, now: Instant, in_flight: usize) {
        self.returns.push(now);
        self.stay.note(now, self.running, true);
        self.running = in_flight;
        self.reckon(now);
        if in_flight == 0 {
            self.idle_since = Some(now);
            self.busy_ended(now);
        }
        self.weight *= GROWTH;
        let weight = self.weight;
        self.class_mut(in_flight + 1).all += weight;
        self.pooled.all += weight;
        if self.weight > RESCALE_ABOVE {
            self.rescale();
        }
    }

    fn idle_removed(&mut self, idle_since: Instant, level: usize) {
        if level < REMOVED_REMEMBERED {
            if self.removed.len() <= level {
                self.removed.resize(level + 1, None);
            }
            self.removed[level] = Some(idle_since);
        }
    }

    fn idle_until(&self, idle_since: Instant, level: usize) -> Instant {
        match self.clock {
            // A prewarmed one, or one back from a call of the spell, waits
            // for the spell's calls through the window, and by its timeout
            // after it: the spell may outlast the window, and the next clock
            // keep it through the gap.
            Some(Clock {
                start,
                end,
                prewarm: Some(_),
                ..
            }) if (start..end).contains(&idle_since) => {
                end.max(after(idle_since, self.timeout(level)))
            }
            // Brought back when due, so it goes as the function is idle.
            Some(Clock {
                start,
                prewarm: Some(prewarm),
                ..
            }) if prewarm.let_go
                && self.running == 0
                && level <= prewarm.levels
                && idle_since < start =>
            {
                idle_since
            }
            _ => {
                let timeout = after(idle_since, self.timeout(level));
                match self.forecast {
                    // Wanted up: kept through the horizon after the forecast.
                    Some((at, wanted)) if level <= wanted => timeout.max(after(at, self.horizon)),
                    _ => timeout,
                }
            }
        }
    }

    fn prewarm(&self, now: Instant) -> usize {
        let clockwork = match self.clock {
            Some(Clock {
                start,
                end,
                prewarm: Some(prewarm),
                ..
            }) if (start..end).contains(&now) => prewarm.levels,
            _ => 0,
        };
        clockwork.max(self.running + self.forecast_deficit(now))
    }

    fn start_took(&mut self, took: Duration, waited: Duration) {
        self.longest_start = self.longest_start.max(took + waited);
        let took = took.clamp(SHORTEST_HORIZON, LONGEST_HORIZON);
        let blended = self.horizon.as_secs_f64() * (1.0 - HORIZON_WEIGHT)
            + took.as_secs_f64() * HORIZON_WEIGHT;
        self.horizon = Duration::from_secs_f64(blended);
        // The starts queued behind this one wait about as long for it as it
        // waited for those ahead; a wait in starts' times is a cold start's
        // wait each.
        let price = START_COST + waited.as_secs_f64() / self.horizon.as_secs_f64();
        self.start_cost = self.start_cost * (1.0 - START_WAIT_WEIGHT) + price * START_WAIT_WEIGHT;
    }

    fn next_change(&self, now: Instant) -> Option<Instant> {
        let clock = self.clock.filter(|clock| clock.prewarm.is_some())?;
        [clock.start, clock.end].into_iter().find(|at| *at > now)
    }

    fn learned(&self, now: Instant) -> Option<Learned> {
        Some(Learned::Adaptive(AdaptiveLearned {
            pooled: LearnedSpells::from(&self.pooled),
            by_level: self.by_level.iter().map(LearnedSpells::from).collect(),
            weight: self.weight,
            busy_spells: self
                .busy_spells
                .iter()
                .map(|busy| {
                    (
                        now.saturating_duration_since(busy.began),
                        busy.peak,
                        busy.span,
                    )
                })
                .collect(),
            idle_for: self
                .idle_since
                .filter(|_| self.running == 0)
                .map(|since| now.saturating_duration_since(since)),
        }))
    }

    fn restore(&mut self, learned: Learned, now: Instant) -> Result<(), String> {
        let Learned::Adaptive(learned) = learned else {
            return Err("learned by another policy".into());
        };
        if !(1.0..=RESCALE_ABOVE).contains(&learned.weight) {
            return Err(format!("weight {} out of range", learned.weight));
        }
        if learned.by_level.len() > LEVEL_CLASSES || learned.busy_spells.len() > REGULAR_PERIODS + 1
        {
            return Err("more classes or busy spells than it keeps".into());
        }
        if (learned.busy_spells.iter()).any(|(age, _, span)| *age > CENTURY || *span > CENTURY) {
            return Err("a busy spell over a century".into());
        }

        let pooled = learned.pooled.spells()?;
        let by_level = learned
            .by_level
            .iter()
            .map(LearnedSpells::spells)
            .collect::<Result<_, _>>()?;
        self.pooled = pooled;
        self.by_level = by_level;
        self.weight = learned.weight;
        self.busy_spells = (learned.busy_spells.iter())
            .filter_map(|&(age, peak, span)| {
                let began = aged(now, Some(age))?;
                Some(Busy { began, peak, span })
            })
            .collect();
        self.busy = None;
        self.running = 0;
        self.idle_since = aged(now, learned.idle_for);
        self.clock = self.idle_since.and_then(|since| self.next_clock(since));
        Ok(())
    }
}

/// What an [`Adaptive`] learned (see the module's doc), its times as ages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct AdaptiveLearned {
    pooled: LearnedSpells,
    by_level: Vec<LearnedSpells>,
    weight: f64,
    /// Its last busy spells: how long ago each began, its peak and its span.
    /// Absent from what a policy that timed idle gaps instead handed on: its
    /// clockwork is learned afresh.
    #[serde(default)]
    busy_spells: Vec<(Duration, usize, Duration)>,
    /// How long no call had run; `None` if one ran.
    idle_for: Option<Duration>,
}

/// [`Spells`] as they are handed on. `missed` is absent from what a policy
/// before starts were charged handed on: every miss was a cold start then.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LearnedSpells {
    reused: Vec<f64>,
    #[serde(default)]
    missed: Vec<f64>,
    all: f64,
    timeout: Option<Duration>,
}

impl From<&Spells> for LearnedSpells {
    fn from(spells: &Spells) -> LearnedSpells {
        LearnedSpells {
            reused: spells.reused.to_vec(),
            missed: spells.missed.to_vec(),
            all: spells.all,
            timeout: spells.timeout,
        }
    }
}

impl LearnedSpells {
    /// The spells, if they are spells a policy could hold.
    fn spells(&self) -> Result<Spells, String> {
        let reused: [f64; BINS] = self
            .reused
            .as_slice()
            .try_into()
            .map_err(|_| format!("{} bins, not {BINS}", self.reused.len()))?;
        let missed: [f64; BINS] = if self.missed.is_empty() {
            reused
        } else {
            self.missed
                .as_slice()
                .try_into()
                .map_err(|_| format!("{} bins missed, not {BINS}", self.missed.len()))?
        };
        let count = |c: &f64| c.is_finite() && *c >= 0.0;
        if !reused.iter().chain(&missed).chain([&self.all]).all(count) {
            return Err("a count that is not a finite weight".into());
        }
        if self
            .timeout
            .is_some_and(|timeout| !(MIN_TIMEOUT..=MAX_TIMEOUT).contains(&timeout))
        {
            return Err("a timeout out of range".into());
        }
        Ok(Spells {
            reused,
            missed,
            all: self.all,
            timeout: self.timeout,
        })
    }
}

impl Adaptive {
    /// Scales every weight down, keeping their ratios, before they overflow.
    fn rescale(&mut self) {
        let scale = 1.0 / self.weight;
        for spells in self.by_level.iter_mut().chain([&mut self.pooled]) {
            spells.reused.iter_mut().for_each(|count| *count *= scale);
            spells.missed.iter_mut().for_each(|cost| *cost *= scale);
            spells.all *= scale;
        }

        self.weight = 1.0;
    }
}

/// The bin edge that minimises the expected cost of an idle spell among
/// `spells`, or `None` while they are too few (`weight` is what one new
/// observation weighs).
fn choose_timeout(spells: &Spells, weight: f64, price_per_second: f64) -> Option<Duration> {
    let observed: f64 = spells.reused.iter().sum();
    if observed < MIN_OBSERVATIONS * weight {
        return None;
    }
    let never = (spells.all - observed).max(0.0);
    let mut below_time = 0.0; // sum of spell lengths below the candidate edge
    let mut above = observed; // observed spells at or above it
    let mut missed: f64 = spells.missed.iter().sum(); // what letting those go costs
    let mut best = (f64::INFINITY, MIN_TIMEOUT);
    for bin in 0..=BINS {
        let edge = edge_s(bin);
        let idle = below_time + edge * (above + never);
        let cost = price_per_second * idle + missed;
        if cost < best.0 {
            best = (cost, Duration::from_secs_f64(edge));
        }
        if bin < BINS {
            below_time += spells.reused[bin] * middle_s(bin);
            above -= spells.reused[bin];
            missed -= spells.missed[bin];
        }
    }
    Some(best.1.clamp(MIN_TIMEOUT, MAX_TIMEOUT))
}

/// Levels are grouped in classes √2 times wider each: 1, 2, 3, 4-5, 6-7, 8-11...
fn class_of(level: usize) -> usize {
    let level = level.max(1) as f64;
    ((2.0 * level.log2()).floor() as usize).min(LEVEL_CLASSES - 1)
}

/// The rent-or-buy timeout: idle this long costs one cold start.
fn break_even(price_per_second: f64) -> Duration {
    if price_per_second <= 0.0 {
        return MAX_TIMEOUT;
    }
    Duration::from_secs_f64((1.0 / price_per_second).min(MAX_TIMEOUT.as_secs_f64()))
        .clamp(MIN_TIMEOUT, MAX_TIMEOUT)
}

/// The lower edge of `bin`, in seconds; `edge_s(0)` is 0.
fn edge_s(bin: usize) -> f64 {
    EDGES_S[bin]
}

/// The bins' lower edges and the last one's upper edge, worked out once: the
/// timeout is chosen again at every reuse, and a power for each of them took
/// a quarter of a hot call's time on `adaptive`.
static EDGES_S: LazyLock<[f64; BINS + 1]> = LazyLock::new(|| {
    std::array::from_fn(|bin| match bin {
        0 => 0.0,
        _ => FIRST_EDGE_S * 2f64.powf((bin - 1) as f64 / 2.0),
    })
});

/// A length inside `bin` that stands for it.
fn middle_s(bin: usize) -> f64 {
    (edge_s(bin) + edge_s(bin + 1)) / 2.0
}

fn bin_of(spell: Duration) -> usize {
    let seconds = spell.as_secs_f64();
    if seconds < FIRST_EDGE_S {
        return 0;
    }
    let bin = 1 + (2.0 * (seconds / FIRST_EDGE_S).log2()).floor() as usize;
    bin.min(BINS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn before_it_has_seen_enough_the_timeout_is_the_break_even_time() {
        let small = Adaptive::new(256 * MIB, 3000.0);
        assert_eq!(small.timeout(1), PRIOR_TIMEOUT, "at most the prior");
        let large = Adaptive::new(10 * 1024 * MIB, 3000.0);
        assert_eq!(
            large.timeout(1),
            Duration::from_secs(300),
            "larger costs more"
        );
    }

    #[test]
    fn bins_hold_their_edges() {
        for bin in 1..BINS - 1 {
            let inside = Duration::from_secs_f64(edge_s(bin) * 1.01);
            assert_eq!(bin_of(inside), bin);
            assert!(middle_s(bin) > edge_s(bin) && middle_s(bin) < edge_s(bin + 1));
        }
        assert_eq!(bin_of(Duration::ZERO), 0);
        assert_eq!(bin_of(Duration::from_secs(365 * 86400)), BINS - 1);
    }

    #[test]
    fn level_classes_grow_and_end_in_one_for_the_rest() {
        let classes: Vec<usize> = [1, 2, 3, 4, 5, 6, 8, 11, 12].map(class_of).to_vec();
        assert_eq!(classes, [0, 2, 3, 4, 4, 5, 6, 6, 7]);
        assert_eq!(class_of(usize::MAX), LEVEL_CLASSES - 1);
    }

    /// Idle spells at `level` that all end in reuse after `spell`, `count`
    /// times; returns when the last ended.
    fn reused_after(
        policy: &mut Adaptive,
        start: Instant,
        level: usize,
        spell: Duration,
        count: u32,
    ) -> Instant {
        let mut now = start;
        for _ in 0..count {
            policy.call_returned(now, level - 1);
            let began = now;
            now += spell;
            policy.call_arrived(now, Found::Idle(began), level);
        }
        now
    }

    #[test]
    fn spells_that_end_in_reuse_are_kept_a_little_past_their_length() {
        let mut policy = Adaptive::new(256 * MIB, 3000.0);
        reused_after(&mut policy, Instant::now(), 1, Duration::from_secs(30), 50);
        let timeout = policy.timeout(1);
        assert!(
            timeout > Duration::from_secs(30) && timeout < Duration::from_secs(60),
            "{timeout:?}"
        );
    }

    #[test]
    fn spells_that_never_end_in_reuse_are_cut_short() {
        let mut policy = Adaptive::new(256 * MIB, 3000.0);
        let start = Instant::now();
        // A few quick reuses, then many spells that nobody reuses.
        reused_after(&mut policy, start, 1, Duration::from_secs(2), 20);
        for _ in 0..200 {
            policy.call_returned(start, 0);
        }
        assert!(
            policy.timeout(1) <= Duration::from_secs(4),
            "{:?}",
            policy.timeout(1)
        );
    }

    #[test]
    fn each_class_of_levels_learns_its_own_timeout() {
        let mut policy = Adaptive::new(256 * MIB, 3000.0);
        let start = Instant::now();
        // The first container is reused after a minute, every time; the
        // sixth, brought out by rare bursts, mostly never again.
        let now = reused_after(&mut policy, start, 1, Duration::from_secs(60), 50);
        for _ in 0..200 {
            policy.call_returned(now, 5);
        }
        reused_after(
            &mut policy,
            now,
            6,
            Duration::from_secs(7200),
            2 * MIN_OBSERVATIONS as u32,
        );
        assert!(policy.timeout(1) > Duration::from_secs(60));
        assert_eq!(
            policy.timeout(6),
            MIN_TIMEOUT,
            "rarely reused: goes at once"
        );
        assert_eq!(
            policy.timeout(3),
            policy.pooled.timeout.expect("learned"),
            "a class with nothing seen follows all levels"
        );
    }

    #[test]
    fn a_call_after_a_removal_counts_as_a_reuse_of_the_removed_container() {
        let mut policy = Adaptive::new(256 * MIB, 3000.0);
        let start = Instant::now();
        for round in 0..50u32 {
            let began = start + Duration::from_secs(u64::from(round) * 1000);
            policy.call_returned(began, 0);
            policy.idle_removed(began, 1);
            policy.call_arrived(began + Duration::from_secs(300), Found::Nothing, 1);
        }
        assert!(
            policy.timeout(1) >= Duration::from_secs(300),
            "worth keeping five minutes at this price: {:?}",
            policy.timeout(1)
        );
    }

    /// Calls of 100 ms, 10 s apart, enough to be clockwork; returns when the
    /// last ended, and the gap.
    fn clockwork_calls(policy: &mut Adaptive) -> (Instant, Duration) {
        let mut now = Instant::now();
        let gap = Duration::from_secs(10);
        for _ in 0..=REGULAR_PERIODS {
            policy.call_arrived(now, Found::Nothing, 1);
            now += Duration::from_millis(100);
            policy.call_returned(now, 0);
            now += gap;
        }
        (now - gap, gap)
    }

    #[test]
    fn clockwork_calls_are_prewarmed_once_their_container_was_let_go() {
        // A cold start worth little: the container costs more kept through
        // the gap than let go and started again.
        let mut policy = Adaptive::new(256 * MIB, 0.001);
        let (ended, gap) = clockwork_calls(&mut policy);
        assert_eq!(
            policy.idle_until(ended, 1),
            ended,
            "let go as the function is idle"
        );
        let due = ended + gap;
        let start = due - PREWARM_LEAD;
        assert_eq!(policy.next_change(ended), Some(start));
        assert_eq!(policy.prewarm(start - Duration::from_millis(1)), 0);
        assert_eq!(policy.prewarm(start), 1);
        assert!(
            policy.idle_until(start, 1) > due,
            "the prewarmed one waits for the call"
        );
    }

    /// Busy spells beginning `period` apart from `start` (each `late` by its
    /// offset), of `peak` calls arriving 10 ms apart and running 5 s each;
    /// returns when the last one ended.
    fn bursts(
        policy: &mut Adaptive,
        start: Instant,
        period: Duration,
        spells: &[(usize, Duration)],
    ) -> Instant {
        let mut ended = start;
        for (i, (peak, late)) in spells.iter().enumerate() {
            let began = start + period * i as u32 + *late;
            for level in 1..=*peak {
                policy.call_arrived(
                    began + Duration::from_millis(10) * (level - 1) as u32,
                    Found::Nothing,
                    level,
                );
            }
            let last =
                began + Duration::from_millis(10) * (*peak - 1) as u32 + Duration::from_secs(5);
            for in_flight in (0..*peak).rev() {
                policy.call_returned(last, in_flight);
            }
            ended = last;
        }
        ended
    }

    /// Nine spells of about 20 calls, 5 minutes apart, of 1 GiB containers
    /// whose cold start is worth 100 GB-s: one kept through a gap costs
    /// about 3 cold starts, one let go and started again about a third.
    fn clockwork_bursts() -> (Adaptive, Instant, Instant, Duration) {
        clockwork_bursts_at(100.0)
    }

    /// The same, where a cold start is worth `cold_start_gb_s`.
    fn clockwork_bursts_at(cold_start_gb_s: f64) -> (Adaptive, Instant, Instant, Duration) {
        let mut policy = Adaptive::new(1024 * MIB, cold_start_gb_s);
        let period = Duration::from_secs(300);
        let on_time = Duration::ZERO;
        let peaks = [20, 18, 22, 20, 19, 21, 20, 20, 20].map(|peak| (peak, on_time));
        let start = Instant::now();
        let ended = bursts(&mut policy, start, period, &peaks);
        (policy, start, ended, period)
    }

    #[test]
    fn bursts_that_come_like_clockwork_are_let_go_and_brought_back_whole() {
        let (policy, start, ended, period) = clockwork_bursts();
        let clock = policy.clock.expect("clockwork");
        let prewarm = clock.prewarm.expect("brought back");
        assert!(prewarm.let_go);
        // The last eight peaks were 18-22: the third highest, 20, is reached
        // by 3 in 8, more than a start's price (0.3).
        assert_eq!(prewarm.levels, 20);
        assert_eq!(policy.idle_until(ended, 20), ended, "let go at once");
        assert!(
            policy.idle_until(ended, 21) > ended,
            "above: by its timeout"
        );
        let due = start + period * 9;
        assert_eq!(clock.start, due - PREWARM_LEAD);
        assert_eq!(policy.prewarm(clock.start - Duration::from_millis(1)), 0);
        assert_eq!(policy.prewarm(clock.start), 20, "the whole spell");
        assert!(
            policy.idle_until(clock.start, 20) > due + Duration::from_millis(200),
            "a prewarmed one waits through the spell"
        );
    }

    #[test]
    fn a_stray_call_or_a_late_spell_leaves_the_clockwork_as_it_was() {
        let (mut policy, _, ended, period) = clockwork_bursts();
        let clock = policy.clock.expect("clockwork");
        let stray = ended + Duration::from_secs(60);
        policy.call_arrived(stray, Found::Nothing, 1);
        policy.call_returned(stray + Duration::from_secs(1), 0);
        assert_eq!(policy.clock, Some(clock), "a stray call changes nothing");

        // One spell of nine 40 s late: all the others say when the next is due.
        let mut late = Adaptive::new(1024 * MIB, 100.0);
        let start = Instant::now();
        let mut spells = [(20, Duration::ZERO); 9];
        spells[4].1 = Duration::from_secs(40);
        bursts(&mut late, start, period, &spells);
        let due = start + period * 9;
        assert_eq!(
            late.clock.expect("still clockwork").start,
            due - PREWARM_LEAD
        );
    }

    #[test]
    fn a_stray_is_told_from_a_spell_while_every_container_is_kept_through_the_gap() {
        // Memory all but free: every container is kept through the gap, so
        // nothing is brought back, but the clock still runs.
        let mut policy = Adaptive::new(1024 * MIB, 1e6);
        let period = Duration::from_secs(300);
        let start = Instant::now();
        let ended = bursts(&mut policy, start, period, &[(20, Duration::ZERO); 9]);
        let clock = policy.clock.expect("clockwork");
        assert_eq!(clock.prewarm, None, "nothing to bring back");
        let stray = ended + Duration::from_secs(60);
        policy.call_arrived(stray, Found::Nothing, 1);
        policy.call_returned(stray + Duration::from_secs(1), 0);
        assert_eq!(policy.clock, Some(clock), "a stray call changes nothing");
        let last = policy.busy_spells.back().expect("a spell");
        assert_eq!(last.began, start + period * 8);
    }

    #[test]
    fn a_stray_still_in_flight_as_the_due_spell_comes_does_not_move_the_clock() {
        let (mut policy, start, _, period) = clockwork_bursts();
        let due = start + period * 9;
        // A stray 50 s before the spell, its call still in flight as the
        // spell's first ones come: the spell begins with them.
        let stray = due - Duration::from_secs(50);
        policy.call_arrived(stray, Found::Nothing, 1);
        for level in 2..=21 {
            let at = due + Duration::from_millis(10) * (level - 2) as u32;
            policy.call_arrived(at, Found::Prewarmed, level);
        }
        let ended = due + Duration::from_secs(5);
        for in_flight in (0..21).rev() {
            policy.call_returned(ended, in_flight);
        }
        let last = policy.busy_spells.back().expect("a spell");
        assert_eq!((last.began, last.peak), (due, 21));
        let clock = policy.clock.expect("still clockwork");
        assert!(clock.prewarm.is_some());
        assert_eq!(clock.start, due + period - PREWARM_LEAD);

        // A spell that begins early, within the clock's tenth of a period,
        // begins when it began: its first calls are no stray.
        let due = due + period;
        let early = due - Duration::from_secs(20);
        policy.call_arrived(early, Found::Nothing, 1);
        for level in 2..=21 {
            let at = due + Duration::from_millis(10) * (level - 2) as u32;
            policy.call_arrived(at, Found::Prewarmed, level);
        }
        for in_flight in (0..21).rev() {
            policy.call_returned(due + Duration::from_secs(5), in_flight);
        }
        let last = policy.busy_spells.back().expect("a spell");
        assert_eq!((last.began, last.peak), (early, 21));
    }

    #[test]
    fn containers_are_let_go_through_a_gap_whenever_that_costs_less_than_bringing_them_back() {
        // Spells 300 s apart, idle gaps of about 295 s, of 1 GiB containers.
        // Where a cold start is worth 650 GB-s, one kept through the gap
        // costs 0.45 of a cold start and one brought back 0.30 (a start, and
        // its memory for a second's lead and half a spell); at 1000 GB-s,
        // 0.30 against 0.30 and a little more.
        for (cold_start_gb_s, let_go) in [(650.0, true), (1000.0, false)] {
            let (policy, ..) = clockwork_bursts_at(cold_start_gb_s);
            let clock = policy.clock.expect("clockwork");
            let chosen = clock.prewarm.is_some_and(|prewarm| prewarm.let_go);
            assert_eq!(chosen, let_go, "{cold_start_gb_s} GB-s: {clock:?}");
        }
    }

    #[test]
    fn a_clockwork_prewarm_starts_as_far_ahead_as_its_last_one_took_to_start() {
        let (mut policy, start, _, period) = clockwork_bursts();
        let due = start + period * 9;
        let clock = policy.clock.expect("clockwork");
        assert_eq!(clock.start, due - PREWARM_LEAD, "not yet timed");
        // Its 20 starts queue three at a time: the last waits 1.5 s for its
        // turn, 20 starts' times, which would price a start at several cold
        // starts had it delayed a call.
        for queued in 0..20 {
            let waited = Duration::from_millis(250) * (queued / 3);
            policy.start_took(Duration::from_millis(250), waited);
        }
        for level in 1..=20 {
            let at = due + Duration::from_millis(10) * (level - 1) as u32;
            policy.call_arrived(at, Found::Prewarmed, level);
        }
        for in_flight in (0..20).rev() {
            policy.call_returned(due + Duration::from_secs(5), in_flight);
        }
        let clock = policy.clock.expect("still clockwork");
        assert_eq!(clock.start, due + period - Duration::from_millis(1750));
        let prewarm = clock.prewarm.expect("brought back");
        assert!(
            prewarm.let_go,
            "{clock:?}: let go again, whatever they waited"
        );
    }

    #[test]
    fn a_container_back_from_a_spell_that_outlasts_its_window_is_kept_by_its_timeout() {
        let (mut policy, start, _, period) = clockwork_bursts();
        let due = start + period * 9;
        for level in 1..=20 {
            policy.call_arrived(due, Found::Prewarmed, level);
        }
        // One call returns within the window; the rest run past its end.
        let back = due + Duration::from_secs(10);
        policy.call_returned(back, 19);
        let end = policy.clock.expect("clockwork").end;
        let timeout = policy.timeout(20);
        assert!(back + timeout > end, "{timeout:?}");
        assert_eq!(policy.idle_until(back, 20), back + timeout);
    }

    /// Calls arriving every `gap` from `start`, each running `duration`, until
    /// `until`; returns the calls in flight at the end.
    fn steady_calls(
        policy: &mut Adaptive,
        start: Instant,
        gap: Duration,
        duration: Duration,
        until: Instant,
    ) -> usize {
        calls(policy, every(start, gap, until), duration)
    }

    /// Every `gap` from `start` until `until`.
    fn every(start: Instant, gap: Duration, until: Instant) -> impl Iterator<Item = Instant> {
        std::iter::successors(Some(start), move |at| Some(*at + gap))
            .take_while(move |at| *at < until)
    }

    /// Calls arriving at `arrivals`, each running `duration`; returns the
    /// calls in flight after the last arrived.
    fn calls(
        policy: &mut Adaptive,
        arrivals: impl Iterator<Item = Instant>,
        duration: Duration,
    ) -> usize {
        let mut running: VecDeque<Instant> = VecDeque::new();
        for now in arrivals {
            while running.front().is_some_and(|end| *end <= now) {
                let end = running.pop_front().expect("front");
                policy.call_returned(end, running.len());
            }
            running.push_back(now + duration);
            policy.call_arrived(now, Found::Nothing, running.len());
        }
        running.len()
    }

    #[test]
    fn a_rising_busy_function_gets_starts_ahead_of_its_calls() {
        // A cold start worth little: idle containers go after a second.
        let mut policy = Adaptive::new(256 * MIB, 0.001);
        let start = Instant::now();
        // Ten calls a second that each run a minute: nothing comes back yet.
        let end = start + Duration::from_secs(5);
        let in_flight = steady_calls(
            &mut policy,
            start,
            Duration::from_millis(100),
            Duration::from_secs(60),
            end,
        );
        let now = end - Duration::from_millis(100);
        let ahead = policy.prewarm(now) - in_flight;
        // Two and a half calls due within the horizon, and a margin for chance.
        assert!((3..=5).contains(&ahead), "{ahead} ahead");
        let since = now - Duration::from_secs(10);
        assert_eq!(
            policy.idle_until(since, in_flight + ahead),
            now + FIRST_HORIZON,
            "one it wants is kept through the horizon"
        );
        assert_eq!(
            policy.idle_until(since, in_flight + ahead + 1),
            since + MIN_TIMEOUT,
            "one above goes at its timeout"
        );
    }

    #[test]
    fn the_forecast_looks_as_far_ahead_as_the_functions_starts_take() {
        let mut policy = Adaptive::new(256 * MIB, 0.001);
        let start = Instant::now();
        let rising = |policy: &mut Adaptive, start: Instant| {
            // Ten calls a second that each run a minute: nothing comes back yet.
            let end = start + Duration::from_secs(5);
            let in_flight = steady_calls(
                policy,
                start,
                Duration::from_millis(100),
                Duration::from_secs(60),
                end,
            );
            (in_flight, end - Duration::from_millis(100))
        };
        let (in_flight, now) = rising(&mut policy, start);
        let quick = policy.prewarm(now) - in_flight;
        // Starts now take two seconds, as on a loaded engine.
        for _ in 0..40 {
            policy.start_took(Duration::from_secs(2), Duration::ZERO);
        }
        let later = now + Duration::from_secs(100);
        let (in_flight, now) = rising(&mut policy, later);
        let slow = policy.prewarm(now) - in_flight;
        // About 2.5 calls due within 250 ms, 20 within two seconds.
        assert!((3..=5).contains(&quick), "{quick} ahead");
        assert!((21..=25).contains(&slow), "{slow} ahead");
        let kept = policy.idle_until(now - Duration::from_secs(10), in_flight + slow);
        assert!(
            kept >= now + Duration::from_millis(1990) && kept <= now + Duration::from_secs(2),
            "one it wants is kept through the measured horizon: {:?} after now",
            kept.saturating_duration_since(now)
        );
        // A start far out of range counts as the longest horizon: a quarter
        // of 10 s on three quarters of 2 s.
        policy.start_took(Duration::from_secs(3600), Duration::ZERO);
        let horizon = policy.horizon.as_secs_f64();
        assert!((3.99..=4.0).contains(&horizon), "{horizon} s");
    }

    #[test]
    fn a_steady_busy_function_keeps_only_a_margin_and_a_quiet_one_none() {
        let mut busy = Adaptive::new(256 * MIB, 3000.0);
        let start = Instant::now();
        // Ten calls a second that each run half a second: as many come back.
        let end = start + Duration::from_secs(30);
        let in_flight = steady_calls(
            &mut busy,
            start,
            Duration::from_millis(100),
            Duration::from_millis(500),
            end,
        );
        let ahead = busy.prewarm(end - Duration::from_millis(100)) - in_flight;
        assert!((1..=5).contains(&ahead), "{ahead} ahead");
        let mut quiet = Adaptive::new(256 * MIB, 3000.0);
        steady_calls(
            &mut quiet,
            start,
            Duration::from_secs(2),
            Duration::from_millis(500),
            start + Duration::from_secs(120),
        );
        assert_eq!(quiet.forecast_deficit(start + Duration::from_secs(120)), 0);
    }

    #[test]
    fn a_function_whose_call_within_a_start_is_as_likely_as_its_price_keeps_a_margin() {
        let start = Instant::now();
        let until = start + Duration::from_secs(60);
        let margin = |gap: Duration| {
            let mut policy = Adaptive::new(256 * MIB, 3000.0);
            steady_calls(&mut policy, start, gap, Duration::from_secs(10), until);
            policy.forecast_deficit(until)
        };
        // Two calls a second: a call within 250 ms is 39% likely, above a
        // start's price; one a second, 22%: below it.
        assert_eq!(margin(Duration::from_millis(500)), 1);
        assert_eq!(margin(Duration::from_secs(1)), 0);
    }

    #[test]
    fn a_starts_wait_for_its_turn_is_left_out_of_the_horizon() {
        let mut policy = Adaptive::new(256 * MIB, 3000.0);
        policy.start_took(FIRST_HORIZON, Duration::from_secs(10));
        assert_eq!(policy.horizon, FIRST_HORIZON);
        policy.start_took(FIRST_HORIZON * 5, Duration::ZERO);
        assert_eq!(policy.horizon, FIRST_HORIZON * 2);
    }

    #[test]
    fn slow_starts_lengthen_the_forecast_but_bring_in_no_quieter_function() {
        let start = Instant::now();
        let until = start + Duration::from_secs(60);
        // Starts take two seconds, as on a loaded engine.
        let slow = |gap: Duration| {
            let mut policy = Adaptive::new(256 * MIB, 3000.0);
            for _ in 0..40 {
                policy.start_took(Duration::from_secs(2), Duration::ZERO);
            }
            let in_flight = steady_calls(&mut policy, start, gap, Duration::from_secs(60), until);
            policy.prewarm(until) - in_flight
        };
        // Ten calls a second, none back yet: 20 within two seconds.
        assert!((20..=25).contains(&slow(Duration::from_millis(100))));
        // One a second: two calls within two seconds, but a call within a
        // quiet engine's start is less likely than a start's price.
        assert_eq!(slow(Duration::from_secs(1)), 0);
    }

    /// Calls of `duration` every `gap` for `lull`, then ten a second for
    /// `rising`: the policy, the calls in flight at the end, and the end.
    fn rise_after_a_lull(
        gap: Duration,
        lull: Duration,
        rising: Duration,
        duration: Duration,
    ) -> (Adaptive, usize, Instant) {
        let mut policy = Adaptive::new(256 * MIB, 3000.0);
        let start = Instant::now();
        let (rise, end) = (start + lull, start + lull + rising);
        let arrivals = every(start, gap, rise).chain(every(rise, Duration::from_millis(100), end));
        let in_flight = calls(&mut policy, arrivals, duration);
        (policy, in_flight, end)
    }

    #[test]
    fn after_a_lull_the_calls_in_flight_are_counted_coming_back() {
        // Calls of 700 ms, every ten seconds, then ten a second: the last
        // returns spread over the lull, but the calls in flight come back
        // within 700 ms of arriving, about as fast as calls now arrive.
        let (policy, in_flight, now) = rise_after_a_lull(
            Duration::from_secs(10),
            Duration::from_secs(200),
            Duration::from_secs(2),
            Duration::from_millis(700),
        );
        assert_eq!(in_flight, 7);
        // A little over 700 ms: the calls in flight count their time so far.
        let stay = policy.stay.seconds().expect("calls came back");
        assert!((0.7..0.85).contains(&stay), "{stay} s a call");
        // Arrivals outrun the returns of the lull by 2.4 calls in 250 ms; a
        // margin for chance is all they outrun those in flight by.
        assert_eq!(policy.forecast_deficit(now), 2);
    }

    #[test]
    fn a_burst_of_long_calls_after_a_lull_is_not_counted_coming_back() {
        // Calls of a minute, every 100 s, then ten a second: none of those
        // is back within a start, however many are in flight.
        let (policy, in_flight, now) = rise_after_a_lull(
            Duration::from_secs(100),
            Duration::from_secs(2000),
            Duration::from_secs(5),
            Duration::from_secs(60),
        );
        assert_eq!(in_flight, 50);
        let stay = policy.stay.seconds().expect("calls came back");
        assert!(stay > 50.0, "{stay} s a call");
        // 2.5 calls due within 250 ms, a margin for chance, and few returns.
        let deficit = policy.forecast_deficit(now);
        assert!((3..=5).contains(&deficit), "{deficit} ahead");
    }

    #[test]
    fn a_thousand_short_calls_a_second_keep_a_few_spares_not_dozens() {
        let mut policy = Adaptive::new(256 * MIB, 3000.0);
        let start = Instant::now();
        let end = start + Duration::from_secs(5);
        // A call a millisecond, each done in one and a half: one or two in flight.
        let in_flight = steady_calls(
            &mut policy,
            start,
            Duration::from_millis(1),
            Duration::from_micros(1500),
            end,
        );
        let ahead = policy.prewarm(end - Duration::from_millis(1)) - in_flight;
        // Counted over the whole horizon, chance alone would ask for about 12.
        assert!((1..=4).contains(&ahead), "{ahead} ahead");
    }

    /// The timeout a policy of `memory` learns when, each round, a container
    /// goes idle, is removed, and `spell` later a call finds `found`.
    fn timeout_after_removals(memory: u64, spell: Duration, found: Found) -> Duration {
        timeout_after_queued_removals(memory, spell, found, Duration::ZERO)
    }

    /// As [`timeout_after_removals`], its starts having waited `turn_wait`
    /// each for their turn (250 ms each once there).
    fn timeout_after_queued_removals(
        memory: u64,
        spell: Duration,
        found: Found,
        turn_wait: Duration,
    ) -> Duration {
        let mut policy = Adaptive::new(memory, 3000.0);
        for _ in 0..30 {
            policy.start_took(FIRST_HORIZON, turn_wait);
        }
        let start = Instant::now();
        let now = reused_after(&mut policy, start, 1, Duration::from_secs(2), 20);
        for round in 0..50u32 {
            let began = now + Duration::from_secs(u64::from(round) * 1000);
            policy.call_returned(began, 0);
            policy.idle_removed(began, 1);
            policy.call_arrived(began + spell, found, 1);
        }
        policy.timeout(1)
    }

    #[test]
    fn a_container_started_again_for_its_call_cost_a_start_not_a_cold_start() {
        // 10 GiB at 3000 GB-s a cold start: two minutes idle cost 0.4 of one,
        // more than a start and less than a cold start.
        let (memory, spell) = (10 * 1024 * MIB, Duration::from_secs(120));
        let missed = timeout_after_removals(memory, spell, Found::Nothing);
        assert!(
            missed >= spell,
            "a cold start is worth keeping it: {missed:?}"
        );
        let restarted = timeout_after_removals(memory, spell, Found::Prewarmed);
        assert!(restarted < Duration::from_secs(10), "{restarted:?}");
        // One minute idle costs 0.2 of a cold start: less than the start.
        let spell = Duration::from_secs(60);
        let restarted = timeout_after_removals(memory, spell, Found::Prewarmed);
        assert!(
            restarted >= spell,
            "worth keeping rather than starting again: {restarted:?}"
        );
    }

    #[test]
    fn a_start_that_queues_behind_others_costs_their_wait_too() {
        // As above, two minutes idle of 10 GiB cost 0.4 of a cold start: more
        // than a start (0.3), less than one that waited two starts' times
        // for its turn (2.3).
        let (memory, spell) = (10 * 1024 * MIB, Duration::from_secs(120));
        let queued = FIRST_HORIZON * 2;
        let restarted = timeout_after_queued_removals(memory, spell, Found::Prewarmed, queued);
        assert!(
            restarted >= spell,
            "worth keeping while starts queue: {restarted:?}"
        );
        let restarted =
            timeout_after_queued_removals(memory, spell, Found::Prewarmed, Duration::ZERO);
        assert!(restarted < Duration::from_secs(10), "{restarted:?}");
    }

    #[test]
    fn a_removed_container_the_forecast_wants_again_cost_a_start() {
        let mut policy = Adaptive::new(256 * MIB, 3000.0);
        let now = Instant::now();
        let began = now - Duration::from_secs(30);
        for level in [2, 3, 5] {
            policy.idle_removed(began, level);
        }
        policy.running = 1;
        policy.wanted_again(now, 3);
        let missed: f64 = policy.pooled.missed.iter().sum();
        let reused: f64 = policy.pooled.reused.iter().sum();
        assert_eq!(reused, 2.0, "levels 2 and 3 are wanted again");
        assert!((missed - 2.0 * START_COST).abs() < 1e-9, "{missed}");
        assert_eq!(policy.pooled.reused[bin_of(Duration::from_secs(30))], 2.0);
        assert_eq!(
            policy.removed[5],
            Some(began),
            "level 5 is not wanted: it may still be missed by a call"
        );
        assert_eq!(policy.removed[2], None);
    }

    #[test]
    fn a_prewarm_margin_stops_where_its_chance_falls_to_a_start() {
        // Under the margin a prewarm serves a call with at least the chance
        // a start costs: a normal count exceeds its mean by this many
        // deviations with that chance.
        let chance = 0.5 * erfc(FORECAST_DEVIATIONS / std::f64::consts::SQRT_2);
        assert!((chance - START_COST).abs() < 0.005, "{chance}");
    }

    /// The complementary error function (Abramowitz and Stegun 7.1.26, to
    /// 1.5e-7), enough to check a quantile.
    fn erfc(x: f64) -> f64 {
        let t = 1.0 / (1.0 + 0.327_591_1 * x);
        let poly = t
            * (0.254_829_592
                + t * (-0.284_496_736
                    + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
        poly * (-x * x).exp()
    }

    #[test]
    fn irregular_calls_and_kept_containers_are_not_prewarmed() {
        let mut policy = Adaptive::new(256 * MIB, 0.001);
        let mut now = Instant::now();
        for i in 0..20u64 {
            policy.call_arrived(now, Found::Nothing, 1);
            policy.call_returned(now, 0);
            now += Duration::from_secs(5 + (i % 3) * 10);
        }
        assert_eq!(policy.clock.and_then(|clock| clock.prewarm), None);
        let mut kept = Adaptive::new(256 * MIB, 3000.0);
        for _ in 0..20 {
            kept.call_arrived(now, Found::Nothing, 1);
            kept.call_returned(now, 0);
            now += Duration::from_secs(10);
        }
        assert_eq!(
            kept.clock.and_then(|clock| clock.prewarm),
            None,
            "its container is still there when due"
        );
    }

    /// A new policy like `policy` (`memory`, `cold_start_gb_s`) restored
    /// `later` from what `policy` learned as of `now`, handed on as JSON.
    fn handed_on(
        policy: &Adaptive,
        (memory, cold_start_gb_s): (u64, f64),
        now: Instant,
        later: Instant,
    ) -> Adaptive {
        let json = serde_json::to_string(&policy.learned(now).expect("it learns")).unwrap();
        let mut next = Adaptive::new(memory, cold_start_gb_s);
        next.restore(serde_json::from_str(&json).unwrap(), later)
            .unwrap();
        next
    }

    #[test]
    fn a_policy_handed_on_keeps_the_timeouts_it_learned() {
        let settings = (256 * MIB, 3000.0);
        let mut policy = Adaptive::new(settings.0, settings.1);
        let start = Instant::now();
        let now = reused_after(&mut policy, start, 1, Duration::from_secs(30), 50);
        let now = reused_after(&mut policy, now, 3, Duration::from_secs(5), 20);
        let next = handed_on(&policy, settings, now, now + Duration::from_secs(7));
        let fresh = Adaptive::new(settings.0, settings.1);
        for level in [1, 2, 3, 10] {
            assert_eq!(next.timeout(level), policy.timeout(level), "level {level}");
        }
        assert_ne!(next.timeout(1), fresh.timeout(1));
        assert_ne!(
            next.timeout(3),
            next.timeout(1),
            "by level, not only pooled"
        );
        assert_eq!(next.weight, policy.weight);
        assert_eq!(next.pooled.reused, policy.pooled.reused);
    }

    #[test]
    fn a_policy_handed_on_prewarms_clockwork_calls_when_they_are_due() {
        let settings = (256 * MIB, 0.001);
        let mut policy = Adaptive::new(settings.0, settings.1);
        let (ended, _) = clockwork_calls(&mut policy);
        // Handed on 3 s into the idle gap; restored in another process whose
        // clock reads 50 s more: the window is as far from now as it was.
        let (at, later) = (
            ended + Duration::from_secs(3),
            ended + Duration::from_secs(53),
        );
        let next = handed_on(&policy, settings, at, later);
        let clock = policy.clock.expect("clockwork");
        let shift = Duration::from_secs(50);
        let moved = next.clock.expect("clockwork handed on");
        assert_eq!(moved.prewarm, clock.prewarm);
        assert_eq!(
            (moved.start, moved.end),
            (clock.start + shift, clock.end + shift)
        );
        assert_eq!(next.prewarm(clock.start + shift), 1);
        assert_eq!(
            Adaptive::new(settings.0, settings.1).clock,
            None,
            "a fresh one waits for spells"
        );
    }

    #[test]
    fn spells_handed_on_before_starts_were_charged_count_every_miss_a_cold_start() {
        let settings = (256 * MIB, 3000.0);
        let mut policy = Adaptive::new(settings.0, settings.1);
        let now = reused_after(&mut policy, Instant::now(), 1, Duration::from_secs(30), 50);
        let mut json = serde_json::to_value(policy.learned(now).expect("it learns")).unwrap();
        json["pooled"].as_object_mut().unwrap().remove("missed");
        let mut next = Adaptive::new(settings.0, settings.1);
        next.restore(serde_json::from_value(json).unwrap(), now)
            .unwrap();
        assert_eq!(next.pooled.missed, next.pooled.reused);
    }

    #[test]
    fn idle_gaps_handed_on_by_an_earlier_policy_are_ignored_and_the_rest_kept() {
        let settings = (256 * MIB, 0.001);
        let mut policy = Adaptive::new(settings.0, settings.1);
        let (ended, _) = clockwork_calls(&mut policy);
        let mut json = serde_json::to_value(policy.learned(ended).expect("it learns")).unwrap();
        let learned = json.as_object_mut().unwrap();
        learned.remove("busy_spells");
        learned.insert("gaps".into(), serde_json::json!([{"secs": 10, "nanos": 0}]));
        let mut next = Adaptive::new(settings.0, settings.1);
        next.restore(serde_json::from_value(json).unwrap(), ended)
            .unwrap();
        assert_eq!(next.weight, policy.weight, "what it learned is kept");
        assert!(next.weight > 1.0);
        assert_eq!(next.clock, None, "its clockwork is learned afresh");
    }

    #[test]
    fn what_no_policy_could_have_learned_is_refused_and_changes_nothing() {
        let settings = (256 * MIB, 3000.0);
        let mut policy = Adaptive::new(settings.0, settings.1);
        let now = reused_after(&mut policy, Instant::now(), 1, Duration::from_secs(30), 50);
        let Some(Learned::Adaptive(learned)) = policy.learned(now) else {
            panic!("adaptive learns");
        };
        let mut broken = [learned.clone(), learned.clone(), learned.clone(), learned];
        broken[0].weight = f64::INFINITY;
        broken[1].pooled.reused.pop();
        broken[2].pooled.reused[0] = -1.0;
        broken[3].by_level[0].timeout = Some(Duration::from_secs(365 * 86400));
        for learned in broken {
            let mut next = Adaptive::new(settings.0, settings.1);
            assert!(next.restore(Learned::Adaptive(learned), now).is_err());
            assert_eq!(next.timeout(1), PRIOR_TIMEOUT, "unchanged");
        }
    }
}
