//! `/metrics` (Prometheus text), `/health` and `/ready`, served by shard 0.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpListener;

use crate::metrics;
use crate::net::Stream;
use crate::router::{ShardAnswer, ShardCall};
use crate::security::tls::TlsServer;
use crate::shard::Shard;

/// The most of a request head read before giving up on it.
const REQUEST_HEAD_BYTES_MAX: usize = 8 << 10;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn serve(
    shard: Rc<Shard>,
    listener: TcpListener,
    tls: Option<Arc<TlsServer>>,
    ready: Arc<AtomicBool>,
) {
    while let Some(stream) = crate::net::next_connection(&shard, &listener).await {
        {
            let (shard, ready, tls) = (shard.clone(), ready.clone(), tls.clone());
            glommio::spawn_local(async move {
                let answered = futures_lite::future::or(
                    async {
                        let stream = match tls {
                            None => Stream::Plain(stream),
                            Some(tls) => match tls.accept(stream).await {
                                Ok((stream, _)) => stream,
                                Err(error) => return Some(Err(error)),
                            },
                        };
                        Some(answer(&shard, stream, &ready).await)
                    },
                    async {
                        glommio::timer::sleep(REQUEST_TIMEOUT).await;
                        None
                    },
                );
                if let Some(Err(error)) = answered.await {
                    tracing::debug!(%error, "http request failed");
                }
            })
            .detach();
        }
    }
}

async fn answer(shard: &Rc<Shard>, mut stream: Stream, ready: &AtomicBool) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = stream.read(&mut chunk).await?;
        if read == 0 || head.len() + read > REQUEST_HEAD_BYTES_MAX {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..read]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut words = line.split_whitespace();
    let (method, path) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
    );
    let (status, body) = match (method, path) {
        ("GET", "/health") => ("200 OK", "ok\n".to_string()),
        ("GET", "/ready") if ready.load(Ordering::Acquire) && !shard.shutting_down() => {
            ("200 OK", "ready\n".to_string())
        }
        ("GET", "/ready") => ("503 Service Unavailable", "not ready\n".to_string()),
        ("GET", "/metrics") => ("200 OK", gather_metrics(shard).await),
        ("GET", _) => ("404 Not Found", "not found\n".to_string()),
        _ => ("405 Method Not Allowed", "only GET\n".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.close().await
}

async fn gather_metrics(shard: &Rc<Shard>) -> String {
    let mut snapshots = Vec::with_capacity(shard.count);
    for owner in 0..shard.count {
        if let Ok(ShardAnswer::Metrics(snapshot)) =
            shard.router.call(shard, owner, ShardCall::Metrics).await
        {
            snapshots.push(*snapshot);
        }
    }
    metrics::render(&snapshots)
}
