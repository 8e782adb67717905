//! Kafka connections. Requests are read and started in arrival order, and may run
//! concurrently, but the protocol requires responses in request order: the writer
//! receives each request's pending response in arrival order and awaits them in turn.
//!
//! Each frame is read into its own buffer (size prefix first, then exactly the frame):
//! a produce request's record batches are cut out of that buffer and appended without
//! a copy, which needs the buffer to be theirs alone.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_lite::io::{AsyncReadExt, ReadHalf};
use glommio::channels::local_channel::LocalSender;
use kafka_protocol::messages::ApiKey;

use super::codec::{self, DecodeError, SIZE_PREFIX_BYTES};
use super::handlers;
use super::sasl::{self, Session};
use crate::metrics::ShardMetrics;
use crate::net::{self, Accepted, InFlight, MemoryHold, Outgoing, Queued, Stream};
use crate::shard::Shard;

pub async fn serve_connection(shard: Rc<Shard>, accepted: Accepted) {
    let caller = accepted.caller();
    // Kafka reports a group member's host as `/address`.
    let client_host: Rc<str> = format!("/{}", caller.host).into();
    let authentication_timeout = Duration::from_millis(shard.config.sasl_authentication_timeout_ms);
    let session = Rc::new(Session::new(
        accepted.listener,
        caller,
        client_host,
        authentication_timeout,
    ));
    let reader_session = session.clone();
    let read =
        move |shard, reader, responses| read_requests(shard, reader, responses, reader_session);
    if let Err((reason, peer)) = net::run_connection(shard, accepted.stream, read).await {
        // A client that sent something unusable learns why only from the broker's log
        // (the protocol has no way to say it); warn so an operator can find it.
        let principal = session.principal();
        tracing::warn!(%peer, %principal, %reason, "closing Kafka connection");
    }
}

/// Reads frames until the peer closes, the broker shuts down or a frame is unusable.
async fn read_requests(
    shard: Rc<Shard>,
    mut reader: ReadHalf<Stream>,
    responses: Rc<LocalSender<Queued>>,
    session: Rc<Session>,
) -> Result<(), String> {
    let (shard, responses) = (&shard, &*responses);
    let slots = Rc::new(glommio::sync::Semaphore::new(
        shard.config.connection_requests_max as u64,
    ));
    loop {
        if shard.shutting_down() {
            return Err("shutting down".into());
        }
        session.mute.wait(shard).await;
        let mut prefix = [0u8; SIZE_PREFIX_BYTES];
        // Until it has authenticated (again), a connection is on the clock.
        let deadline = (!session.authenticated()).then(|| session.authentication_deadline());
        match before(deadline, read_full(&mut reader, &mut prefix)).await? {
            0 => return Ok(()),
            SIZE_PREFIX_BYTES => {}
            _ => return Err("connection closed inside a frame".into()),
        }
        let authenticated = session.authenticated();
        let size_max = if authenticated {
            shard.config.frame_bytes_max
        } else {
            shard.config.sasl_max_receive_bytes
        };
        let size = if session.expects_raw_token() {
            codec::token_size(prefix, size_max)?
        } else {
            codec::frame_size(prefix, size_max)?
        };
        let frame_bytes = (SIZE_PREFIX_BYTES + size) as u64;
        let memory = MemoryHold::acquire(shard, &slots, frame_bytes).await?;
        let mut frame = BytesMut::zeroed(size);
        if before(deadline, read_full(&mut reader, &mut frame)).await? != size {
            return Err("connection closed inside a frame".into());
        }
        ShardMetrics::add(&shard.metrics.bytes_in, frame_bytes);
        let started = Instant::now();
        if session.expects_raw_token() {
            let answer = sasl::raw_token(shard, &session, frame.freeze()).await;
            shard
                .metrics
                .record("kafka_sasl", started.elapsed(), answer.is_none());
            drop(memory);
            let Some(parts) = answer else {
                return Err("authentication failed".into());
            };
            send_now(responses, parts, false).await?;
            continue;
        }
        // Before authentication only the API key is looked at, so the request decoders
        // never see what an unauthenticated peer sends beyond the SASL exchange.
        let api_key = i16::from_be_bytes([frame[0], frame[1]]);
        if !authenticated && !sasl::allowed_before_authentication(api_key) {
            return Err(format!(
                "API key {api_key} before authentication on {}",
                session.listener
            ));
        }
        if session.expired(started) && !sasl::reauthenticates(api_key) {
            return Err(format!(
                "API key {api_key} after the session ended without re-authentication \
                 (connections_max_reauth_ms) on {}",
                session.listener
            ));
        }
        let request = match codec::decode(frame.freeze()) {
            Ok(request) => request,
            // What can be answered without serving it: ApiVersions of an unknown
            // version, and APIs weir does not serve that carry a request-wide error.
            Err(DecodeError::UnsupportedVersion { header, api })
                if let Some(parts) = handlers::unsupported(&header, api) =>
            {
                tracing::debug!(
                    ?api,
                    version = header.request_api_version,
                    "answered with UNSUPPORTED_VERSION"
                );
                send_now(responses, parts, false).await?;
                continue;
            }
            Err(error) => return Err(error.to_string()),
        };
        if matches!(
            request.api,
            ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
        ) {
            // In line: the next frame is read only once the exchange has moved on.
            let reply = sasl::handle(shard, &session, request).await;
            shard
                .metrics
                .record("kafka_sasl", started.elapsed(), reply.failed);
            let close = reply.close_after;
            drop(memory);
            send_now(responses, reply.parts, close).await?;
            if close {
                return Err("authentication failed".into());
            }
            continue;
        }
        let in_flight = InFlight::start(shard);
        let reply = handlers::dispatch(shard, request, &session).await;
        let shard = shard.clone();
        let task = glommio::spawn_local(async move {
            let _in_flight = in_flight;
            let (api, response) = reply.await;
            let failed = response.as_ref().is_some_and(|r| r.failed);
            shard.metrics.record(api, started.elapsed(), failed);
            let mut memory = memory;
            let out = response.map(|response| Outgoing {
                parts: response.parts,
                permit: memory.take_permit(),
                read: response.memory,
                close_after: response.close_after,
            });
            drop(memory);
            out
        });
        if responses.send(Box::pin(task)).await.is_err() {
            return Err("response writer stopped".into());
        }
    }
}

/// Queues a response that is ready now (after those queued before it).
async fn send_now(
    responses: &LocalSender<Queued>,
    parts: Vec<bytes::Bytes>,
    close_after: bool,
) -> Result<(), String> {
    let out = Outgoing {
        parts,
        permit: None,
        read: None,
        close_after,
    };
    responses
        .send(Box::pin(std::future::ready(Some(out))))
        .await
        .map_err(|_| "response writer stopped".to_string())
}

/// `read`, unless `deadline` (the end of the time to authenticate) passes first.
async fn before(
    deadline: Option<Instant>,
    read: impl std::future::Future<Output = Result<usize, String>>,
) -> Result<usize, String> {
    let Some(deadline) = deadline else {
        return read.await;
    };
    let late = async {
        glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
        Err("not authenticated in time (sasl_authentication_timeout_ms)".to_string())
    };
    futures_lite::future::or(read, late).await
}

/// Reads until `buffer` is full or the peer closes; returns the bytes read.
async fn read_full(reader: &mut ReadHalf<Stream>, buffer: &mut [u8]) -> Result<usize, String> {
    let mut filled = 0;
    while filled < buffer.len() {
        let read = reader
            .read(&mut buffer[filled..])
            .await
            .map_err(|e| e.to_string())?;
        if read == 0 {
            break;
        }
        filled += read;
    }
    Ok(filled)
}
