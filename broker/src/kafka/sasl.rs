//! A Kafka connection's authentication: SaslHandshake picks a mechanism, SaslAuthenticate
//! carries its messages (KIP-152), and until the exchange succeeds nothing but
//! ApiVersions and these two is even decoded (`allowed_before_authentication`).
//!
//! Re-authentication (KIP-368): with `connections_max_reauth_ms` set, a client that
//! authenticated with SaslAuthenticate v1 or later is told its session's lifetime and
//! must authenticate again on the same connection, as the same principal with the same
//! mechanism, before the session ends; a connection used for anything else after that is
//! closed. So a removed user or changed password locks a client out within that time,
//! not only when it reconnects.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{
    ApiKey, RequestKind, ResponseKind, SaslAuthenticateResponse, SaslHandshakeResponse,
};

use super::codec::Request;
use super::handlers::{self, Reply, str_bytes};
use crate::security::sasl::{Exchange, Step};
use crate::security::{Caller, Listener, Principal};
use crate::shard::Shard;

/// Where a connection is in authenticating.
#[derive(Debug)]
enum State {
    /// A SASL listener's connection before its SaslHandshake.
    Waiting,
    /// Between SaslHandshake and the exchange's end. `raw`: the handshake was version 0,
    /// so the exchange's messages come as bare size-prefixed tokens, not SaslAuthenticate
    /// requests. `reauthenticating`: the connection had authenticated before, and the
    /// exchange must end in the same principal.
    Exchanging {
        exchange: Box<Exchange>,
        raw: bool,
        reauthenticating: bool,
    },
    /// Authenticated, or on a listener without SASL.
    Done,
}

/// Who a Kafka connection is.
#[derive(Debug)]
pub struct Session {
    pub listener: Rc<Listener>,
    /// The client's address as Kafka reports hosts (`/127.0.0.1`).
    pub client_host: Rc<str>,
    caller: RefCell<Rc<Caller>>,
    state: RefCell<State>,
    /// A client quota's throttle.
    pub mute: crate::net::Mute,
    /// How long an exchange may take (`sasl_authentication_timeout_ms`).
    authentication_timeout: Duration,
    /// When the exchange in progress (or the first) must have ended.
    authentication_deadline: Cell<Instant>,
    /// The mechanism the connection authenticated with: a re-authentication must use it.
    mechanism: Cell<Option<&'static str>>,
    /// When the session ends unless the client authenticates again (KIP-368).
    session_end: Cell<Option<Instant>>,
}

impl Session {
    pub fn new(
        listener: Rc<Listener>,
        caller: Caller,
        client_host: Rc<str>,
        authentication_timeout: Duration,
    ) -> Session {
        let state = if listener.protocol.sasl() {
            State::Waiting
        } else {
            State::Done
        };
        Session {
            listener,
            client_host,
            caller: RefCell::new(Rc::new(caller)),
            mute: crate::net::Mute::default(),
            state: RefCell::new(state),
            authentication_timeout,
            authentication_deadline: Cell::new(Instant::now() + authentication_timeout),
            mechanism: Cell::new(None),
            session_end: Cell::new(None),
        }
    }

    /// Whether requests other than ApiVersions and the SASL exchange are served: not
    /// before the first authentication, nor during a re-authentication.
    pub fn authenticated(&self) -> bool {
        matches!(*self.state.borrow(), State::Done)
    }

    /// When the exchange in progress must have ended.
    pub fn authentication_deadline(&self) -> Instant {
        self.authentication_deadline.get()
    }

    /// Whether the session has ended without the client authenticating again: then any
    /// request but SaslHandshake and SaslAuthenticate closes the connection.
    pub fn expired(&self, now: Instant) -> bool {
        self.session_end.get().is_some_and(|end| now >= end)
    }

    pub fn principal(&self) -> Principal {
        self.caller.borrow().principal.clone()
    }

    /// Who sends this connection's requests, for authorization.
    pub fn caller(&self) -> Rc<Caller> {
        self.caller.borrow().clone()
    }

    /// Whether the next frame is a bare SASL token (after a version 0 handshake).
    pub fn expects_raw_token(&self) -> bool {
        matches!(*self.state.borrow(), State::Exchanging { raw: true, .. })
    }
}

/// What an unauthenticated connection may send: anything else closes it undecoded.
pub fn allowed_before_authentication(api_key: i16) -> bool {
    api_key == ApiKey::ApiVersions as i16 || reauthenticates(api_key)
}

/// What a connection whose session ended may still send: the re-authentication.
pub fn reauthenticates(api_key: i16) -> bool {
    [ApiKey::SaslHandshake, ApiKey::SaslAuthenticate]
        .iter()
        .any(|api| *api as i16 == api_key)
}

/// Answers SaslHandshake and SaslAuthenticate. A failed exchange is answered after
/// `sasl_failed_authentication_delay_ms` (so guessing is slow) and closes the connection.
pub async fn handle(shard: &Rc<Shard>, session: &Session, request: Request) -> Reply {
    let header = request.header.clone();
    let version = header.request_api_version;
    let (body, close) = match request.body {
        RequestKind::SaslHandshake(body) => {
            let response = handshake(shard, session, body.mechanism.as_str(), version);
            // As Kafka does: a refused handshake is answered, then the connection closes.
            let refused = matches!(&response, ResponseKind::SaslHandshake(r) if r.error_code != 0);
            (response, refused)
        }
        RequestKind::SaslAuthenticate(body) => {
            authenticate(shard, session, body.auth_bytes, version).await
        }
        _ => unreachable_request(),
    };
    let failed = close;
    let mut reply = handlers::reply(&header, request.api, &body, failed);
    reply.close_after |= close;
    reply
}

fn unreachable_request() -> (ResponseKind, bool) {
    // `handle` is called for the two SASL APIs only.
    (
        ResponseKind::SaslAuthenticate(
            SaslAuthenticateResponse::default()
                .with_error_code(ResponseError::IllegalSaslState.code()),
        ),
        true,
    )
}

fn handshake(shard: &Rc<Shard>, session: &Session, mechanism: &str, version: i16) -> ResponseKind {
    let enabled = &shard.config.sasl_enabled_mechanisms;
    let mechanisms = enabled.iter().map(|m| str_bytes(m)).collect();
    let response = SaslHandshakeResponse::default().with_mechanisms(mechanisms);
    let mut state = session.state.borrow_mut();
    let reauthenticating = match *state {
        State::Waiting => false,
        // Re-authentication (KIP-368) needs SaslAuthenticate framing (handshake v1+) and
        // a SASL listener, and must keep the mechanism.
        State::Done if session.listener.protocol.sasl() && version >= 1 => {
            if session.mechanism.get() != Some(mechanism) {
                return ResponseKind::SaslHandshake(
                    response.with_error_code(ResponseError::UnsupportedSaslMechanism.code()),
                );
            }
            true
        }
        // A second handshake, or one on a listener without SASL.
        State::Exchanging { .. } | State::Done => {
            return ResponseKind::SaslHandshake(
                response.with_error_code(ResponseError::IllegalSaslState.code()),
            );
        }
    };
    let Some(exchange) = Exchange::start(mechanism, enabled, shard.image()) else {
        return ResponseKind::SaslHandshake(
            response.with_error_code(ResponseError::UnsupportedSaslMechanism.code()),
        );
    };
    *state = State::Exchanging {
        exchange: Box::new(exchange),
        raw: version == 0,
        reauthenticating,
    };
    if reauthenticating {
        let deadline = Instant::now() + session.authentication_timeout;
        session.authentication_deadline.set(deadline);
    }
    ResponseKind::SaslHandshake(response.with_error_code(0))
}

async fn authenticate(
    shard: &Rc<Shard>,
    session: &Session,
    input: Bytes,
    version: i16,
) -> (ResponseKind, bool) {
    let response = SaslAuthenticateResponse::default();
    let (response, close) = match step(shard, session, input, false).await {
        Outcome::Continue(out) => (response.with_auth_bytes(out), false),
        Outcome::Done(out) => {
            // Clients that cannot re-authenticate (v0) are not told a lifetime, and their
            // sessions do not end, as in Kafka.
            let reauth_ms = shard.config.connections_max_reauth_ms;
            let lifetime_ms = if version >= 1 { reauth_ms } else { 0 };
            session.session_end.set(
                (lifetime_ms > 0).then(|| Instant::now() + Duration::from_millis(lifetime_ms)),
            );
            let response = response
                .with_auth_bytes(out)
                .with_session_lifetime_ms(lifetime_ms as i64);
            (response, false)
        }
        Outcome::Refused(message) => (
            response
                .with_error_code(ResponseError::IllegalSaslState.code())
                .with_error_message(Some(str_bytes(message))),
            true,
        ),
        Outcome::Failed(message) => (
            response
                .with_error_code(ResponseError::SaslAuthenticationFailed.code())
                .with_error_message(Some(str_bytes(&message))),
            true,
        ),
    };
    (ResponseKind::SaslAuthenticate(response), close)
}

/// Answers a bare token (after a version 0 handshake) with a bare token; `None` when the
/// exchange failed: then, as Kafka does, the connection closes without an answer.
pub async fn raw_token(shard: &Rc<Shard>, session: &Session, input: Bytes) -> Option<Vec<Bytes>> {
    match step(shard, session, input, true).await {
        Outcome::Continue(out) | Outcome::Done(out) => {
            let size = Bytes::copy_from_slice(&(out.len() as i32).to_be_bytes());
            Some(vec![size, out])
        }
        Outcome::Refused(_) | Outcome::Failed(_) => None,
    }
}

enum Outcome {
    Continue(Bytes),
    Done(Bytes),
    /// Not in an exchange (of this framing).
    Refused(&'static str),
    Failed(String),
}

/// One message of the exchange, run off the shard (key derivations take milliseconds).
/// A failure is answered only after `sasl_failed_authentication_delay_ms`, so guessing
/// passwords is slow.
async fn step(shard: &Rc<Shard>, session: &Session, input: Bytes, raw_framing: bool) -> Outcome {
    let (exchange, raw, reauthenticating) =
        match std::mem::replace(&mut *session.state.borrow_mut(), State::Waiting) {
            State::Exchanging {
                exchange,
                raw,
                reauthenticating,
            } if raw == raw_framing => (exchange, raw, reauthenticating),
            other => {
                let done = matches!(other, State::Done);
                *session.state.borrow_mut() = other;
                return Outcome::Refused(if done {
                    "already authenticated"
                } else {
                    "SaslAuthenticate outside a SASL exchange"
                });
            }
        };
    let mechanism = exchange.mechanism();
    let (exchange, step) = exchange.step_off_shard(input.to_vec()).await;
    match step {
        Step::Continue(out) => {
            *session.state.borrow_mut() = State::Exchanging {
                exchange,
                raw,
                reauthenticating,
            };
            Outcome::Continue(Bytes::from(out))
        }
        Step::Done(_, principal) if reauthenticating && principal != session.principal() => {
            // As Kafka: the connection's identity never changes under its requests.
            let message = format!(
                "Cannot change principals during re-authentication from {} to {principal}",
                session.principal()
            );
            fail(shard, session, mechanism, &message).await;
            Outcome::Failed(message)
        }
        Step::Done(out, principal) => {
            tracing::debug!(%principal, mechanism, reauthenticating, "authenticated");
            if !reauthenticating {
                let host = session.caller.borrow().host.clone();
                *session.caller.borrow_mut() = Rc::new(Caller::new(principal, host));
                session.mechanism.set(Some(mechanism));
            }
            *session.state.borrow_mut() = State::Done;
            Outcome::Done(Bytes::from(out))
        }
        Step::Failed(reason) => {
            fail(shard, session, mechanism, &reason).await;
            Outcome::Failed(format!(
                "Authentication failed during authentication due to invalid credentials with SASL mechanism {mechanism}"
            ))
        }
    }
}

/// Logs and counts a failed exchange, then waits `sasl_failed_authentication_delay_ms`.
async fn fail(shard: &Rc<Shard>, session: &Session, mechanism: &str, reason: &str) {
    crate::security::sasl::authentication_failed(
        shard,
        &session.listener,
        &session.client_host,
        mechanism,
        reason,
    );
    let delay = shard.config.sasl_failed_authentication_delay_ms;
    glommio::timer::sleep(Duration::from_millis(delay)).await;
}
