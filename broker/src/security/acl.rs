//! Kafka's authorization rules over the ACLs of the cluster metadata: super users may do
//! anything; otherwise the ACLs whose pattern matches the resource decide (a literal name,
//! the literal `*`, or a prefix of the name), a DENY matching the principal, host and
//! operation wins over any ALLOW, an ALLOW of READ, WRITE, DELETE or ALTER implies
//! DESCRIBE and one of ALTER_CONFIGS implies DESCRIBE_CONFIGS, and a resource no ACL
//! matches is allowed only under `allow.everyone.if.no.acl.found`.
//!
//! The index answers with a lookup per prefix of the name instead of a scan of every
//! ACL; `tests` checks it against a plain reading of the rules on random ACL sets.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use weir_replication::{AclBinding, AclOperation, AclPatternType, AclPermission, AclResourceType};

use super::{Caller, Principal};
use crate::error::{BrokerError, BrokerResult};
use crate::ops;
use crate::router::ShardCall;
use crate::shard::Shard;

/// The ACLs arranged by what they match; built once per metadata change.
#[derive(Debug, Default)]
pub struct AclIndex {
    /// By resource type, then name: looked up with the request's `&str`, no allocation.
    literal: HashMap<AclResourceType, HashMap<String, Vec<Arc<AclBinding>>>>,
    prefixed: HashMap<AclResourceType, HashMap<String, Vec<Arc<AclBinding>>>>,
    /// The lengths of the prefixed patterns of each type (to look up only those).
    prefix_lengths: HashMap<AclResourceType, Vec<usize>>,
}

/// The broker's authorization settings.
#[derive(Debug, Clone, Default)]
pub struct AuthorizerConfig {
    /// Principals allowed everything (`User:admin`; Kafka's `super.users`).
    pub super_users: Vec<String>,
    /// Whether a resource that no ACL matches is open to all (Kafka's
    /// `allow.everyone.if.no.acl.found`).
    pub allow_if_no_acl: bool,
}

impl AclIndex {
    pub fn new<'a>(acls: impl IntoIterator<Item = &'a AclBinding>) -> AclIndex {
        let mut index = AclIndex::default();
        for acl in acls {
            let (kind, name) = (acl.resource_type, acl.resource_name.clone());
            let acl = Arc::new(acl.clone());
            let map = match acl.pattern {
                AclPatternType::Literal => &mut index.literal,
                AclPatternType::Prefixed => {
                    let lengths = index.prefix_lengths.entry(kind).or_default();
                    if !lengths.contains(&name.len()) {
                        lengths.push(name.len());
                    }
                    &mut index.prefixed
                }
            };
            map.entry(kind)
                .or_default()
                .entry(name)
                .or_default()
                .push(acl);
        }
        index
    }

    /// The ACLs whose pattern matches the resource.
    fn matching<'a>(
        &'a self,
        resource_type: AclResourceType,
        name: &'a str,
    ) -> impl Iterator<Item = &'a AclBinding> + 'a {
        let literal = self.literal.get(&resource_type);
        let literal = [name, "*"]
            .into_iter()
            .filter_map(move |n| literal?.get(n))
            .flatten();
        let prefixed = self.prefixed.get(&resource_type);
        let prefixed = self
            .prefix_lengths
            .get(&resource_type)
            .into_iter()
            .flatten()
            .filter_map(move |length| name.get(..*length))
            .filter_map(move |prefix| prefixed?.get(prefix))
            .flatten();
        literal.chain(prefixed).map(|acl| &**acl)
    }

    /// Whether `caller` may do `operation` on the resource.
    pub fn authorize(
        &self,
        config: &AuthorizerConfig,
        caller: &Caller,
        operation: AclOperation,
        resource_type: AclResourceType,
        name: &str,
    ) -> bool {
        let principal = caller.principal_text();
        if config.super_users.iter().any(|u| u == principal) {
            return true;
        }
        let mut any = false;
        let mut allowed = false;
        for acl in self.matching(resource_type, name) {
            any = true;
            let who = acl.principal == principal || acl.principal == "User:*";
            let from = acl.host == "*" || acl.host == caller.host;
            if !(who && from) {
                continue;
            }
            match acl.permission {
                AclPermission::Deny
                    if acl.operation == operation || acl.operation == AclOperation::All =>
                {
                    return false;
                }
                AclPermission::Deny => {}
                AclPermission::Allow => allowed |= allows(acl.operation, operation),
            }
        }
        if !any {
            return config.allow_if_no_acl;
        }
        allowed
    }
}

impl AclIndex {
    /// Whether `caller` may do `operation` on some resource of the type (Kafka's
    /// `authorizeByResourceType`, for InitProducerId without a transactional id): an
    /// ALLOW that no DENY covers, or no ACL of the type under `allow_if_no_acl`.
    pub fn authorize_some(
        &self,
        config: &AuthorizerConfig,
        caller: &Caller,
        operation: AclOperation,
        resource_type: AclResourceType,
    ) -> bool {
        let principal = caller.principal_text();
        if config.super_users.iter().any(|u| u == principal) {
            return true;
        }
        let of_type: Vec<&AclBinding> = [&self.literal, &self.prefixed]
            .into_iter()
            .filter_map(|map| map.get(&resource_type))
            .flat_map(|by_name| by_name.values().flatten().map(|a| &**a))
            .collect();
        if of_type.is_empty() {
            return config.allow_if_no_acl;
        }
        let applies = |acl: &&AclBinding| {
            (acl.principal == principal || acl.principal == "User:*")
                && (acl.host == "*" || acl.host == caller.host)
        };
        let denies: Vec<&AclBinding> = of_type
            .iter()
            .copied()
            .filter(applies)
            .filter(|a| a.permission == AclPermission::Deny)
            .filter(|a| a.operation == operation || a.operation == AclOperation::All)
            .collect();
        let covers = |deny: &AclBinding, allow: &AclBinding| match deny.pattern {
            AclPatternType::Literal => {
                deny.resource_name == "*"
                    || (allow.pattern == AclPatternType::Literal
                        && deny.resource_name == allow.resource_name)
            }
            AclPatternType::Prefixed => allow.resource_name.starts_with(&deny.resource_name),
        };
        of_type
            .iter()
            .copied()
            .filter(applies)
            .filter(|a| a.permission == AclPermission::Allow && allows(a.operation, operation))
            .any(|allow| !denies.iter().any(|deny| covers(deny, allow)))
    }
}

/// Whether an ALLOW of `granted` covers `wanted`.
fn allows(granted: AclOperation, wanted: AclOperation) -> bool {
    use AclOperation::*;
    granted == All
        || granted == wanted
        || (wanted == Describe && matches!(granted, Read | Write | Delete | Alter))
        || (wanted == DescribeConfigs && granted == AlterConfigs)
}

/// The broker's enforcement of the ACLs: off unless `authorizer_enabled`; on, every
/// request is checked against an index of the current metadata's ACLs, rebuilt when
/// they change (`update`, on each metadata image).
#[derive(Debug)]
pub struct Authorizer {
    /// `None`: authorization is off and everything is allowed.
    config: Option<AuthorizerConfig>,
    /// The ACLs the index was built from (compared by pointer) and the index.
    index: RefCell<(Arc<BTreeSet<AclBinding>>, Rc<AclIndex>)>,
}

impl Authorizer {
    pub fn new(config: Option<AuthorizerConfig>) -> Authorizer {
        Authorizer {
            config,
            index: RefCell::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.config.is_some()
    }

    /// Takes the ACLs of a new metadata image (a pointer comparison when they did not
    /// change).
    pub fn update(&self, acls: &Arc<BTreeSet<AclBinding>>) {
        if self.config.is_none() || Arc::ptr_eq(&self.index.borrow().0, acls) {
            return;
        }
        *self.index.borrow_mut() = (acls.clone(), Rc::new(AclIndex::new(acls.iter())));
    }

    /// Whether `caller` may do `operation` on the resource.
    pub fn allows(
        &self,
        caller: &Caller,
        operation: AclOperation,
        resource_type: AclResourceType,
        name: &str,
    ) -> bool {
        let Some(config) = &self.config else {
            return true;
        };
        let index = self.index.borrow().1.clone();
        index.authorize(config, caller, operation, resource_type, name)
    }

    /// Whether `caller` may do `operation` on some resource of the type.
    pub fn allows_some(
        &self,
        caller: &Caller,
        operation: AclOperation,
        resource_type: AclResourceType,
    ) -> bool {
        let Some(config) = &self.config else {
            return true;
        };
        let index = self.index.borrow().1.clone();
        index.authorize_some(config, caller, operation, resource_type)
    }

    /// `allows` as a result: the error names who was refused what, with the Kafka code
    /// of the resource type (TOPIC_, GROUP_, CLUSTER_ or
    /// TRANSACTIONAL_ID_AUTHORIZATION_FAILED).
    pub fn check(
        &self,
        caller: &Caller,
        operation: AclOperation,
        resource_type: AclResourceType,
        name: &str,
    ) -> BrokerResult<()> {
        if self.allows(caller, operation, resource_type, name) {
            return Ok(());
        }
        Err(BrokerError::Unauthorized {
            principal: caller.principal.to_string(),
            operation,
            resource_type,
            name: name.to_string(),
        })
    }

    /// `check` on the cluster resource.
    pub fn check_cluster(&self, caller: &Caller, operation: AclOperation) -> BrokerResult<()> {
        self.check(
            caller,
            operation,
            AclResourceType::Cluster,
            CLUSTER_RESOURCE,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{Arbitrary, Gen, QuickCheck};

    const NAMES: [&str; 6] = ["*", "orders", "orders-eu", "ord", "payments", "o"];
    const USERS: [&str; 4] = ["User:alice", "User:bob", "User:*", "User:admin"];
    const HOSTS: [&str; 3] = ["*", "10.0.0.1", "10.0.0.2"];

    fn pick<T: Copy>(g: &mut Gen, items: &[T]) -> T {
        *g.choose(items).unwrap()
    }

    #[derive(Debug, Clone)]
    struct Case {
        acls: Vec<AclBinding>,
        super_users: Vec<String>,
        allow_if_no_acl: bool,
        user: &'static str,
        host: &'static str,
        operation: AclOperation,
        resource_type: AclResourceType,
        name: &'static str,
    }

    impl Arbitrary for Case {
        fn arbitrary(g: &mut Gen) -> Case {
            let count = usize::arbitrary(g) % 8;
            let acls = (0..count)
                .map(|_| AclBinding {
                    resource_type: pick(g, &AclResourceType::ALL),
                    resource_name: pick(g, &NAMES).to_string(),
                    pattern: pick(g, &[AclPatternType::Literal, AclPatternType::Prefixed]),
                    principal: pick(g, &USERS).to_string(),
                    host: pick(g, &HOSTS).to_string(),
                    operation: pick(g, &AclOperation::ALL),
                    permission: pick(g, &[AclPermission::Allow, AclPermission::Deny]),
                })
                .collect();
            let super_users = if bool::arbitrary(g) {
                vec!["User:admin".to_string()]
            } else {
                vec![]
            };
            Case {
                acls,
                super_users,
                allow_if_no_acl: bool::arbitrary(g),
                // Requesters are real users, never the wildcard.
                user: pick(
                    g,
                    &["User:alice", "User:bob", "User:admin", "User:ANONYMOUS"],
                ),
                host: pick(g, &["10.0.0.1", "10.0.0.2"]),
                operation: pick(g, &AclOperation::ALL[1..]),
                resource_type: pick(g, &AclResourceType::ALL),
                name: pick(g, &NAMES[1..]),
            }
        }
    }

    /// Kafka's rules read straight off its documentation, one ACL at a time over the
    /// whole list (what `AclIndex` must agree with).
    fn model(case: &Case) -> bool {
        if case.super_users.iter().any(|u| u == case.user) {
            return true;
        }
        let resource_matches = |acl: &AclBinding| {
            acl.resource_type == case.resource_type
                && match acl.pattern {
                    AclPatternType::Literal => {
                        acl.resource_name == case.name || acl.resource_name == "*"
                    }
                    AclPatternType::Prefixed => case.name.starts_with(&acl.resource_name),
                }
        };
        let relevant: Vec<&AclBinding> = case.acls.iter().filter(|a| resource_matches(a)).collect();
        if relevant.is_empty() {
            return case.allow_if_no_acl;
        }
        let applies = |acl: &&&AclBinding| {
            (acl.principal == case.user || acl.principal == "User:*")
                && (acl.host == "*" || acl.host == case.host)
        };
        let denied = relevant.iter().filter(applies).any(|acl| {
            acl.permission == AclPermission::Deny
                && (acl.operation == case.operation || acl.operation == AclOperation::All)
        });
        if denied {
            return false;
        }
        // The operations whose ALLOW grants the one asked for.
        let granting: Vec<AclOperation> = match case.operation {
            AclOperation::Describe => vec![
                AclOperation::Describe,
                AclOperation::Read,
                AclOperation::Write,
                AclOperation::Delete,
                AclOperation::Alter,
            ],
            AclOperation::DescribeConfigs => {
                vec![AclOperation::DescribeConfigs, AclOperation::AlterConfigs]
            }
            other => vec![other],
        };
        relevant.iter().filter(applies).any(|acl| {
            acl.permission == AclPermission::Allow
                && (acl.operation == AclOperation::All || granting.contains(&acl.operation))
        })
    }

    fn decide(case: &Case) -> bool {
        let index = AclIndex::new(&case.acls);
        let config = AuthorizerConfig {
            super_users: case.super_users.clone(),
            allow_if_no_acl: case.allow_if_no_acl,
        };
        let caller = Caller::new(
            Principal::user(case.user.trim_start_matches("User:")),
            case.host,
        );
        index.authorize(
            &config,
            &caller,
            case.operation,
            case.resource_type,
            case.name,
        )
    }

    #[test]
    fn the_index_agrees_with_kafkas_rules() {
        fn property(case: Case) -> bool {
            decide(&case) == model(&case)
        }
        QuickCheck::new()
            .tests(20_000)
            .quickcheck(property as fn(Case) -> bool);
    }

    fn acl(
        name: &str,
        pattern: AclPatternType,
        principal: &str,
        operation: AclOperation,
        permission: AclPermission,
    ) -> AclBinding {
        AclBinding {
            resource_type: AclResourceType::Topic,
            resource_name: name.into(),
            pattern,
            principal: principal.into(),
            host: "*".into(),
            operation,
            permission,
        }
    }

    #[test]
    fn filters_select_as_kafkas_do() {
        use AclOperation::*;
        use AclPatternType::*;
        use AclPermission::*;
        let prefixed = acl("orders-", Prefixed, "User:alice", Read, Allow);
        let wildcard = acl("*", Literal, "User:bob", Write, Deny);
        let literal = acl("orders-eu", Literal, "User:alice", Describe, Allow);
        let other = acl("payments", Literal, "User:alice", Read, Allow);
        let filter = |name: Option<&str>, pattern: i8, principal: Option<&str>| {
            AclFilter::new(1, name, pattern, principal, None, 1, 1).unwrap()
        };
        let selected = |f: &AclFilter| {
            [&prefixed, &wildcard, &literal, &other]
                .into_iter()
                .filter(|a| f.matches(a))
                .map(|a| a.resource_name.as_str())
                .collect::<Vec<_>>()
        };
        let everything = filter(None, ANY, None);
        assert_eq!(selected(&everything).len(), 4);
        // MATCH: what applies to the resource; ANY: that name, any pattern.
        assert_eq!(
            selected(&filter(Some("orders-eu"), MATCH, None)),
            ["orders-", "*", "orders-eu"]
        );
        assert_eq!(
            selected(&filter(Some("orders-eu"), ANY, None)),
            ["orders-eu"]
        );
        assert_eq!(selected(&filter(None, 4, None)), ["orders-"]);
        assert_eq!(selected(&filter(None, ANY, Some("User:bob"))), ["*"]);
        assert!(AclFilter::new(0, None, ANY, None, None, 1, 1).is_err());
        assert!(
            binding(2, "*", 4, "User:alice", "*", 3, 3).is_err(),
            "prefixed wildcard"
        );
        assert!(binding(4, "elsewhere", 3, "User:alice", "*", 7, 3).is_err());
        assert!(
            binding(2, "t", 3, "alice", "*", 3, 3).is_err(),
            "principal without type"
        );
        assert!(
            binding(2, "t", 3, "User:alice", "*", 1, 3).is_err(),
            "operation ANY"
        );
    }

    /// InitProducerId's rule: an ALLOW of WRITE on some topic, unless a DENY covers that
    /// ALLOW's pattern.
    #[test]
    fn some_topic_is_writable_unless_a_deny_covers_the_allow() {
        use AclOperation::*;
        use AclPatternType::*;
        use AclPermission::*;
        let config = AuthorizerConfig::default();
        let alice = Caller::new(Principal::user("alice"), "10.0.0.1");
        let some = |acls: &[AclBinding]| {
            AclIndex::new(acls).authorize_some(&config, &alice, Write, AclResourceType::Topic)
        };
        let write = acl("orders-", Prefixed, "User:alice", Write, Allow);
        assert!(some(std::slice::from_ref(&write)));
        assert!(!some(&[acl(
            "orders-",
            Prefixed,
            "User:alice",
            Read,
            Allow
        )]));
        assert!(!some(&[
            write.clone(),
            acl("orders", Prefixed, "User:*", Write, Deny)
        ]));
        assert!(!some(&[
            write.clone(),
            acl("*", Literal, "User:alice", All, Deny)
        ]));
        assert!(
            some(&[
                write.clone(),
                acl("orders-eu", Literal, "User:alice", Write, Deny)
            ]),
            "a literal DENY inside the prefix leaves the rest writable"
        );
        let superuser = AuthorizerConfig {
            super_users: vec!["User:alice".into()],
            allow_if_no_acl: false,
        };
        assert!(AclIndex::new(&[]).authorize_some(
            &superuser,
            &alice,
            Write,
            AclResourceType::Topic
        ));
    }

    /// The index follows the metadata's ACLs, and an authorizer that is off allows all.
    #[test]
    fn the_authorizer_follows_new_acls_and_is_off_unless_enabled() {
        let alice = Caller::new(Principal::user("alice"), "10.0.0.1");
        let read =
            |a: &Authorizer| a.allows(&alice, AclOperation::Read, AclResourceType::Topic, "t");
        let off = Authorizer::new(None);
        assert!(read(&off));
        let on = Authorizer::new(Some(AuthorizerConfig::default()));
        assert!(!read(&on));
        let acls = Arc::new(BTreeSet::from([acl(
            "t",
            AclPatternType::Literal,
            "User:alice",
            AclOperation::Read,
            AclPermission::Allow,
        )]));
        on.update(&acls);
        assert!(read(&on));
        let error = on
            .check(&alice, AclOperation::Write, AclResourceType::Topic, "t")
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "User:alice is not allowed WRITE on TOPIC t"
        );
        on.update(&Arc::new(BTreeSet::new()));
        assert!(!read(&on));
    }

    #[test]
    fn deny_wins_and_describe_is_implied() {
        use AclOperation::*;
        use AclPatternType::*;
        use AclPermission::*;
        let acls = [
            acl("orders-", Prefixed, "User:alice", Read, Allow),
            acl("orders-secret", Literal, "User:*", All, Deny),
        ];
        let index = AclIndex::new(&acls);
        let config = AuthorizerConfig::default();
        let alice = Caller::new(Principal::user("alice"), "10.0.0.1");
        let ask = |op, name| index.authorize(&config, &alice, op, AclResourceType::Topic, name);
        assert!(ask(Read, "orders-eu"));
        assert!(ask(Describe, "orders-eu"), "READ implies DESCRIBE");
        assert!(!ask(Write, "orders-eu"));
        assert!(!ask(Read, "orders-secret"), "deny wins");
        assert!(!ask(Read, "payments"), "no ACL, and allow.everyone is off");
    }
}

// ---- managing ACLs (CreateAcls, DescribeAcls, DeleteAcls) -------------------------

/// The name of the one cluster resource (Kafka's).
pub const CLUSTER_RESOURCE: &str = "kafka-cluster";

/// Kafka's ids of the filter-only values.
const ANY: i8 = 1;
const MATCH: i8 = 2;

fn invalid(message: String) -> BrokerError {
    BrokerError::InvalidRequest(message)
}

/// An ACL as Kafka's CreateAcls carries it, checked.
#[allow(clippy::too_many_arguments)]
pub fn binding(
    resource_type: i8,
    resource_name: &str,
    pattern: i8,
    principal: &str,
    host: &str,
    operation: i8,
    permission: i8,
) -> BrokerResult<AclBinding> {
    let resource_type = AclResourceType::from_id(resource_type)
        .ok_or_else(|| invalid(format!("resource type {resource_type} cannot have ACLs")))?;
    let pattern = AclPatternType::from_id(pattern)
        .ok_or_else(|| invalid(format!("pattern type {pattern}: LITERAL or PREFIXED")))?;
    let operation = AclOperation::from_id(operation)
        .ok_or_else(|| invalid(format!("operation {operation} is not one an ACL can have")))?;
    let permission = AclPermission::from_id(permission)
        .ok_or_else(|| invalid(format!("permission {permission}: ALLOW or DENY")))?;
    if resource_name.is_empty() {
        return Err(invalid("an ACL needs a resource name".into()));
    }
    if resource_type == AclResourceType::Cluster && resource_name != CLUSTER_RESOURCE {
        return Err(invalid(format!(
            "the cluster resource is named {CLUSTER_RESOURCE}, not {resource_name}"
        )));
    }
    if pattern == AclPatternType::Prefixed && resource_name == "*" {
        return Err(invalid(
            "a PREFIXED pattern cannot be the wildcard *".into(),
        ));
    }
    match principal.split_once(':') {
        Some((kind, name)) if kind == Principal::TYPE && !name.is_empty() => {}
        _ => {
            return Err(invalid(format!(
                "principal {principal:?}: expected User:NAME or User:*"
            )));
        }
    }
    if host.is_empty() {
        return Err(invalid("an ACL needs a host (* for any)".into()));
    }
    Ok(AclBinding {
        resource_type,
        resource_name: resource_name.to_string(),
        pattern,
        principal: principal.to_string(),
        host: host.to_string(),
        operation,
        permission,
    })
}

/// Which ACLs a DescribeAcls or DeleteAcls filter selects (Kafka's `AclBindingFilter`):
/// `None` matches anything.
#[derive(Debug, Clone)]
pub struct AclFilter {
    resource_type: Option<AclResourceType>,
    resource_name: Option<String>,
    pattern: PatternFilter,
    principal: Option<String>,
    host: Option<String>,
    operation: Option<AclOperation>,
    permission: Option<AclPermission>,
}

#[derive(Debug, Clone, Copy)]
enum PatternFilter {
    Any,
    /// The ACLs that apply to the named resource: its literal name, the wildcard, and
    /// every prefix of it.
    Match,
    Exactly(AclPatternType),
}

impl AclFilter {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        resource_type: i8,
        resource_name: Option<&str>,
        pattern: i8,
        principal: Option<&str>,
        host: Option<&str>,
        operation: i8,
        permission: i8,
    ) -> BrokerResult<AclFilter> {
        let any_or = |id: i8, what: &str, parse: &dyn Fn(i8) -> bool| {
            if id == ANY || parse(id) {
                Ok(())
            } else {
                Err(invalid(format!("{what} {id} is not a filter value")))
            }
        };
        any_or(resource_type, "resource type", &|id| {
            AclResourceType::from_id(id).is_some()
        })?;
        any_or(operation, "operation", &|id| {
            AclOperation::from_id(id).is_some()
        })?;
        any_or(permission, "permission", &|id| {
            AclPermission::from_id(id).is_some()
        })?;
        let pattern = match pattern {
            ANY => PatternFilter::Any,
            MATCH => PatternFilter::Match,
            other => {
                PatternFilter::Exactly(AclPatternType::from_id(other).ok_or_else(|| {
                    invalid(format!("pattern type {other} is not a filter value"))
                })?)
            }
        };
        Ok(AclFilter {
            resource_type: AclResourceType::from_id(resource_type),
            resource_name: resource_name.map(str::to_string),
            pattern,
            principal: principal.map(str::to_string),
            host: host.map(str::to_string),
            operation: AclOperation::from_id(operation),
            permission: AclPermission::from_id(permission),
        })
    }

    pub fn matches(&self, acl: &AclBinding) -> bool {
        let name = match (&self.resource_name, self.pattern) {
            (None, PatternFilter::Exactly(pattern)) => acl.pattern == pattern,
            (None, _) => true,
            (Some(name), PatternFilter::Any) => acl.resource_name == *name,
            (Some(name), PatternFilter::Exactly(pattern)) => {
                acl.pattern == pattern && acl.resource_name == *name
            }
            (Some(name), PatternFilter::Match) => match acl.pattern {
                AclPatternType::Literal => acl.resource_name == *name || acl.resource_name == "*",
                AclPatternType::Prefixed => name.starts_with(&acl.resource_name),
            },
        };
        name && self.resource_type.is_none_or(|t| t == acl.resource_type)
            && self.principal.as_ref().is_none_or(|p| *p == acl.principal)
            && self.host.as_ref().is_none_or(|h| *h == acl.host)
            && self.operation.is_none_or(|o| o == acl.operation)
            && self.permission.is_none_or(|p| p == acl.permission)
    }
}

/// The ACLs `filter` selects, in order.
pub fn describe(shard: &Shard, filter: &AclFilter) -> Vec<AclBinding> {
    shard
        .image()
        .acls
        .iter()
        .filter(|acl| filter.matches(acl))
        .cloned()
        .collect()
}

/// Adds the valid bindings (one metadata record for all of them); each binding's result.
/// All are refused unless `caller` may manage security (`super::may_manage_security`).
pub async fn create(
    shard: &Rc<Shard>,
    caller: &Caller,
    bindings: Vec<BrokerResult<AclBinding>>,
) -> Vec<BrokerResult<()>> {
    let bindings = refused_unless_allowed(shard, caller, bindings);
    let added: Vec<AclBinding> = bindings
        .iter()
        .filter_map(|b| b.as_ref().ok())
        .cloned()
        .collect();
    let applied = if added.is_empty() {
        Ok(())
    } else {
        let call = ShardCall::AlterAcls {
            added,
            removed: Vec::new(),
        };
        ops::admin(shard, call).await
    };
    bindings
        .into_iter()
        .map(|binding| match (binding, &applied) {
            (Err(error), _) => Err(error),
            (Ok(_), Ok(())) => Ok(()),
            (Ok(_), Err(error)) => Err(error.same()),
        })
        .collect()
}

/// Removes every ACL a valid filter selects; per filter, the ACLs it removed. All are
/// refused unless `caller` may manage security.
pub async fn delete(
    shard: &Rc<Shard>,
    caller: &Caller,
    filters: Vec<BrokerResult<AclFilter>>,
) -> Vec<BrokerResult<Vec<AclBinding>>> {
    let filters = refused_unless_allowed(shard, caller, filters);
    let matched: Vec<BrokerResult<Vec<AclBinding>>> = filters
        .into_iter()
        .map(|filter| filter.map(|f| describe(shard, &f)))
        .collect();
    let mut removed: Vec<AclBinding> = matched.iter().flatten().flatten().cloned().collect();
    removed.sort();
    removed.dedup();
    let applied = if removed.is_empty() {
        Ok(())
    } else {
        let call = ShardCall::AlterAcls {
            added: Vec::new(),
            removed,
        };
        ops::admin(shard, call).await
    };
    matched
        .into_iter()
        .map(|result| match (result, &applied) {
            (Err(error), _) => Err(error),
            (Ok(acls), Ok(())) => Ok(acls),
            (Ok(_), Err(error)) => Err(error.same()),
        })
        .collect()
}

/// `items` as they are if `caller` may manage security, else each one refused.
fn refused_unless_allowed<T>(
    shard: &Shard,
    caller: &Caller,
    items: Vec<BrokerResult<T>>,
) -> Vec<BrokerResult<T>> {
    match super::may_manage_security(shard, caller) {
        Ok(()) => items,
        Err(error) => items.into_iter().map(|_| Err(error.same())).collect(),
    }
}
