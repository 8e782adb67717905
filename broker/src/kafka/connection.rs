//! Kafka connections. Requests are read and started in arrival order, and may run
//! concurrently, but the protocol requires responses in request order: the writer
//! receives each request's pending response in arrival order and awaits them in turn.
//!
//! Each frame is read into its own buffer (size prefix first, then exactly the frame):
//! a produce request's record batches are cut out of that buffer and appended without
//! a copy, which needs the buffer to be theirs alone.

use std::rc::Rc;
use std::time::Instant;

use bytes::BytesMut;
use futures_lite::io::{AsyncReadExt, ReadHalf};
use glommio::channels::local_channel::LocalSender;
use glommio::net::TcpStream;

use super::codec::{self, DecodeError, SIZE_PREFIX_BYTES};
use super::handlers;
use crate::metrics::ShardMetrics;
use crate::net::{self, InFlight, MemoryHold, Outgoing, Queued};
use crate::shard::Shard;

pub async fn serve_connection(shard: Rc<Shard>, stream: TcpStream) {
    // Kafka reports a group member's host as `/address`.
    let client_host: Rc<str> = stream
        .peer_addr()
        .map_or_else(|_| "/unknown".into(), |a| format!("/{}", a.ip()).into());
    let read = move |shard, reader, responses| read_requests(shard, reader, responses, client_host);
    if let Err((reason, peer)) = net::run_connection(shard, stream, read).await {
        // A client that sent something unusable learns why only from the broker's log
        // (the protocol has no way to say it); warn so an operator can find it.
        tracing::warn!(%peer, %reason, "closing Kafka connection");
    }
}

/// Reads frames until the peer closes, the broker shuts down or a frame is unusable.
async fn read_requests(
    shard: Rc<Shard>,
    mut reader: ReadHalf<TcpStream>,
    responses: Rc<LocalSender<Queued>>,
    client_host: Rc<str>,
) -> Result<(), String> {
    let (shard, responses) = (&shard, &*responses);
    let slots = Rc::new(glommio::sync::Semaphore::new(
        shard.config.connection_requests_max as u64,
    ));
    loop {
        if shard.shutting_down() {
            return Err("shutting down".into());
        }
        let mut prefix = [0u8; SIZE_PREFIX_BYTES];
        match read_full(&mut reader, &mut prefix).await? {
            0 => return Ok(()),
            SIZE_PREFIX_BYTES => {}
            _ => return Err("connection closed inside a frame".into()),
        }
        let size = codec::frame_size(prefix, shard.config.frame_bytes_max)?;
        let frame_bytes = (SIZE_PREFIX_BYTES + size) as u64;
        let memory = MemoryHold::acquire(shard, &slots, frame_bytes).await?;
        let mut frame = BytesMut::zeroed(size);
        if read_full(&mut reader, &mut frame).await? != size {
            return Err("connection closed inside a frame".into());
        }
        ShardMetrics::add(&shard.metrics.bytes_in, frame_bytes);
        let started = Instant::now();
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
                let out = Outgoing {
                    parts,
                    permit: None,
                    close_after: false,
                };
                if responses
                    .send(Box::pin(std::future::ready(Some(out))))
                    .await
                    .is_err()
                {
                    return Err("response writer stopped".into());
                }
                continue;
            }
            Err(error) => return Err(error.to_string()),
        };
        let in_flight = InFlight::start(shard);
        let reply = handlers::dispatch(shard, request, &client_host).await;
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

/// Reads until `buffer` is full or the peer closes; returns the bytes read.
async fn read_full(reader: &mut ReadHalf<TcpStream>, buffer: &mut [u8]) -> Result<usize, String> {
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
