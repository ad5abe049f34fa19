//! Per-source limits on refused requests (bad webhook signatures, unknown tokens, refused
//! sign-ins and enrolments): in each window a source may be refused `burst` times, each refusal
//! audited as a row of its own; after that its refusals become 429s (at once for requests
//! without credentials) counted into one summary row per source and window. Memory stays
//! bounded: at most `max_sources` windows are kept, further sources share one ("many sources").

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use mayfly_store::NewAudit;

use crate::config::RefusalConfig;
use crate::error::ApiError;

/// Where refused requests come from. An IPv6 source is its /64, the block one subscriber holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    V4(Ipv4Addr),
    V6Net(u64),
    /// The router ran without peer addresses (tests that call it directly).
    Unknown,
    /// Every source that arrives while `max_sources` windows are open.
    Many,
}

impl Source {
    pub(crate) fn of(peer: Option<IpAddr>) -> Self {
        match peer.map(|ip| ip.to_canonical()) {
            Some(IpAddr::V4(v4)) => Self::V4(v4),
            Some(IpAddr::V6(v6)) => Self::V6Net((v6.to_bits() >> 64) as u64),
            None => Self::Unknown,
        }
    }

    fn describe(self) -> String {
        match self {
            Self::V4(v4) => v4.to_string(),
            Self::V6Net(net) => {
                format!(
                    "{}/64",
                    std::net::Ipv6Addr::from_bits(u128::from(net) << 64)
                )
            }
            Self::Unknown => "unknown".to_owned(),
            Self::Many => "many sources".to_owned(),
        }
    }
}

/// Which kind of endpoint refused a request (the summary counts each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Webhook,
    Api,
    Metrics,
    Enrol,
    Dashboard,
}

const ROUTES: [Route; 5] = [
    Route::Webhook,
    Route::Api,
    Route::Metrics,
    Route::Enrol,
    Route::Dashboard,
];

impl Route {
    fn name(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Api => "api",
            Self::Metrics => "metrics",
            Self::Enrol => "enrol",
            Self::Dashboard => "dashboard",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One source's current window.
#[derive(Debug)]
struct Window {
    started: Instant,
    first_at: DateTime<Utc>,
    last_at: DateTime<Utc>,
    /// Refusals that were handled (and audited) in full.
    refused: u32,
    /// Requests turned away (429), or refused past the burst, by route: the summary's counts.
    summarised: [u64; ROUTES.len()],
}

impl Window {
    fn new(now: Instant, at: DateTime<Utc>) -> Self {
        Self {
            started: now,
            first_at: at,
            last_at: at,
            refused: 0,
            summarised: [0; ROUTES.len()],
        }
    }

    fn summary(&self, source: Source) -> Option<Summary> {
        let total: u64 = self.summarised.iter().sum();
        (total > 0).then(|| Summary {
            source,
            counts: ROUTES
                .iter()
                .filter(|r| self.summarised[r.index()] > 0)
                .map(|r| (*r, self.summarised[r.index()]))
                .collect(),
            from: self.first_at,
            to: self.last_at,
        })
    }
}

/// What a source sent past its burst in one window, for one audit row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    source: Source,
    counts: Vec<(Route, u64)>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
}

impl Summary {
    /// The audit row: `refusals summarised`, the counts by route, the source and the span.
    pub(crate) fn audit_row(&self, at: DateTime<Utc>) -> NewAudit {
        let total: u64 = self.counts.iter().map(|(_, n)| n).sum();
        let by_route = self
            .counts
            .iter()
            .map(|(route, n)| format!("{} {n}", route.name()))
            .collect::<Vec<_>>()
            .join(", ");
        let stamp = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
        NewAudit {
            at,
            actor: "anonymous".to_owned(),
            source: Some(self.source.describe()),
            action: "refusals summarised".to_owned(),
            target: Some(by_route),
            outcome: format!(
                "{total} further refused requests between {} and {}",
                stamp(self.from),
                stamp(self.to)
            ),
        }
    }
}

/// What became of a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counted {
    /// Within the source's burst: audit it as a row of its own.
    Individually,
    /// Past the burst: counted into the source's summary; answer 429 with this retry-after.
    Summarised(Duration),
}

/// The per-source windows.
#[derive(Debug)]
pub(crate) struct Refusals {
    burst: u32,
    window: Duration,
    max_sources: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    windows: HashMap<Source, Window>,
    /// Summaries of windows closed by a refusal or an eviction, waiting to be written.
    pending: Vec<Summary>,
}

impl State {
    /// The window a refusal from `source` goes to: its own, or the shared one when the table
    /// is full even after dropping ended windows.
    fn key(&mut self, source: Source, now: Instant, window: Duration, max: usize) -> Source {
        if self.windows.contains_key(&source) || self.windows.len() < max {
            return source;
        }
        self.close_ended(now, window);
        if self.windows.len() < max {
            source
        } else {
            Source::Many
        }
    }

    fn close_ended(&mut self, now: Instant, window: Duration) {
        let pending = &mut self.pending;
        self.windows.retain(|source, w| {
            let open = now.duration_since(w.started) < window;
            if !open {
                pending.extend(w.summary(*source));
            }
            open
        });
    }
}

impl Refusals {
    pub(crate) fn new(config: &RefusalConfig) -> Self {
        Self {
            burst: config.burst.max(1),
            window: Duration::from_secs(config.window_secs.max(1)),
            max_sources: config.max_sources.max(1),
            state: Mutex::new(State::default()),
        }
    }

    /// How often windows are closed and their summaries written.
    pub(crate) fn window(&self) -> Duration {
        self.window
    }

    /// `Some(retry after)` when `source` has used up its refusals in this window: the request
    /// is answered 429 at once, and counted into the summary.
    pub(crate) fn turned_away(
        &self,
        source: Source,
        route: Route,
        now: Instant,
        at: DateTime<Utc>,
    ) -> Option<Duration> {
        let mut state = self.state.lock().ok()?;
        let key = if state.windows.contains_key(&source) || state.windows.len() < self.max_sources {
            source
        } else {
            Source::Many
        };
        let w = state.windows.get_mut(&key)?;
        let elapsed = now.duration_since(w.started);
        if elapsed >= self.window || w.refused < self.burst {
            return None;
        }
        w.summarised[route.index()] += 1;
        w.last_at = at;
        Some((self.window - elapsed).max(Duration::from_secs(1)))
    }

    /// Counts a refusal from `source`.
    pub(crate) fn refused(
        &self,
        source: Source,
        route: Route,
        now: Instant,
        at: DateTime<Utc>,
    ) -> Counted {
        let Ok(mut state) = self.state.lock() else {
            return Counted::Individually;
        };
        let key = state.key(source, now, self.window, self.max_sources);
        let State { windows, pending } = &mut *state;
        let w = windows.entry(key).or_insert_with(|| Window::new(now, at));
        if now.duration_since(w.started) >= self.window {
            pending.extend(w.summary(key));
            *w = Window::new(now, at);
        }
        w.last_at = at;
        if w.refused < self.burst {
            w.refused += 1;
            Counted::Individually
        } else {
            w.summarised[route.index()] += 1;
            let left = self.window.saturating_sub(now.duration_since(w.started));
            Counted::Summarised(left.max(Duration::from_secs(1)))
        }
    }

    /// The summaries to write now: of windows that have ended (which are forgotten), or of
    /// every window when `all` (at shutdown).
    pub(crate) fn take_summaries(&self, now: Instant, all: bool) -> Vec<Summary> {
        let Ok(mut state) = self.state.lock() else {
            return Vec::new();
        };
        if all {
            let State { windows, pending } = &mut *state;
            for (source, w) in windows.drain() {
                pending.extend(w.summary(source));
            }
        } else {
            state.close_ended(now, self.window);
        }
        std::mem::take(&mut state.pending)
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.state.lock().map(|s| s.windows.len()).unwrap_or(0)
    }
}

/// The refusal limits as handlers use them. `peer` is the caller's `ip:port` ([`crate::api::peer`]).
/// A limited source that presents valid credentials still gets through: GitHub's webhook
/// addresses are shared by every App (a stranger's App sending us badly signed deliveries must
/// not block ours), and a good token behind an attacker's NAT must keep working.
impl crate::AppState {
    /// `Err(429)` when the caller's source has used up its refusals in this window; the request
    /// is then counted into the source's summary and must not be looked at further. Only for
    /// requests that carry no credentials, or where checking them is the expensive part.
    pub(crate) fn turn_away(&self, peer: Option<&str>, route: Route) -> Result<(), ApiError> {
        let source = Source::of(ip(peer));
        let Some(wait) = self
            .refusals
            .turned_away(source, route, Instant::now(), self.clock.now())
        else {
            return Ok(());
        };
        Err(self.rate_limited(source, wait))
    }

    /// Counts a refusal that is not audited on its own (a webhook: nothing of it is stored).
    /// `Err(429)` past the source's burst: answer that instead of the refusal.
    pub(crate) fn count_refusal(&self, peer: Option<&str>, route: Route) -> Result<(), ApiError> {
        let source = Source::of(ip(peer));
        match self
            .refusals
            .refused(source, route, Instant::now(), self.clock.now())
        {
            Counted::Individually => Ok(()),
            Counted::Summarised(wait) => Err(self.rate_limited(source, wait)),
        }
    }

    /// Audits a refused request ([`crate::AppState::audit`]) while its source is within its
    /// burst. Past it the refusal is only counted into the source's summary row, and the
    /// answer is `Err(429)` instead of the refusal.
    pub(crate) async fn audit_refusal(
        &self,
        route: Route,
        actor: &str,
        peer: Option<String>,
        action: String,
        target: Option<String>,
        outcome: String,
    ) -> Result<(), ApiError> {
        let source = Source::of(ip(peer.as_deref()));
        match self
            .refusals
            .refused(source, route, Instant::now(), self.clock.now())
        {
            Counted::Individually => self.audit(actor, peer, action, target, outcome).await,
            Counted::Summarised(wait) => Err(self.rate_limited(source, wait)),
        }
    }

    fn rate_limited(&self, source: Source, wait: Duration) -> ApiError {
        self.warn(
            "rate_limited",
            &format!(
                "{} was refused too often; answering 429 until its window ends",
                source.describe()
            ),
        );
        ApiError::RateLimited {
            retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
        }
    }
}

/// The address of an `ip:port` peer.
fn ip(peer: Option<&str>) -> Option<IpAddr> {
    peer?.parse::<std::net::SocketAddr>().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn limits(burst: u32, max_sources: usize) -> Refusals {
        Refusals::new(&RefusalConfig {
            burst,
            window_secs: 60,
            max_sources,
        })
    }

    fn ip(last: u8) -> Source {
        Source::of(Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))))
    }

    #[test]
    fn a_source_is_turned_away_after_its_burst_until_the_window_ends() {
        let r = limits(3, 100);
        let (t0, at) = (Instant::now(), Utc::now());
        for _ in 0..3 {
            assert_eq!(r.turned_away(ip(1), Route::Api, t0, at), None);
            assert_eq!(r.refused(ip(1), Route::Api, t0, at), Counted::Individually);
        }
        let wait = r.turned_away(ip(1), Route::Api, t0 + Duration::from_secs(15), at);
        assert_eq!(wait, Some(Duration::from_secs(45)));
        // Another source, and the same one after the window, are not.
        assert_eq!(r.turned_away(ip(2), Route::Api, t0, at), None);
        let later = t0 + Duration::from_secs(61);
        assert_eq!(r.turned_away(ip(1), Route::Api, later, at), None);
        assert_eq!(
            r.refused(ip(1), Route::Api, later, at),
            Counted::Individually
        );
    }

    #[test]
    fn what_was_turned_away_becomes_one_summary_per_source_and_window() {
        let r = limits(2, 100);
        let (t0, at) = (Instant::now(), Utc::now());
        r.refused(ip(1), Route::Api, t0, at);
        r.refused(ip(1), Route::Webhook, t0, at);
        assert_eq!(
            r.refused(ip(1), Route::Api, t0, at),
            Counted::Summarised(Duration::from_secs(60))
        );
        for _ in 0..500 {
            r.turned_away(ip(1), Route::Api, t0, at);
        }
        r.turned_away(ip(1), Route::Enrol, t0, at);
        assert!(r.take_summaries(t0, false).is_empty(), "the window is open");
        let closed = r.take_summaries(t0 + Duration::from_secs(60), false);
        assert_eq!(closed.len(), 1);
        let row = closed[0].audit_row(at);
        assert_eq!(row.action, "refusals summarised");
        assert_eq!(row.source.as_deref(), Some("192.0.2.1"));
        assert_eq!(row.target.as_deref(), Some("api 501, enrol 1"));
        assert!(row
            .outcome
            .starts_with("502 further refused requests between "));
        assert_eq!(r.tracked(), 0, "a closed window is forgotten");
        // A source that stayed within its burst needs no summary.
        r.refused(ip(2), Route::Api, t0, at);
        assert!(r.take_summaries(t0, true).is_empty());
    }

    #[test]
    fn a_refusal_after_the_window_closes_it_and_keeps_its_summary() {
        let r = limits(1, 100);
        let (t0, at) = (Instant::now(), Utc::now());
        r.refused(ip(1), Route::Api, t0, at);
        r.turned_away(ip(1), Route::Api, t0, at);
        r.refused(ip(1), Route::Api, t0 + Duration::from_secs(90), at);
        let pending = r.take_summaries(t0 + Duration::from_secs(90), false);
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].counts, vec![(Route::Api, 1)]);
    }

    #[test]
    fn the_table_is_bounded_and_overflowing_sources_share_one_window() {
        let r = limits(2, 10);
        let (t0, at) = (Instant::now(), Utc::now());
        for last in 0..200 {
            r.refused(ip(last), Route::Webhook, t0, at);
        }
        assert_eq!(r.tracked(), 10 + 1);
        // The shared window is used up too: a new source is turned away.
        assert!(r.turned_away(ip(250), Route::Webhook, t0, at).is_some());
        // Ended windows make room again.
        let later = t0 + Duration::from_secs(61);
        assert_eq!(
            r.refused(ip(251), Route::Webhook, later, at),
            Counted::Individually
        );
        let summaries = r.take_summaries(later, true);
        let many = summaries.iter().find(|s| s.source == Source::Many).unwrap();
        assert_eq!(many.counts, vec![(Route::Webhook, 188 + 1)]);
    }

    #[test]
    fn an_ipv6_source_is_its_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(Source::of(Some(a)), Source::of(Some(b)));
        assert_eq!(Source::of(Some(a)).describe(), "2001:db8:1:2::/64");
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(Source::of(Some(mapped)), ip(7));
    }
}
