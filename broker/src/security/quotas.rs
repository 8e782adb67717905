//! Client quotas: how many bytes a second a client may produce and fetch, and how many
//! requests a second it may send, per user and client id (Kafka's client quotas, with
//! its entities and its order of precedence), shared by every shard of the broker.
//!
//! A client over its quota is throttled the way Kafka throttles since KIP-219: its
//! response is sent at once with `throttle_time_ms`, and its connection is read no more
//! until that time has passed, so a client that ignores the hint is held back anyway.
//!
//! Kafka measures a rate over sampled windows; here each tracked entity carries the time
//! its usage so far would have been paid for at its quota (a virtual clock: generic cell
//! rate). A request moves that time on by `amount / quota`; how far it runs ahead of now,
//! less a burst allowance, is the throttle. Over any span the entity gets at most its
//! quota times the span, plus the burst: the window edge effects of sampling are not
//! there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir_replication::{ClientQuotas, QuotaEntity, QuotaName};

/// Bytes a second of produce requests (Kafka's key).
pub const PRODUCER_BYTE_RATE: &str = "producer_byte_rate";
/// Bytes a second of fetched records (Kafka's key).
pub const CONSUMER_BYTE_RATE: &str = "consumer_byte_rate";
/// Requests a second, of any kind but the SASL exchange (weir's key: Kafka's
/// `request_percentage` is a share of its request threads' time, which a
/// thread-per-core broker does not measure per request).
pub const REQUEST_RATE: &str = "request_rate";

/// The keys a quota may have.
pub const KEYS: [&str; 3] = [PRODUCER_BYTE_RATE, CONSUMER_BYTE_RATE, REQUEST_RATE];

/// No throttle is longer than this, so a client's requests in flight do not time out
/// (clients wait 30 s by default); an entity still in debt is throttled again on its
/// next request.
pub const THROTTLE_MAX: Duration = Duration::from_secs(10);

/// Tracked entities beyond which those whose usage is paid for are dropped.
const TRACKED_MAX: usize = 10_000;

/// What a request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaKind {
    Produce,
    Fetch,
    Request,
}

impl QuotaKind {
    pub fn key(self) -> &'static str {
        match self {
            QuotaKind::Produce => PRODUCER_BYTE_RATE,
            QuotaKind::Fetch => CONSUMER_BYTE_RATE,
            QuotaKind::Request => REQUEST_RATE,
        }
    }
}

/// How closely an entity's part matches a client's user or client id: a name of its own
/// (0), the default (1), or no part (2).
fn rank(part: &Option<QuotaName>, actual: &str) -> Option<usize> {
    match part {
        Some(QuotaName::Named(name)) if name == actual => Some(0),
        Some(QuotaName::Named(_)) => None,
        Some(QuotaName::Default) => Some(1),
        None => Some(2),
    }
}

/// The quota of `key` that applies to a client of `user` with `client_id`, and the
/// entity it is defined on: the most specific one, in Kafka's order (user and client
/// id, user and default client id, user, default user and client id, default user and
/// default client id, default user, client id, default client id).
pub fn applying<'a>(
    quotas: &'a ClientQuotas,
    user: &str,
    client_id: &str,
    key: &str,
) -> Option<(&'a QuotaEntity, u64)> {
    quotas
        .iter()
        .filter_map(|(entity, keys)| {
            let value = *keys.get(key)?;
            let user_rank = rank(&entity.user, user)?;
            let client_rank = rank(&entity.client_id, client_id)?;
            Some((user_rank * 3 + client_rank, entity, value))
        })
        .min_by_key(|(rank, _, _)| *rank)
        .map(|(_, entity, value)| (entity, value))
}

/// Whose usage is counted together: the quota's kind, and the user and client id the
/// entity names (a default part counts each user, or client id, apart, as Kafka's
/// default quotas do; a missing part counts them all together).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Tracked {
    kind: QuotaKind,
    user: Option<String>,
    client_id: Option<String>,
}

/// The usage of every throttled entity, shared by the shards (one lock per request
/// that a quota applies to; none when no quota is set).
#[derive(Debug)]
pub struct QuotaManager {
    burst: Duration,
    paid_until: Mutex<HashMap<Tracked, Instant>>,
}

impl QuotaManager {
    /// `burst`: how far ahead of its quota an entity may run before it is throttled.
    pub fn new(burst: Duration) -> Arc<QuotaManager> {
        Arc::new(QuotaManager {
            burst,
            paid_until: Mutex::new(HashMap::new()),
        })
    }

    /// Counts `amount` (bytes, or one request) against the quota that applies, and
    /// returns how long the client must now hold off (zero: it is within its quota).
    pub fn record(
        &self,
        quotas: &ClientQuotas,
        kind: QuotaKind,
        user: &str,
        client_id: &str,
        amount: u64,
        now: Instant,
    ) -> Duration {
        if quotas.is_empty() {
            return Duration::ZERO;
        }
        let Some((entity, quota)) = applying(quotas, user, client_id, kind.key()) else {
            return Duration::ZERO;
        };
        let tracked = Tracked {
            kind,
            user: entity.user.as_ref().map(|_| user.to_string()),
            client_id: entity.client_id.as_ref().map(|_| client_id.to_string()),
        };
        // A quota of 0 lets nothing through: every request is held off the longest.
        let cost = if quota == 0 {
            THROTTLE_MAX
        } else {
            Duration::from_secs_f64(amount as f64 / quota as f64)
        };
        let mut paid_until = self.paid_until.lock().unwrap_or_else(|e| e.into_inner());
        if paid_until.len() >= TRACKED_MAX && !paid_until.contains_key(&tracked) {
            paid_until.retain(|_, until| *until > now);
        }
        let until = paid_until.entry(tracked).or_insert(now);
        *until = (*until).max(now) + cost;
        until
            .saturating_duration_since(now)
            .saturating_sub(self.burst)
            .min(THROTTLE_MAX)
    }
}

/// A throttle as responses carry it (`throttle_time_ms`).
pub fn throttle_ms(throttle: Duration) -> i32 {
    i32::try_from(throttle.as_millis()).unwrap_or(i32::MAX)
}

/// A quota value as Kafka's AlterClientQuotas carries it (a double): a whole,
/// non-negative number of bytes or requests a second.
pub fn value_of(key: &str, value: f64) -> Result<u64, String> {
    if !KEYS.contains(&key) {
        return Err(format!("quota key {key} is not one of {KEYS:?}"));
    }
    if !value.is_finite() || value < 0.0 || value > u64::MAX as f64 {
        return Err(format!("quota {key} = {value}: a rate of 0 or more"));
    }
    Ok(value as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &str) -> Option<QuotaName> {
        Some(QuotaName::Named(name.into()))
    }

    fn quotas(entries: &[(Option<QuotaName>, Option<QuotaName>, u64)]) -> ClientQuotas {
        entries
            .iter()
            .map(|(user, client_id, value)| {
                let entity = QuotaEntity {
                    user: user.clone(),
                    client_id: client_id.clone(),
                };
                let keys = [(PRODUCER_BYTE_RATE.to_string(), *value)].into();
                (entity, keys)
            })
            .collect()
    }

    /// Kafka's order: the most specific entity that matches wins.
    #[test]
    fn the_most_specific_quota_applies() {
        let d = || Some(QuotaName::Default);
        let all = quotas(&[
            (named("alice"), named("app"), 1),
            (named("alice"), d(), 2),
            (named("alice"), None, 3),
            (d(), named("app"), 4),
            (d(), d(), 5),
            (d(), None, 6),
            (None, named("app"), 7),
            (None, d(), 8),
        ]);
        let value = |q: &ClientQuotas, user, client| {
            applying(q, user, client, PRODUCER_BYTE_RATE).map(|(_, v)| v)
        };
        assert_eq!(value(&all, "alice", "app"), Some(1));
        assert_eq!(value(&all, "alice", "other"), Some(2));
        assert_eq!(value(&all, "bob", "app"), Some(4));
        assert_eq!(value(&all, "bob", "other"), Some(5));
        let without_defaults = quotas(&[(named("alice"), None, 3), (None, named("app"), 7)]);
        assert_eq!(value(&without_defaults, "alice", "app"), Some(3));
        assert_eq!(value(&without_defaults, "bob", "app"), Some(7));
        assert_eq!(value(&without_defaults, "bob", "other"), None);
        assert_eq!(
            applying(&all, "alice", "app", CONSUMER_BYTE_RATE),
            None,
            "another key"
        );
    }

    /// Within the burst nothing is throttled; beyond it, the throttle is what brings
    /// the entity back to its quota; a default user quota counts each user apart.
    #[test]
    fn usage_beyond_the_quota_and_burst_is_throttled() {
        let manager = QuotaManager::new(Duration::from_millis(500));
        let q = quotas(&[(Some(QuotaName::Default), None, 1000)]);
        let now = Instant::now();
        let record =
            |user, amount, at| manager.record(&q, QuotaKind::Produce, user, "app", amount, at);
        assert_eq!(record("alice", 500, now), Duration::ZERO);
        assert_eq!(record("alice", 1000, now), Duration::from_millis(1000));
        assert_eq!(record("bob", 500, now), Duration::ZERO, "bob has his own");
        // Two seconds later alice's 1.5 s of usage is paid for.
        let later = now + Duration::from_secs(2);
        assert_eq!(record("alice", 100, later), Duration::ZERO);
        let huge = record("alice", 1 << 40, later);
        assert_eq!(huge, THROTTLE_MAX);
        let none = ClientQuotas::new();
        assert_eq!(
            manager.record(&none, QuotaKind::Produce, "alice", "app", 1 << 40, later),
            Duration::ZERO
        );
    }

    /// Over a long run of requests that each wait their throttle out, the bytes that
    /// get through are the quota times the time taken, plus the burst.
    #[test]
    fn a_client_that_waits_its_throttles_gets_its_quota() {
        let manager = QuotaManager::new(Duration::from_millis(500));
        let q = quotas(&[(named("alice"), None, 100_000)]);
        let start = Instant::now();
        let mut now = start;
        let mut sent = 0u64;
        while now < start + Duration::from_secs(10) {
            let throttle = manager.record(&q, QuotaKind::Produce, "alice", "", 16_384, now);
            sent += 16_384;
            now += throttle + Duration::from_millis(1);
        }
        let rate = sent as f64 / (now - start).as_secs_f64();
        assert!((100_000.0..=106_000.0).contains(&rate), "{rate}");
    }

    #[test]
    fn values_are_whole_rates_of_known_keys() {
        assert_eq!(value_of(PRODUCER_BYTE_RATE, 1048576.0), Ok(1 << 20));
        assert!(value_of("request_percentage", 50.0).is_err());
        assert!(value_of(CONSUMER_BYTE_RATE, -1.0).is_err());
        assert!(value_of(REQUEST_RATE, f64::NAN).is_err());
    }
}
