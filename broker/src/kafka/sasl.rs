//! A Kafka connection's authentication: SaslHandshake picks a mechanism, SaslAuthenticate
//! carries its messages (KIP-152), and until the exchange succeeds nothing but
//! ApiVersions and these two is even decoded (`allowed_before_authentication`).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

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
    /// requests.
    Exchanging { exchange: Box<Exchange>, raw: bool },
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
}

impl Session {
    pub fn new(listener: Rc<Listener>, caller: Caller, client_host: Rc<str>) -> Session {
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
        }
    }

    pub fn authenticated(&self) -> bool {
        matches!(*self.state.borrow(), State::Done)
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
    [
        ApiKey::ApiVersions,
        ApiKey::SaslHandshake,
        ApiKey::SaslAuthenticate,
    ]
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
            let response = handshake(shard, session, body.mechanism.as_str(), version == 0);
            // As Kafka does: a refused handshake is answered, then the connection closes.
            let refused = matches!(&response, ResponseKind::SaslHandshake(r) if r.error_code != 0);
            (response, refused)
        }
        RequestKind::SaslAuthenticate(body) => authenticate(shard, session, body.auth_bytes).await,
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

fn handshake(shard: &Rc<Shard>, session: &Session, mechanism: &str, raw: bool) -> ResponseKind {
    let enabled = &shard.config.sasl_enabled_mechanisms;
    let mechanisms = enabled.iter().map(|m| str_bytes(m)).collect();
    let response = SaslHandshakeResponse::default().with_mechanisms(mechanisms);
    let mut state = session.state.borrow_mut();
    let code = match *state {
        State::Waiting => match Exchange::start(mechanism, enabled, shard.image()) {
            Some(exchange) => {
                *state = State::Exchanging {
                    exchange: Box::new(exchange),
                    raw,
                };
                0
            }
            None => ResponseError::UnsupportedSaslMechanism.code(),
        },
        // A second handshake, or one on a listener without SASL.
        State::Exchanging { .. } | State::Done => ResponseError::IllegalSaslState.code(),
    };
    ResponseKind::SaslHandshake(response.with_error_code(code))
}

async fn authenticate(shard: &Rc<Shard>, session: &Session, input: Bytes) -> (ResponseKind, bool) {
    let response = SaslAuthenticateResponse::default();
    let (response, close) = match step(shard, session, input, false).await {
        Outcome::Continue(out) | Outcome::Done(out) => (response.with_auth_bytes(out), false),
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
    let (exchange, raw) = match std::mem::replace(&mut *session.state.borrow_mut(), State::Waiting)
    {
        State::Exchanging { exchange, raw } if raw == raw_framing => (exchange, raw),
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
            *session.state.borrow_mut() = State::Exchanging { exchange, raw };
            Outcome::Continue(Bytes::from(out))
        }
        Step::Done(out, principal) => {
            tracing::debug!(%principal, mechanism, "authenticated");
            let host = session.caller.borrow().host.clone();
            *session.caller.borrow_mut() = Rc::new(Caller::new(principal, host));
            *session.state.borrow_mut() = State::Done;
            Outcome::Done(Bytes::from(out))
        }
        Step::Failed(reason) => {
            let client = &session.client_host;
            crate::security::sasl::authentication_failed(
                shard,
                &session.listener,
                client,
                mechanism,
                &reason,
            );
            let delay = shard.config.sasl_failed_authentication_delay_ms;
            glommio::timer::sleep(Duration::from_millis(delay)).await;
            Outcome::Failed(format!(
                "Authentication failed during authentication due to invalid credentials with SASL mechanism {mechanism}"
            ))
        }
    }
}
