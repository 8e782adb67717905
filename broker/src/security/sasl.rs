//! SASL authentication (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) against the credentials in
//! the cluster metadata. The mechanisms are rsasl's; weir supplies the stored SCRAM keys
//! and checks PLAIN passwords against them (passwords are never stored).

use std::io::Cursor;
use std::sync::Arc;

use rsasl::callback::{Context, Request, SessionCallback, SessionData};
use rsasl::mechanisms::scram::properties::ScramStoredPassword;
use rsasl::prelude::{Mechname, SASLConfig, SASLServer, Session, SessionError, State};
use rsasl::property::{AuthId, AuthzId, Password};
use rsasl::validate::{Validate, Validation, ValidationError};
use weir_replication::{MetadataImage, ScramMechanism};

use super::{Principal, scram};

/// The mechanisms weir serves, in the order it offers them.
pub const MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// One authentication exchange on a connection.
pub struct Exchange {
    session: Session<Authenticated>,
    mechanism: &'static str,
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("mechanism", &self.mechanism)
            .finish_non_exhaustive()
    }
}

/// What a step of the exchange came to.
#[derive(Debug)]
pub enum Step {
    /// Send these bytes and wait for the client's next message.
    Continue(Vec<u8>),
    /// Authenticated: send these (last) bytes.
    Done(Vec<u8>, Principal),
    /// Refused; the reason is for the log, not the client.
    Failed(String),
}

impl Exchange {
    /// Starts `mechanism` if it is one of `enabled`; the credentials are those of `image`
    /// (an exchange sees the metadata as it was when it started).
    pub fn start(
        mechanism: &str,
        enabled: &[String],
        image: Arc<MetadataImage>,
    ) -> Option<Exchange> {
        let mechanism = MECHANISMS
            .into_iter()
            .find(|m| *m == mechanism && enabled.iter().any(|e| e == m))?;
        let config = SASLConfig::builder()
            .with_defaults()
            .with_callback(Credentials { image })
            .ok()?;
        let name = Mechname::parse(mechanism.as_bytes()).ok()?;
        let session = SASLServer::<Authenticated>::new(config)
            .start_suggested(name)
            .ok()?;
        Some(Exchange { session, mechanism })
    }

    pub fn mechanism(&self) -> &'static str {
        self.mechanism
    }

    /// `step` on glommio's blocking pool: key derivations take milliseconds, too long
    /// for the shard.
    pub async fn step_off_shard(self: Box<Exchange>, input: Vec<u8>) -> (Box<Exchange>, Step) {
        glommio::executor()
            .spawn_blocking(move || {
                let mut exchange = self;
                let step = exchange.step(&input);
                (exchange, step)
            })
            .await
    }

    /// Takes the client's next message. Runs key derivations (PLAIN hashes the password
    /// as many times as the credential says), so call it off the shard.
    pub fn step(&mut self, input: &[u8]) -> Step {
        let mut out = Cursor::new(Vec::new());
        match self.session.step(Some(input), &mut out) {
            Ok(State::Running) => Step::Continue(out.into_inner()),
            Ok(State::Finished(_)) => match self.session.validation() {
                Some(Ok(user)) => Step::Done(out.into_inner(), Principal::user(user)),
                Some(Err(reason)) => Step::Failed(reason),
                // SCRAM ends a refused exchange with its reason (`e=invalid-proof`).
                None => Step::Failed(String::from_utf8_lossy(&out.into_inner()).into_owned()),
            },
            Err(error) => Step::Failed(error.to_string()),
        }
    }
}

/// The outcome rsasl hands back: the authenticated user, or why not.
struct Authenticated;

impl Validation for Authenticated {
    type Value = Result<String, String>;
}

struct Credentials {
    image: Arc<MetadataImage>,
}

impl SessionCallback for Credentials {
    fn callback(
        &self,
        session_data: &SessionData,
        context: &Context,
        request: &mut Request,
    ) -> Result<(), SessionError> {
        let mechanism = ScramMechanism::from_name(session_data.mechanism().mechanism.as_str());
        if let (Some(mechanism), Some(user)) = (mechanism, context.get_ref::<AuthId>())
            && let Some(credential) = self.image.scram_credential(user, mechanism)
        {
            request.satisfy::<ScramStoredPassword>(&ScramStoredPassword::new(
                credential.iterations,
                &credential.salt,
                &credential.stored_key,
                &credential.server_key,
            ))?;
        }
        Ok(())
    }

    fn validate(
        &self,
        session_data: &SessionData,
        context: &Context,
        validate: &mut Validate<'_>,
    ) -> Result<(), ValidationError> {
        let mechanism = session_data.mechanism().mechanism.as_str();
        let outcome = match context.get_ref::<AuthId>() {
            None => Err("no user name".to_string()),
            Some(user) => match context.get_ref::<AuthzId>() {
                // Kafka's rule: one may not act for another user.
                Some(authz) if !authz.is_empty() && authz != user => {
                    Err(format!("{user} may not act as {authz}"))
                }
                _ if mechanism == "PLAIN" => self.check_plain(user, context.get_ref::<Password>()),
                _ => Ok(user.to_string()),
            },
        };
        validate.with::<Authenticated, _>(|| Ok(outcome))?;
        Ok(())
    }
}

impl Credentials {
    /// A PLAIN password is right if it makes one of the user's SCRAM credentials (the
    /// strongest first).
    fn check_plain(&self, user: &str, password: Option<&[u8]>) -> Result<String, String> {
        let password = password.ok_or("no password")?;
        let mut known = false;
        for mechanism in [ScramMechanism::Sha512, ScramMechanism::Sha256] {
            if let Some(credential) = self.image.scram_credential(user, mechanism) {
                known = true;
                if scram::verify_password(mechanism, credential, password) {
                    return Ok(user.to_string());
                }
            }
        }
        Err(if known {
            format!("wrong password for {user}")
        } else {
            format!("unknown user {user}")
        })
    }
}

/// The most authentication failures one shard logs per second; the rest are counted (in
/// `weir_authentication_failures_total`, and in the next line logged).
const FAILURES_LOGGED_PER_SECOND: u32 = 5;

thread_local! {
    /// This shard's current second of failure logging: when it began, lines logged in it,
    /// lines held back.
    static FAILURE_LOG: std::cell::Cell<(std::time::Instant, u32, u64)> =
        std::cell::Cell::new((std::time::Instant::now(), 0, 0));
}

/// Counts a refused authentication (on either protocol) and logs it, at most
/// `FAILURES_LOGGED_PER_SECOND` a second on a shard.
pub fn authentication_failed(
    shard: &crate::shard::Shard,
    listener: &super::Listener,
    client: &str,
    mechanism: &str,
    reason: &str,
) {
    crate::metrics::ShardMetrics::add(&shard.metrics.authentication_failures, 1);
    FAILURE_LOG.with(|log| {
        let (mut since, mut logged, mut held_back) = log.get();
        if since.elapsed() >= std::time::Duration::from_secs(1) {
            (since, logged) = (std::time::Instant::now(), 0);
        }
        if logged < FAILURES_LOGGED_PER_SECOND {
            tracing::warn!(
                %listener,
                client,
                mechanism,
                reason,
                held_back,
                "authentication failed"
            );
            logged += 1;
            held_back = 0;
        } else {
            held_back += 1;
        }
        log.set((since, logged, held_back));
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsasl::prelude::SASLClient;
    use weir_replication::MetadataRecord;

    fn image_with(user: &str, password: &str) -> Arc<MetadataImage> {
        let mut image = MetadataImage::default();
        for mechanism in ScramMechanism::ALL {
            let credential = scram::from_password(mechanism, password, 4096).unwrap();
            image.apply(
                1,
                &[MetadataRecord::ScramCredentialChanged {
                    user: user.into(),
                    mechanism,
                    credential: Some(credential),
                }],
            );
        }
        Arc::new(image)
    }

    /// Runs rsasl's client against the exchange; the principal, or the failure.
    fn login(mechanism: &str, user: &str, password: &str) -> Result<Principal, String> {
        let enabled: Vec<String> = MECHANISMS.iter().map(|m| m.to_string()).collect();
        let mut exchange =
            Exchange::start(mechanism, &enabled, image_with("alice", "s3cret")).unwrap();
        let config =
            SASLConfig::with_credentials(None, user.to_string(), password.to_string()).unwrap();
        let name = Mechname::parse(mechanism.as_bytes()).unwrap();
        let mut client = SASLClient::new(config).start_suggested(&[name]).unwrap();
        let mut to_server = Cursor::new(Vec::new());
        client.step(None, &mut to_server).unwrap();
        loop {
            match exchange.step(to_server.get_ref()) {
                Step::Continue(to_client) => {
                    to_server = Cursor::new(Vec::new());
                    client
                        .step(Some(&to_client), &mut to_server)
                        .map_err(|e| e.to_string())?;
                }
                Step::Done(last, principal) => {
                    if !last.is_empty() {
                        // The client checks the server's signature (SCRAM's mutual proof).
                        client
                            .step(Some(&last), &mut Cursor::new(Vec::new()))
                            .map_err(|e| format!("the client refused the server: {e}"))?;
                    }
                    return Ok(principal);
                }
                Step::Failed(reason) => return Err(reason),
            }
        }
    }

    #[test]
    fn every_mechanism_accepts_the_right_password_only() {
        for mechanism in MECHANISMS {
            assert_eq!(
                login(mechanism, "alice", "s3cret"),
                Ok(Principal::user("alice")),
                "{mechanism}"
            );
            assert!(login(mechanism, "alice", "wrong").is_err(), "{mechanism}");
            assert!(login(mechanism, "bob", "s3cret").is_err(), "{mechanism}");
        }
    }

    #[test]
    fn only_enabled_mechanisms_start() {
        let image = Arc::new(MetadataImage::default());
        let enabled = vec!["SCRAM-SHA-512".to_string()];
        assert!(Exchange::start("PLAIN", &enabled, image.clone()).is_none());
        assert!(Exchange::start("GSSAPI", &enabled, image.clone()).is_none());
        assert!(Exchange::start("SCRAM-SHA-512", &enabled, image).is_some());
    }
}
