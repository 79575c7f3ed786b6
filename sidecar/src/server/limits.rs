//! Rate limits (token buckets, GCRA from `governor`): how fast one client
//! may open streams — per source address (an IPv6 client by its /64, as one
//! host holds a whole prefix) and per credential — and how fast one
//! WebSocket connection may send messages and subscriptions.
//!
//! Over a connection limit a request gets `429 Too Many Requests` with
//! `Retry-After` before any upgrade or token check (an address over its
//! limit costs no TokenReview); an open WebSocket over its message limit is
//! closed 1008 with the reason. Loopback (port-forward) is one client like
//! any other, not exempt.
//!
//! The buckets live in shared maps keyed by address, credential and
//! connection: an idle connection holds none, and [`RateLimits::forget`]
//! drops the buckets that have refilled (on the server's shared clock), so
//! the maps hold only clients seen within a refill time.

use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

/// One bucket's settings: tokens per second (or per minute) and the burst
/// held.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Tokens added per `per`; 0: the limit is off.
    pub tokens: u32,
    pub per: Per,
    pub burst: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Per {
    Second,
    Minute,
}

impl Rate {
    /// `tokens` per second, `burst` at once.
    pub const fn per_second(tokens: u32, burst: u32) -> Rate {
        Rate {
            tokens,
            per: Per::Second,
            burst,
        }
    }

    fn quota(self) -> Option<Quota> {
        let tokens = NonZeroU32::new(self.tokens)?;
        let burst = NonZeroU32::new(self.burst.max(1))?;
        let quota = match self.per {
            Per::Second => Quota::per_second(tokens),
            Per::Minute => Quota::per_minute(tokens),
        };
        Some(quota.allow_burst(burst))
    }
}

impl std::str::FromStr for Rate {
    type Err = String;

    /// `N` or `N/s` (per second), `N/m` (per minute), then `,B` for a burst
    /// of B (default N); `0`: off.
    fn from_str(s: &str) -> Result<Rate, String> {
        let bad = || {
            format!("{s:?}: expected RATE[,BURST] with RATE = N, N/s or N/m (e.g. 50,200; 0: off)")
        };
        let (rate, burst) = match s.split_once(',') {
            Some((r, b)) => (r, Some(b)),
            None => (s, None),
        };
        let (n, per) = match rate.trim().split_once('/') {
            None => (rate.trim(), Per::Second),
            Some((n, "s")) => (n, Per::Second),
            Some((n, "m")) => (n, Per::Minute),
            Some(_) => return Err(bad()),
        };
        let tokens: u32 = n.trim().parse().map_err(|_| bad())?;
        let burst = match burst {
            Some(b) => b.trim().parse().map_err(|_| bad())?,
            None => tokens,
        };
        if tokens > 0 && burst == 0 {
            return Err(bad());
        }
        Ok(Rate { tokens, per, burst })
    }
}

/// The limits a server applies (`0` rate: that limit is off).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateConfig {
    /// New streams per source address.
    pub connections_per_address: Rate,
    /// New streams per credential (bearer token).
    pub connections_per_credential: Rate,
    /// Messages a WebSocket client sends, of any kind.
    pub messages: Rate,
    /// `subscribe` messages (each re-positions the session).
    pub subscribes: Rate,
    /// `watermark` requests, counted apart from `messages`: an aggregator
    /// asks each sidecar whenever another's line waits on it.
    pub watermarks: Rate,
}

impl Default for RateConfig {
    /// Far above what a page or a CLI does (a browser tab reconnecting with
    /// jitter opens one stream per second at most; a page sends a handful of
    /// messages), far below a flood. The address limit is the loosest: behind
    /// an ingress every viewer shares the proxy's address, and a restart
    /// brings them all back within the `reconnect` jitter.
    fn default() -> Self {
        RateConfig {
            connections_per_address: Rate::per_second(50, 200),
            connections_per_credential: Rate::per_second(20, 100),
            messages: Rate::per_second(50, 100),
            subscribes: Rate::per_second(5, 20),
            watermarks: Rate::per_second(1000, 1000),
        }
    }
}

impl RateConfig {
    /// No limit at all.
    pub fn off() -> RateConfig {
        let off = Rate::per_second(0, 0);
        RateConfig {
            connections_per_address: off,
            connections_per_credential: off,
            messages: off,
            subscribes: off,
            watermarks: off,
        }
    }
}

/// Why something was limited: the `reason` of
/// `logstream_rate_limited_total` and the words a client reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limited {
    ConnectionsPerAddress,
    ConnectionsPerCredential,
    Messages,
    Subscribes,
    Watermarks,
}

impl Limited {
    pub fn reason(self) -> &'static str {
        match self {
            Limited::ConnectionsPerAddress => "connections_per_address",
            Limited::ConnectionsPerCredential => "connections_per_credential",
            Limited::Messages => "messages",
            Limited::Subscribes => "subscribes",
            Limited::Watermarks => "watermarks",
        }
    }

    /// What the client is told (close reasons stay under 123 bytes).
    pub fn message(self) -> &'static str {
        match self {
            Limited::ConnectionsPerAddress => "rate limit: too many new streams from this address",
            Limited::ConnectionsPerCredential => "rate limit: too many new streams for this token",
            Limited::Messages => "rate limit: too many messages on this connection",
            Limited::Subscribes => "rate limit: too many subscribe messages on this connection",
            Limited::Watermarks => "rate limit: too many watermark requests on this connection",
        }
    }
}

/// The buckets of a server.
pub struct RateLimits {
    addresses: Option<DefaultKeyedRateLimiter<IpAddr>>,
    credentials: Option<DefaultKeyedRateLimiter<u64>>,
    messages: Option<DefaultKeyedRateLimiter<usize>>,
    subscribes: Option<DefaultKeyedRateLimiter<usize>>,
    watermarks: Option<DefaultKeyedRateLimiter<usize>>,
    /// Hashes credentials with a per-process key: the map never holds a
    /// token, and its keys cannot be chosen to collide.
    hasher: std::collections::hash_map::RandomState,
    clock: DefaultClock,
}

impl RateLimits {
    pub fn new(cfg: &RateConfig) -> RateLimits {
        RateLimits {
            addresses: cfg
                .connections_per_address
                .quota()
                .map(DefaultKeyedRateLimiter::keyed),
            credentials: cfg
                .connections_per_credential
                .quota()
                .map(DefaultKeyedRateLimiter::keyed),
            messages: cfg.messages.quota().map(DefaultKeyedRateLimiter::keyed),
            subscribes: cfg.subscribes.quota().map(DefaultKeyedRateLimiter::keyed),
            watermarks: cfg.watermarks.quota().map(DefaultKeyedRateLimiter::keyed),
            hasher: std::collections::hash_map::RandomState::new(),
            clock: DefaultClock::default(),
        }
    }

    /// A new stream from `ip`: `Err` with how long to wait when over.
    pub fn connection_from(&self, ip: IpAddr) -> Result<(), (Limited, Duration)> {
        self.take(
            &self.addresses,
            &client_key(ip),
            Limited::ConnectionsPerAddress,
        )
    }

    /// A new stream with `credential` (a token already accepted).
    pub fn connection_with(&self, credential: &str) -> Result<(), (Limited, Duration)> {
        let key = self.hasher.hash_one(credential);
        self.take(&self.credentials, &key, Limited::ConnectionsPerCredential)
    }

    /// A message on connection `conn` (any stable identity of it while it
    /// lives); `subscribe`: it re-positions the session.
    pub fn message_on(&self, conn: usize, subscribe: bool) -> Result<(), Limited> {
        self.take(&self.messages, &conn, Limited::Messages)
            .map_err(|(l, _)| l)?;
        if subscribe {
            self.take(&self.subscribes, &conn, Limited::Subscribes)
                .map_err(|(l, _)| l)?;
        }
        Ok(())
    }

    /// A `watermark` request on connection `conn`.
    pub fn watermark_on(&self, conn: usize) -> Result<(), Limited> {
        self.take(&self.watermarks, &conn, Limited::Watermarks)
            .map_err(|(l, _)| l)
    }

    fn take<K: Hash + Eq + Clone>(
        &self,
        limiter: &Option<DefaultKeyedRateLimiter<K>>,
        key: &K,
        why: Limited,
    ) -> Result<(), (Limited, Duration)> {
        let Some(l) = limiter else { return Ok(()) };
        l.check_key(key)
            .map_err(|not_until| (why, not_until.wait_time_from(self.clock.now())))
    }

    /// Drops the buckets that have refilled (their clients are as new) and
    /// gives back the maps' spare room; returns how many buckets are held.
    pub fn forget(&self) -> usize {
        let mut held = 0;
        if let Some(l) = &self.addresses {
            l.retain_recent();
            l.shrink_to_fit();
            held += l.len();
        }
        if let Some(l) = &self.credentials {
            l.retain_recent();
            l.shrink_to_fit();
            held += l.len();
        }
        for l in [&self.messages, &self.subscribes, &self.watermarks]
            .into_iter()
            .flatten()
        {
            l.retain_recent();
            l.shrink_to_fit();
            held += l.len();
        }
        held
    }
}

/// The client an address stands for: an IPv4 address, or an IPv6 /64 (a
/// host gets a whole prefix, so one address per connection would be one
/// bucket per connection). IPv4-mapped IPv6 is IPv4.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Seconds for `Retry-After`: at least 1, rounded up.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.is_zero()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_refuse_nonsense() {
        assert_eq!("20,50".parse::<Rate>(), Ok(Rate::per_second(20, 50)));
        assert_eq!("20/s,50".parse::<Rate>(), Ok(Rate::per_second(20, 50)));
        assert_eq!("7".parse::<Rate>(), Ok(Rate::per_second(7, 7)));
        assert_eq!(
            "1/m,3".parse::<Rate>(),
            Ok(Rate {
                tokens: 1,
                per: Per::Minute,
                burst: 3
            })
        );
        assert_eq!(
            "0".parse::<Rate>().map(|r| r.quota().is_none()),
            Ok(true),
            "0 is off"
        );
        for bad in ["", "x", "5,", "5,0", "-1", "1,2,3", "5/h", "5/"] {
            let e = bad.parse::<Rate>().unwrap_err();
            assert!(e.contains("RATE[,BURST]"), "{bad}: {e}");
        }
    }

    #[test]
    fn an_address_gets_its_burst_then_waits() {
        let cfg = RateConfig {
            connections_per_address: Rate::per_second(1, 3),
            ..RateConfig::off()
        };
        let l = RateLimits::new(&cfg);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(l.connection_from(a), Ok(()));
        }
        let (why, wait) = l.connection_from(a).unwrap_err();
        assert_eq!(why, Limited::ConnectionsPerAddress);
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert_eq!(retry_after_secs(wait), 1);
        // Another address has its own bucket; the limit on messages is off.
        assert_eq!(l.connection_from("10.0.0.2".parse().unwrap()), Ok(()));
        assert_eq!(l.message_on(1, true), Ok(()));
    }

    #[test]
    fn ipv6_clients_are_their_64_and_mapped_ipv4_is_ipv4() {
        let k = |s: &str| client_key(s.parse().unwrap());
        assert_eq!(k("2001:db8:1:2:aaaa::1"), k("2001:db8:1:2:bbbb::9"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("::ffff:10.1.2.3"), k("10.1.2.3"));
    }

    #[test]
    fn credentials_and_connections_have_their_own_buckets() {
        let cfg = RateConfig {
            connections_per_credential: Rate::per_second(1, 1),
            messages: Rate::per_second(1, 2),
            subscribes: Rate::per_second(1, 1),
            ..RateConfig::off()
        };
        let l = RateLimits::new(&cfg);
        assert_eq!(l.connection_with("token-a"), Ok(()));
        assert_eq!(
            l.connection_with("token-a").map_err(|e| e.0),
            Err(Limited::ConnectionsPerCredential)
        );
        assert_eq!(l.connection_with("token-b"), Ok(()));
        assert_eq!(l.message_on(7, true), Ok(()));
        assert_eq!(l.message_on(7, true), Err(Limited::Subscribes));
        assert_eq!(l.message_on(7, false), Err(Limited::Messages));
        assert_eq!(l.message_on(8, false), Ok(()), "another connection");
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
