//! Connections: frames in, responses out, with the shard's memory budget in between.
//!
//! The reader reads a frame's 8-byte prefix, checks it against the limits, takes as many
//! permits from the shard's memory budget as the frame has bytes (waiting, and so not
//! reading the socket, while the budget is spent), then reads the frame. Requests are
//! dispatched in arrival order; their responses may be written out of order. A frame's
//! permits return when its response has been written.

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt, ReadHalf};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::StaticPermit;
use weir_wire::native::{self, FRAME_PREFIX_BYTES};

use super::handlers;
use crate::metrics::ShardMetrics;
use crate::shard::Shard;

/// Bytes read from a socket at once when frames are small.
const READ_CHUNK_BYTES: usize = 64 << 10;

/// A response ready to be written, holding its request's memory until then.
pub struct Outgoing {
    pub parts: Vec<Bytes>,
    pub permit: Option<StaticPermit>,
    pub close_after: bool,
}

/// Accepts connections on this shard's listener until shutdown.
pub async fn serve_listener(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            while !shard.shutting_down() {
                glommio::timer::sleep(std::time::Duration::from_millis(shard.config.tick_ms)).await;
            }
            None
        })
        .await;
        let Some(accepted) = accepted else { return };
        match accepted {
            Ok(stream)
                if shard.metrics.connections.get() < shard.config.shard_connections_max as u64 =>
            {
                let shard = shard.clone();
                glommio::spawn_local(serve_connection(shard, stream)).detach();
            }
            Ok(stream) => {
                tracing::warn!(
                    limit = shard.config.shard_connections_max,
                    "refusing a connection: shard at its limit"
                );
                drop(stream);
            }
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

async fn serve_connection(shard: Rc<Shard>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "unknown".to_string(), |a| a.to_string());
    let fd = stream.as_raw_fd();
    ShardMetrics::add(&shard.metrics.connections, 1);
    ShardMetrics::add(&shard.metrics.connections_total, 1);
    let (reader, writer) = futures_lite::io::split(stream);
    let (responses, outgoing) =
        local_channel::new_bounded::<Outgoing>(shard.config.connection_requests_max);
    let writer_shard = shard.clone();
    let writer_task = glommio::spawn_local(async move {
        let mut writer = writer;
        while let Some(out) = outgoing.recv().await {
            let bytes: usize = out.parts.iter().map(Bytes::len).sum();
            if let Err(error) = weir_client::io::write_parts(&mut writer, fd, &out.parts).await {
                tracing::debug!(%error, "writing a response failed");
                break;
            }
            ShardMetrics::add(&writer_shard.metrics.bytes_out, bytes as u64);
            drop(out.permit);
            if out.close_after {
                break;
            }
        }
        let _ = writer.close().await;
    });
    let result = read_requests(&shard, reader, &Rc::new(responses)).await;
    if let Err(reason) = result {
        tracing::debug!(%peer, %reason, "closing connection");
    }
    writer_task.await;
    shard
        .metrics
        .connections
        .set(shard.metrics.connections.get() - 1);
}

/// Reads frames until the peer closes, the broker shuts down or a frame is unusable.
async fn read_requests(
    shard: &Rc<Shard>,
    reader: ReadHalf<TcpStream>,
    responses: &Rc<LocalSender<Outgoing>>,
) -> Result<(), String> {
    let mut frames = FrameReader {
        reader,
        buffer: BytesMut::with_capacity(READ_CHUNK_BYTES),
    };
    let requests_max = shard.config.connection_requests_max as u64;
    let in_flight = Rc::new(glommio::sync::Semaphore::new(requests_max));
    loop {
        if shard.shutting_down() {
            return Err("shutting down".into());
        }
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
        let permit = shard
            .memory
            .acquire_static_permit(frame_bytes)
            .await
            .map_err(|e| e.to_string())?;
        let slot = in_flight
            .acquire_static_permit(1)
            .await
            .map_err(|e| e.to_string())?;
        ShardMetrics::add(&shard.metrics.memory_in_use, frame_bytes);
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
        shard.request_started();
        let memory = MemoryHold {
            shard: shard.clone(),
            bytes: frame_bytes,
            permit: Some(permit),
            slot: Some(slot),
        };
        let reply = handlers::dispatch(shard, request, frame).await;
        let (shard, responses) = (shard.clone(), responses.clone());
        glommio::spawn_local(async move {
            let (api, response) = reply.await;
            let failed = response.as_ref().is_some_and(|r| r.failed);
            shard.metrics.record(api, started.elapsed(), failed);
            let mut memory = memory;
            let permit = memory.permit.take();
            if let Some(response) = response {
                let _ = responses
                    .send(Outgoing {
                        parts: response.parts,
                        permit,
                        close_after: false,
                    })
                    .await;
            }
            drop(memory);
            shard.request_finished();
        })
        .detach();
    }
}

/// Gives back a request's share of the budget and its in-flight slot.
struct MemoryHold {
    shard: Rc<Shard>,
    bytes: u64,
    permit: Option<StaticPermit>,
    slot: Option<StaticPermit>,
}

impl Drop for MemoryHold {
    fn drop(&mut self) {
        let metrics = &self.shard.metrics;
        metrics
            .memory_in_use
            .set(metrics.memory_in_use.get().saturating_sub(self.bytes));
        self.slot.take();
    }
}

/// Answers a frame that cannot be trusted (request id 0), then the connection closes.
async fn send_fatal(responses: &LocalSender<Outgoing>, message: &str) {
    let parts = handlers::fatal_response(message);
    let _ = responses
        .send(Outgoing {
            parts,
            permit: None,
            close_after: true,
        })
        .await;
}

struct FrameReader {
    reader: ReadHalf<TcpStream>,
    buffer: BytesMut,
}

impl FrameReader {
    /// Makes sure `len` bytes are buffered. `Ok(false)`: the peer closed first.
    async fn fill(&mut self, len: usize) -> Result<bool, String> {
        while self.buffer.len() < len {
            let start = self.buffer.len();
            let want = (len - start).max(READ_CHUNK_BYTES);
            self.buffer.resize(start + want, 0);
            let read = self
                .reader
                .read(&mut self.buffer[start..])
                .await
                .map_err(|e| e.to_string());
            let read = match read {
                Ok(read) => read,
                Err(error) => {
                    self.buffer.truncate(start);
                    return Err(error);
                }
            };
            self.buffer.truncate(start + read);
            if read == 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The next frame's prefix, or `None` when the peer closed between frames.
    async fn prefix(&mut self) -> Result<Option<[u8; FRAME_PREFIX_BYTES]>, String> {
        if !self.fill(FRAME_PREFIX_BYTES).await? {
            return if self.buffer.is_empty() {
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
        Ok(Some(self.buffer.split_to(len)))
    }
}
