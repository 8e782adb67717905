//! Native connections: frames in, responses out (in completion order: responses carry
//! request ids), with the shard's memory budget in between (see `crate::net`).

use std::rc::Rc;
use std::time::Instant;

use bytes::BytesMut;
use futures_lite::io::{AsyncReadExt, ReadHalf};
use glommio::channels::local_channel::LocalSender;
use weir_wire::native::schema;
use weir_wire::native::{self, FRAME_PREFIX_BYTES};

use super::handlers;
use crate::metrics::ShardMetrics;
use crate::net::{self, Accepted, MemoryHold, Outgoing, Queued, Stream};
use crate::shard::Shard;

/// Bytes read from a socket at once when frames are small.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// Below this much room left in the buffer, a read goes into a fresh one instead.
const READ_BYTES_MIN: usize = 4 << 10;

pub async fn serve_connection(shard: Rc<Shard>, accepted: Accepted) {
    let session = Rc::new(handlers::Session::new(
        accepted.caller(),
        accepted.listener.clone(),
    ));
    let read = move |shard, reader, responses| read_requests(shard, reader, responses, session);
    if let Err((reason, peer)) = net::run_connection(shard, accepted.stream, read).await {
        tracing::debug!(%peer, %reason, "closing connection");
    }
}

/// Reads frames until the peer closes, the broker shuts down or a frame is unusable.
async fn read_requests(
    shard: Rc<Shard>,
    reader: ReadHalf<Stream>,
    responses: Rc<LocalSender<Queued>>,
    session: Rc<handlers::Session>,
) -> Result<(), String> {
    let (shard, responses) = (&shard, &responses);
    let mut frames = FrameReader::new(reader);
    let slots = Rc::new(glommio::sync::Semaphore::new(
        shard.config.connection_requests_max as u64,
    ));
    loop {
        if shard.shutting_down() {
            return Err("shutting down".into());
        }
        session.mute.wait(shard).await;
        let Some(prefix) = frames.prefix().await? else {
            return Ok(());
        };
        let prefix = match native::decode_prefix(&prefix, shard.config.frame_bytes_max) {
            Ok(prefix) => prefix,
            Err(error) => {
                send_fatal(responses, &error.to_string()).await;
                return Err(error.to_string());
            }
        };
        let frame_bytes = (FRAME_PREFIX_BYTES + prefix.remaining()) as u64;
        let mut memory = MemoryHold::acquire(shard, &slots, frame_bytes).await?;
        let Some(mut frame) = frames.body(prefix.remaining()).await? else {
            return Err("frame cut short".into());
        };
        ShardMetrics::add(&shard.metrics.bytes_in, frame_bytes);
        let started = Instant::now();
        let header = frame.split_to(prefix.header_length).freeze();
        let request = match native::parse_request(&header) {
            Ok(request) => request,
            Err(error) => {
                send_fatal(responses, &error.to_string()).await;
                return Err(error.to_string());
            }
        };
        // Before authentication only the body type is looked at: the decoders see nothing
        // else an unauthenticated peer sends.
        let body = request.body_type();
        if !session.authenticated() && !handlers::allowed_before_authentication(body) {
            send_fatal(responses, "authenticate first (SaslHandshake)").await;
            return Err(format!(
                "request {body:?} before authentication on {}",
                session.listener
            ));
        }
        if matches!(
            body,
            schema::RequestBody::SaslHandshakeRequest
                | schema::RequestBody::SaslAuthenticateRequest
        ) {
            let (parts, close) = handlers::sasl(shard, &session, request).await;
            shard.metrics.record("sasl", started.elapsed(), close);
            drop(memory);
            let out = Outgoing {
                parts,
                permit: None,
                read: None,
                close_after: close,
            };
            if responses.send(ready(out)).await.is_err() || close {
                return Err("authentication failed".into());
            }
            continue;
        }
        shard.request_started();
        let reply = handlers::dispatch(shard, request, frame, &session).await;
        let (shard, responses) = (shard.clone(), responses.clone());
        glommio::spawn_local(async move {
            let (api, response) = reply.await;
            let failed = response.as_ref().is_some_and(|r| r.failed);
            shard.metrics.record(api, started.elapsed(), failed);
            if let Some(response) = response {
                let out = Outgoing {
                    parts: response.parts,
                    permit: memory.take_permit(),
                    read: response.memory,
                    close_after: false,
                };
                let _ = responses.send(ready(out)).await;
            }
            drop(memory);
            shard.request_finished();
        })
        .detach();
    }
}

fn ready(out: Outgoing) -> Queued {
    Box::pin(std::future::ready(Some(out)))
}

/// Answers a frame that cannot be trusted (request id 0), then the connection closes.
async fn send_fatal(responses: &LocalSender<Queued>, message: &str) {
    let parts = handlers::fatal_response(message);
    let out = Outgoing {
        parts,
        permit: None,
        read: None,
        close_after: true,
    };
    let _ = responses.send(ready(out)).await;
}

/// Reads frames off a socket into shared buffers, cutting each frame out without a copy.
///
/// The buffer's whole length is initialized memory (reads need a `&mut [u8]`), of which
/// the first `filled` bytes hold data read and not yet cut out. A frame cut off the front
/// leaves the rest of the buffer initialized for the next reads, so memory is zeroed
/// once, when a buffer is allocated, not again for every read.
struct FrameReader {
    reader: ReadHalf<Stream>,
    buffer: BytesMut,
    filled: usize,
}

impl FrameReader {
    fn new(reader: ReadHalf<Stream>) -> FrameReader {
        FrameReader {
            reader,
            buffer: BytesMut::zeroed(READ_CHUNK_BYTES),
            filled: 0,
        }
    }

    /// Makes sure `len` bytes are buffered. `Ok(false)`: the peer closed first.
    async fn fill(&mut self, len: usize) -> Result<bool, String> {
        while self.filled < len {
            let room = self.buffer.len() - self.filled;
            if room < (len - self.filled).max(READ_BYTES_MIN) {
                // The frames cut out of the old buffer keep it alive as long as they are
                // held; what was read of the next frame moves to a fresh one.
                let size = self.filled + (len - self.filled).max(READ_CHUNK_BYTES);
                let mut fresh = BytesMut::zeroed(size);
                fresh[..self.filled].copy_from_slice(&self.buffer[..self.filled]);
                self.buffer = fresh;
            }
            let read = self
                .reader
                .read(&mut self.buffer[self.filled..])
                .await
                .map_err(|e| e.to_string())?;
            if read == 0 {
                return Ok(false);
            }
            self.filled += read;
        }
        Ok(true)
    }

    /// The next frame's prefix, or `None` when the peer closed between frames.
    async fn prefix(&mut self) -> Result<Option<[u8; FRAME_PREFIX_BYTES]>, String> {
        if !self.fill(FRAME_PREFIX_BYTES).await? {
            return if self.filled == 0 {
                Ok(None)
            } else {
                Err("connection closed inside a frame".into())
            };
        }
        let mut prefix = [0u8; FRAME_PREFIX_BYTES];
        prefix.copy_from_slice(&self.buffer[..FRAME_PREFIX_BYTES]);
        Ok(Some(prefix))
    }

    /// The `len` bytes after the prefix, as their own buffer (no copy).
    async fn body(&mut self, len: usize) -> Result<Option<BytesMut>, String> {
        if !self.fill(FRAME_PREFIX_BYTES + len).await? {
            return Ok(None);
        }
        let _prefix = self.buffer.split_to(FRAME_PREFIX_BYTES);
        self.filled -= FRAME_PREFIX_BYTES + len;
        Ok(Some(self.buffer.split_to(len)))
    }
}
