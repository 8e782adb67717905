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

use std::rc::Rc;

use weir_replication::{AclOperation, ClientQuotas, QuotaEntity, QuotaName};

use super::Caller;
use crate::error::{BrokerError, BrokerResult};
use crate::ops;
use crate::router::ShardCall;
use crate::shard::Shard;

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

// ---- managing quotas (DescribeClientQuotas, AlterClientQuotas) --------------------

/// Kafka's entity type names.
pub const USER: &str = "user";
pub const CLIENT_ID: &str = "client-id";

fn invalid(message: String) -> BrokerError {
    BrokerError::InvalidRequest(message)
}

/// An entity as Kafka's quota requests carry it: (entity type, name; `None` for the
/// default), each type at most once.
pub fn entity(parts: &[(&str, Option<&str>)]) -> BrokerResult<QuotaEntity> {
    let mut entity = QuotaEntity {
        user: None,
        client_id: None,
    };
    for (kind, name) in parts {
        let slot = match *kind {
            USER => &mut entity.user,
            CLIENT_ID => &mut entity.client_id,
            other => {
                return Err(invalid(format!(
                    "quota entity type {other:?}: {USER} or {CLIENT_ID}"
                )));
            }
        };
        if slot.is_some() {
            return Err(invalid(format!("quota entity names {kind} twice")));
        }
        *slot = Some(match name {
            Some(name) => QuotaName::Named(name.to_string()),
            None => QuotaName::Default,
        });
    }
    if entity.user.is_none() && entity.client_id.is_none() {
        return Err(invalid("a quota entity names a user or a client id".into()));
    }
    Ok(entity)
}

/// An entity's parts as Kafka's responses carry them.
pub fn entity_parts(entity: &QuotaEntity) -> Vec<(&'static str, Option<&str>)> {
    fn name(n: &QuotaName) -> Option<&str> {
        match n {
            QuotaName::Default => None,
            QuotaName::Named(name) => Some(name),
        }
    }
    let mut parts = Vec::with_capacity(2);
    if let Some(user) = &entity.user {
        parts.push((USER, name(user)));
    }
    if let Some(client_id) = &entity.client_id {
        parts.push((CLIENT_ID, name(client_id)));
    }
    parts
}

/// How a DescribeClientQuotas component matches an entity's part (Kafka's match types).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartMatch {
    /// Kafka's 0: that name.
    Exact(String),
    /// 1: the default.
    Default,
    /// 2: any name or the default (the part is there).
    Specified,
}

/// Which quotas DescribeClientQuotas lists: entities with every component's part
/// matching, and (`strict`) no other part.
#[derive(Debug, Clone)]
pub struct QuotaFilter {
    pub components: Vec<(String, PartMatch)>,
    pub strict: bool,
}

impl QuotaFilter {
    /// Kafka's components: (entity type, match type, match).
    pub fn new(components: &[(&str, i8, Option<&str>)], strict: bool) -> BrokerResult<QuotaFilter> {
        let mut checked: Vec<(String, PartMatch)> = Vec::new();
        for (kind, match_type, name) in components {
            if ![USER, CLIENT_ID].contains(kind) {
                return Err(invalid(format!(
                    "quota entity type {kind:?}: {USER} or {CLIENT_ID}"
                )));
            }
            if checked.iter().any(|(k, _)| k == kind) {
                return Err(invalid(format!("the filter names {kind} twice")));
            }
            let part = match (match_type, name) {
                (0, Some(name)) => PartMatch::Exact(name.to_string()),
                (0, None) => return Err(invalid(format!("an exact match of {kind} needs a name"))),
                (1, _) => PartMatch::Default,
                (2, _) => PartMatch::Specified,
                (other, _) => return Err(invalid(format!("match type {other}: 0, 1 or 2"))),
            };
            checked.push((kind.to_string(), part));
        }
        Ok(QuotaFilter {
            components: checked,
            strict,
        })
    }

    pub fn matches(&self, entity: &QuotaEntity) -> bool {
        let part = |kind: &str| match kind {
            USER => entity.user.as_ref(),
            _ => entity.client_id.as_ref(),
        };
        let each = self
            .components
            .iter()
            .all(|(kind, wanted)| match (part(kind), wanted) {
                (Some(QuotaName::Named(name)), PartMatch::Exact(wanted)) => name == wanted,
                (Some(QuotaName::Default), PartMatch::Default) => true,
                (Some(_), PartMatch::Specified) => true,
                _ => false,
            });
        let named = |kind: &str| self.components.iter().any(|(k, _)| k == kind);
        let others = (entity.user.is_some() && !named(USER))
            || (entity.client_id.is_some() && !named(CLIENT_ID));
        each && !(self.strict && others)
    }
}

/// The quotas `filter` selects; DESCRIBE_CONFIGS on the cluster, with the authorizer on.
pub fn describe(
    shard: &Shard,
    caller: &Caller,
    filter: &QuotaFilter,
) -> BrokerResult<Vec<(QuotaEntity, std::collections::BTreeMap<String, u64>)>> {
    shard
        .authorizer
        .check_cluster(caller, AclOperation::DescribeConfigs)?;
    Ok(shard
        .image()
        .quotas
        .iter()
        .filter(|(entity, _)| filter.matches(entity))
        .map(|(entity, keys)| (entity.clone(), keys.clone()))
        .collect())
}

/// A checked change: the entity, the key and its new value (`None`: removed).
type QuotaChange = (QuotaEntity, String, Option<u64>);

/// One entity's changes: each key's new value, `None` to remove it.
pub type EntityChanges = (BrokerResult<QuotaEntity>, Vec<(String, Option<f64>)>);

/// Applies the changes (one metadata entry for every valid entity): per entity, all of
/// its changes or, if one is wrong, none. ALTER_CONFIGS on the cluster, with the
/// authorizer on.
pub async fn alter(
    shard: &Rc<Shard>,
    caller: &Caller,
    entries: Vec<EntityChanges>,
    validate_only: bool,
) -> Vec<BrokerResult<()>> {
    let allowed = shard
        .authorizer
        .check_cluster(caller, AclOperation::AlterConfigs);
    let checked: Vec<BrokerResult<Vec<QuotaChange>>> = entries
        .into_iter()
        .map(|(entity, changes)| {
            allowed.as_ref().map_err(BrokerError::same)?;
            let entity = entity?;
            let mut keys: Vec<&str> = Vec::new();
            changes
                .iter()
                .map(|(key, value)| {
                    if keys.contains(&key.as_str()) {
                        return Err(invalid(format!("quota {key} is changed twice")));
                    }
                    keys.push(key);
                    let value = match value {
                        Some(value) => Some(value_of(key, *value).map_err(invalid)?),
                        None if KEYS.contains(&key.as_str()) => None,
                        None => return Err(invalid(value_of(key, 0.0).unwrap_err())),
                    };
                    Ok((entity.clone(), key.clone(), value))
                })
                .collect()
        })
        .collect();
    let changes: Vec<_> = checked.iter().flatten().flatten().cloned().collect();
    let applied = if validate_only || changes.is_empty() {
        Ok(())
    } else {
        ops::admin(shard, ShardCall::AlterClientQuotas { changes }).await
    };
    checked
        .into_iter()
        .map(|result| match (result, &applied) {
            (Err(error), _) => Err(error),
            (Ok(_), Ok(())) => Ok(()),
            (Ok(_), Err(error)) => Err(error.same()),
        })
        .collect()
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

    /// DescribeClientQuotas' filters, as Kafka's: exact, default and specified parts,
    /// strict or not.
    #[test]
    fn filters_select_entities_as_kafkas_do() {
        let alice_app = entity(&[(USER, Some("alice")), (CLIENT_ID, Some("app"))]).unwrap();
        let alice = entity(&[(USER, Some("alice"))]).unwrap();
        let default_user = entity(&[(USER, None)]).unwrap();
        let app = entity(&[(CLIENT_ID, Some("app"))]).unwrap();
        let all = [&alice_app, &alice, &default_user, &app];
        let select = |components: &[(&str, i8, Option<&str>)], strict| {
            let filter = QuotaFilter::new(components, strict).unwrap();
            all.iter().filter(|e| filter.matches(e)).count()
        };
        assert_eq!(select(&[(USER, 0, Some("alice"))], false), 2);
        assert_eq!(select(&[(USER, 0, Some("alice"))], true), 1);
        assert_eq!(select(&[(USER, 1, None)], false), 1);
        assert_eq!(select(&[(USER, 2, None)], false), 3);
        assert_eq!(select(&[(CLIENT_ID, 2, None)], true), 1);
        assert_eq!(select(&[], false), 4);
        assert!(QuotaFilter::new(&[("ip", 2, None)], false).is_err());
        assert!(entity(&[(USER, None), (USER, Some("x"))]).is_err());
        assert!(entity(&[]).is_err());
        assert_eq!(
            entity_parts(&alice_app),
            [(USER, Some("alice")), (CLIENT_ID, Some("app"))]
        );
    }

    #[test]
    fn values_are_whole_rates_of_known_keys() {
        assert_eq!(value_of(PRODUCER_BYTE_RATE, 1048576.0), Ok(1 << 20));
        assert!(value_of("request_percentage", 50.0).is_err());
        assert!(value_of(CONSUMER_BYTE_RATE, -1.0).is_err());
        assert!(value_of(REQUEST_RATE, f64::NAN).is_err());
    }
}
