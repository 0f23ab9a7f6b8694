//! Anonymous customers: a visitor who opens the widget with neither a quick
//! link nor a signed identity starts as a new temporary customer at
//! `POST /api/v1/auth/anonymous`, as in any public chat widget.
//!
//! Two guards stand in front of it:
//! - the switch `limits.anonymous_customers` (default on); off answers 403
//!   `forbidden`, and visitors then need a quick link or a signed identity;
//! - at most `limits.anonymous_per_ip_per_min` new anonymous customers per
//!   client address and minute (default 20; 0 = no bound), beyond it 429
//!   `rate_limited` with `Retry-After`. [`AnonymousLimiter`] counts them in
//!   this node's memory.
//!
//! What the per-address bound does not do, on purpose (simple and documented
//! instead): it is **node-local**, so with K nodes behind a load balancer one
//! address may start up to K × N per minute, and a restart forgets the
//! counts. It keys on the **TCP peer**: behind a reverse proxy every client
//! has the proxy's address and shares one budget (`X-Forwarded-For` is not
//! trusted, since any client can send it); raise the setting or set it to 0
//! and limit at the proxy. An IPv6 client is counted per /64, the block one
//! host or household usually gets, so that rotating addresses inside it does
//! not multiply the budget.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus::{IntCounterVec, Opts, Registry};

use super::{start_session, users, visitor_name, TokenPair};
use crate::error::AppError;
use crate::state::AppState;

/// How long one address's count lasts: the bound is per minute.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Most addresses counted at once. Why 10,000: that is 10,000 distinct
/// addresses starting anonymous chats within one minute on one node (over 160
/// new chats a second), far beyond a customer-service site's traffic, while
/// the map stays under 1 MiB (about 49 bytes a slot in at most 16,384 slots).
/// When it is full of current windows, a new address is refused (429) until
/// windows expire: forgetting a current window would reopen its budget, and
/// growing would let a flood from many addresses take the node's memory.
pub const MAX_TRACKED: usize = 10_000;

/// Why 1 s: pruning a full map scans it; a flood of new addresses against a
/// full map scans at most once a second instead of once a request.
const FULL_PRUNE_EVERY: Duration = Duration::from_secs(1);

/// The message of the 429; the widget shows its own translated text.
pub const LIMITED_MESSAGE: &str = "too many new chats from this network; try again in a minute";

/// The message of the 403 when anonymous customers are turned off.
pub const OFF_MESSAGE: &str = "anonymous chats are turned off on this server \
     (limits.anonymous_customers); start from a quick link or a signed identity";

/// Refused by the per-address bound: retry after this many seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after_s: u64,
}

/// Counts new anonymous customers per client address in fixed windows of
/// [`WINDOW`], each starting at the address's first customer after the last
/// window ended, with at most [`MAX_TRACKED`] addresses held.
pub struct AnonymousLimiter {
    per_window: u32,
    windows: Mutex<Windows>,
    outcomes: IntCounterVec,
}

struct Windows {
    by_key: HashMap<IpAddr, Window>,
    last_prune: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    count: u32,
}

impl AnonymousLimiter {
    /// A limiter allowing `per_window` new customers per address and window
    /// (0 = no bound); its counter `switchboard_anonymous_customers_total`
    /// goes into `registry`.
    pub fn new(per_window: u32, registry: &Registry) -> Self {
        let outcomes = crate::metrics::register(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "switchboard_anonymous_customers_total",
                    "Anonymous customer starts by outcome (created, rate_limited)",
                ),
                &["outcome"],
            ),
        );
        AnonymousLimiter {
            per_window,
            windows: Mutex::new(Windows {
                by_key: HashMap::new(),
                last_prune: Instant::now(),
            }),
            outcomes,
        }
    }

    /// Counts one new customer from `peer` at `now`, or refuses it when the
    /// address's window is used up (or the map is full of current windows).
    /// A request without a known peer counts under one shared key.
    pub fn admit(&self, peer: Option<IpAddr>, now: Instant) -> Result<(), Limited> {
        if self.per_window == 0 {
            return Ok(());
        }
        let key = peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), key_of);
        let mut w = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if now.saturating_duration_since(w.last_prune) >= WINDOW {
            w.prune(now);
        }
        if let Some(win) = w.by_key.get_mut(&key) {
            let age = now.saturating_duration_since(win.started);
            if age >= WINDOW {
                *win = Window {
                    started: now,
                    count: 1,
                };
                return Ok(());
            }
            if win.count >= self.per_window {
                return Err(Limited {
                    retry_after_s: (WINDOW - age).as_secs_f64().ceil().max(1.0) as u64,
                });
            }
            win.count += 1;
            return Ok(());
        }
        if w.by_key.len() >= MAX_TRACKED
            && now.saturating_duration_since(w.last_prune) >= FULL_PRUNE_EVERY
        {
            w.prune(now);
        }
        if w.by_key.len() >= MAX_TRACKED {
            return Err(Limited {
                retry_after_s: WINDOW.as_secs(),
            });
        }
        w.by_key.insert(
            key,
            Window {
                started: now,
                count: 1,
            },
        );
        Ok(())
    }

    /// Addresses currently held (for tests and diagnostics).
    pub fn tracked(&self) -> usize {
        self.windows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_key
            .len()
    }
}

impl Windows {
    /// Drops the windows that have ended.
    fn prune(&mut self, now: Instant) {
        self.by_key
            .retain(|_, w| now.saturating_duration_since(w.started) < WINDOW);
        self.last_prune = now;
    }
}

/// The key an address is counted under: IPv4 (also IPv4-mapped IPv6) as it
/// is, IPv6 by its /64 network.
fn key_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

/// Why an anonymous start was refused: an ordinary error, or the
/// per-address bound (which adds `Retry-After`).
#[derive(Debug)]
pub enum Refusal {
    Error(AppError),
    Limited(Limited),
}

impl From<AppError> for Refusal {
    fn from(e: AppError) -> Self {
        Refusal::Error(e)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Error(e) => e.into_response(),
            Refusal::Limited(l) => (
                [(header::RETRY_AFTER, l.retry_after_s.to_string())],
                AppError::rate_limited(LIMITED_MESSAGE),
            )
                .into_response(),
        }
    }
}

/// 403 `forbidden` when anonymous customers are turned off.
pub fn ensure_enabled(state: &AppState) -> Result<(), AppError> {
    if state.config().limits.anonymous_customers {
        Ok(())
    } else {
        Err(AppError::forbidden(OFF_MESSAGE))
    }
}

/// Starts a new temporary customer for a visitor from `peer`: checks the
/// switch, then the name (as for quick links), then the per-address bound, and
/// only then creates the customer, so a refused request creates nothing.
pub async fn sign_up(
    state: &AppState,
    peer: Option<IpAddr>,
    name: Option<&str>,
) -> Result<TokenPair, Refusal> {
    ensure_enabled(state)?;
    let name = visitor_name(name)?;
    let limiter = state.anonymous_limiter();
    if let Err(limited) = limiter.admit(peer, Instant::now()) {
        limiter.outcomes.with_label_values(&["rate_limited"]).inc();
        return Err(Refusal::Limited(limited));
    }
    let user = users::create_user(state.store(), users::NewUser::temporary_customer(name)).await?;
    let pair = start_session(state, &user).await?;
    limiter.outcomes.with_label_values(&["created"]).inc();
    Ok(pair)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(n: u32) -> AnonymousLimiter {
        AnonymousLimiter::new(n, &Registry::new())
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn allows_n_per_minute_per_address_then_refuses() {
        let l = limiter(3);
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(
                l.admit(ip("203.0.113.7"), t0 + Duration::from_secs(i)),
                Ok(())
            );
        }
        let refused = l
            .admit(ip("203.0.113.7"), t0 + Duration::from_secs(10))
            .unwrap_err();
        assert_eq!(refused.retry_after_s, 50);
        // Another address has its own budget.
        assert_eq!(
            l.admit(ip("203.0.113.8"), t0 + Duration::from_secs(10)),
            Ok(())
        );
        // After the window the address starts over.
        assert_eq!(l.admit(ip("203.0.113.7"), t0 + WINDOW), Ok(()));
        assert!(l.admit(ip("203.0.113.7"), t0 + WINDOW).is_ok());
        assert!(l.admit(ip("203.0.113.7"), t0 + WINDOW).is_ok());
        assert!(l.admit(ip("203.0.113.7"), t0 + WINDOW).is_err());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let l = limiter(2);
        let t = Instant::now();
        assert!(l.admit(ip("2001:db8:1:2::1"), t).is_ok());
        assert!(l.admit(ip("2001:db8:1:2:ffff::9"), t).is_ok());
        assert!(l.admit(ip("2001:db8:1:2:abcd::1"), t).is_err());
        assert!(l.admit(ip("2001:db8:1:3::1"), t).is_ok());
        assert!(l.admit(ip("198.51.100.1"), t).is_ok());
        assert!(l.admit(ip("::ffff:198.51.100.1"), t).is_ok());
        assert!(l.admit(ip("198.51.100.1"), t).is_err());
        // No known peer: one shared budget.
        assert!(l.admit(None, t).is_ok());
        assert!(l.admit(None, t).is_ok());
        assert!(l.admit(None, t).is_err());
    }

    #[test]
    fn zero_means_no_bound_and_nothing_is_held() {
        let l = limiter(0);
        let t = Instant::now();
        for _ in 0..1000 {
            assert!(l.admit(ip("192.0.2.1"), t).is_ok());
        }
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn the_map_is_bounded_and_old_windows_are_pruned() {
        let l = limiter(1);
        let t0 = Instant::now();
        for i in 0..MAX_TRACKED as u32 {
            let addr = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            assert!(l.admit(Some(addr), t0).is_ok());
        }
        assert_eq!(l.tracked(), MAX_TRACKED);
        // Full of current windows: a newcomer is refused, nothing grows.
        let newcomer = ip("192.0.2.200");
        assert_eq!(
            l.admit(newcomer, t0 + Duration::from_secs(2)),
            Err(Limited { retry_after_s: 60 })
        );
        assert_eq!(l.tracked(), MAX_TRACKED);
        // Once those windows ended they are dropped and room is made.
        assert!(l.admit(newcomer, t0 + WINDOW).is_ok());
        assert_eq!(l.tracked(), 1);
    }

    #[test]
    fn ended_windows_are_dropped_within_a_window_even_below_the_bound() {
        let l = limiter(5);
        let t0 = Instant::now();
        for i in 0..100u32 {
            assert!(l
                .admit(Some(IpAddr::V4(Ipv4Addr::from(0xc000_0200 + i))), t0)
                .is_ok());
        }
        assert_eq!(l.tracked(), 100);
        assert!(l.admit(ip("198.51.100.9"), t0 + 2 * WINDOW).is_ok());
        assert_eq!(l.tracked(), 1);
    }
}
