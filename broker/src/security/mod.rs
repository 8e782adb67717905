//! Who a connection is and how it proved it: listeners and their security protocols
//! (Kafka's PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL), TLS with optional client
//! certificates (`tls`), SASL PLAIN and SCRAM (`sasl`), and SCRAM credentials
//! (`scram`).

pub mod acl;
pub mod limits;
pub mod quotas;
pub mod sasl;
pub mod scram;
pub mod tls;
pub mod users;

use std::fmt;
use std::net::SocketAddr;

/// How a listener's connections are secured: Kafka's `security.protocol` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub const ALL: [SecurityProtocol; 4] = [
        SecurityProtocol::Plaintext,
        SecurityProtocol::Ssl,
        SecurityProtocol::SaslPlaintext,
        SecurityProtocol::SaslSsl,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }

    pub fn parse(name: &str) -> Option<SecurityProtocol> {
        SecurityProtocol::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(name))
    }

    pub fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    pub fn sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

impl fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerKind {
    Kafka,
    Native,
    Http,
}

impl ListenerKind {
    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::Kafka => "kafka",
            ListenerKind::Native => "native",
            ListenerKind::Http => "http",
        }
    }
}

/// One address a broker serves on. Kafka listeners are named by their protocol (as
/// Kafka's are by default), so each protocol is served on at most one Kafka listener and
/// a client is told the other brokers' addresses on the listener it came in by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub kind: ListenerKind,
    pub protocol: SecurityProtocol,
    pub address: SocketAddr,
}

impl Listener {
    /// Reads `PROTOCOL://HOST:PORT` (Kafka's `listeners` syntax).
    pub fn parse(kind: ListenerKind, text: &str) -> anyhow::Result<Listener> {
        let (protocol, address) = text.split_once("://").ok_or_else(|| {
            anyhow::anyhow!(
                "{} listener {text:?}: expected PROTOCOL://HOST:PORT",
                kind.name()
            )
        })?;
        let protocol = SecurityProtocol::parse(protocol).ok_or_else(|| {
            anyhow::anyhow!(
                "{} listener {text:?}: the protocol must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL",
                kind.name()
            )
        })?;
        let address = address
            .parse::<SocketAddr>()
            .map_err(|e| anyhow::anyhow!("{} listener {text:?}: {e}", kind.name()))?;
        Ok(Listener {
            kind,
            protocol,
            address,
        })
    }

    pub fn name(&self) -> &'static str {
        self.protocol.name()
    }
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.protocol, self.address)
    }
}

/// Who is on the other end of a connection, as Kafka names principals (`User:alice`).
/// Unauthenticated connections are `User:ANONYMOUS`; a TLS client certificate makes its
/// subject the name (`User:CN=writer,O=weir`), SASL the user name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Principal {
    pub name: String,
}

impl Principal {
    pub const TYPE: &'static str = "User";
    pub const ANONYMOUS_NAME: &'static str = "ANONYMOUS";

    pub fn user(name: impl Into<String>) -> Principal {
        Principal { name: name.into() }
    }

    pub fn anonymous() -> Principal {
        Principal::user(Principal::ANONYMOUS_NAME)
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", Principal::TYPE, self.name)
    }
}

/// Who sends a request and from where: what authorization decides on. Built once per
/// connection (again after SASL names the principal), so a check allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub principal: Principal,
    /// `User:NAME`, as ACLs name principals.
    principal_text: String,
    /// The client's address as ACLs name hosts (`127.0.0.1`).
    pub host: String,
}

impl Caller {
    pub fn new(principal: Principal, host: impl Into<String>) -> Caller {
        Caller {
            principal_text: principal.to_string(),
            principal,
            host: host.into(),
        }
    }

    /// The principal as ACLs and `super_users` write it (`User:alice`).
    pub fn principal_text(&self) -> &str {
        &self.principal_text
    }
}

/// Whether `caller` may change users' credentials and the ACLs. With the authorizer on,
/// that is ALTER on the cluster; with it off and `super_users` set, only they may;
/// with neither, anyone who reaches the broker may (the broker warns at start when it
/// has secured listeners but no super users).
pub fn may_manage_security(
    shard: &crate::shard::Shard,
    caller: &Caller,
) -> crate::error::BrokerResult<()> {
    use weir_replication::{AclOperation, AclResourceType};
    if shard.authorizer.enabled() {
        return shard.authorizer.check(
            caller,
            AclOperation::Alter,
            AclResourceType::Cluster,
            acl::CLUSTER_RESOURCE,
        );
    }
    let super_users = &shard.config.super_users;
    if super_users.is_empty() || super_users.iter().any(|u| u == caller.principal_text()) {
        return Ok(());
    }
    Err(crate::error::BrokerError::Kafka {
        code: kafka_protocol::ResponseError::ClusterAuthorizationFailed.code(),
        message: format!(
            "{} may not change credentials or ACLs (not in super_users)",
            caller.principal
        ),
    })
}

/// What every shard's security shares with the others': the client quotas' usage, and
/// how this broker dials the other brokers.
#[derive(Debug, Clone)]
pub struct SharedSecurity {
    pub quotas: std::sync::Arc<quotas::QuotaManager>,
    pub peer_tls: tls::PeerTls,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_parse_in_kafka_syntax() {
        let listener = Listener::parse(ListenerKind::Kafka, "SASL_SSL://127.0.0.1:9094").unwrap();
        assert_eq!(listener.protocol, SecurityProtocol::SaslSsl);
        assert_eq!(listener.address.port(), 9094);
        assert_eq!(listener.to_string(), "SASL_SSL://127.0.0.1:9094");
        assert!(Listener::parse(ListenerKind::Kafka, "127.0.0.1:9094").is_err());
        assert!(Listener::parse(ListenerKind::Kafka, "TLS://127.0.0.1:9094").is_err());
        assert!(Listener::parse(ListenerKind::Kafka, "SSL://nowhere").is_err());
    }

    #[test]
    fn principals_print_as_kafka_does() {
        assert_eq!(Principal::user("alice").to_string(), "User:alice");
        assert_eq!(Principal::anonymous().to_string(), "User:ANONYMOUS");
    }
}
