//! What both front doors share: accepting connections, a request's hold on the shard's
//! memory budget, and the task that writes responses.
//!
//! A reader takes as many permits from the shard's memory budget as a frame has bytes
//! before reading it (waiting, and so not reading the socket, while the budget is spent)
//! plus one of the connection's in-flight slots. The permits return when the response
//! has been written.

use std::future::Future;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::{Semaphore, StaticPermit};

use crate::metrics::ShardMetrics;
use crate::security::limits::{Admitted, ConnectionLimits, Refusal};
use crate::security::tls::TlsServer;
use crate::security::{Caller, Listener, Principal};
use crate::shard::Shard;

pub use weir_client::io::Stream;

/// A response ready to be written, holding its request's memory (and what a fetch read
/// for it) until then.
#[derive(Debug)]
pub struct Outgoing {
    pub parts: Vec<Bytes>,
    pub permit: Option<MemoryPermit>,
    pub read: Option<MemoryPermit>,
    pub close_after: bool,
}

/// What the writer task receives, in the order it must write: a response that is
/// ready, or one still being computed (the Kafka protocol answers in request order).
pub type Queued = Pin<Box<dyn Future<Output = Option<Outgoing>>>>;

/// Binds a listener the way every shard shares a port: SO_REUSEPORT, so each shard
/// accepts its own connections, and SO_REUSEADDR, so a restarted broker can bind again
/// while connections it closed linger in TIME_WAIT (glommio's own `bind` sets only the
/// first, and Linux then refuses the port for a minute after, say, an HTTP scrape).
pub fn bind(address: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let fd = shared_listener(address)?.into_raw_fd();
    // SAFETY: `fd` is a bound, listening TCP socket that nothing else owns: `into_raw_fd`
    // gave up the only handle to it, and the listener takes ownership.
    #[allow(unsafe_code)]
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    Ok(listener)
}

/// The socket `bind` serves on.
pub fn shared_listener(address: std::net::SocketAddr) -> std::io::Result<socket2::Socket> {
    let socket = reuse_port_socket(address, true)?;
    socket.listen(1024)?;
    Ok(socket)
}

/// A TCP socket bound to `address` with SO_REUSEPORT, and SO_REUSEADDR if asked.
pub fn reuse_port_socket(
    address: std::net::SocketAddr,
    reuse_address: bool,
) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(reuse_address)?;
    socket.set_reuse_port(true)?;
    socket.bind(&SockAddr::from(address))?;
    Ok(socket)
}

/// A connection accepted (and, on a TLS listener, through its handshake).
#[derive(Debug)]
pub struct Accepted {
    pub stream: Stream,
    /// Who the connection is before any SASL exchange: a client certificate's subject,
    /// else anonymous.
    pub principal: Principal,
    pub listener: Rc<Listener>,
}

/// A connection held off by a client quota's throttle: its read loop reads nothing more
/// until the time is over (KIP-219's muted channel); responses already due still go out.
#[derive(Debug, Default)]
pub struct Mute {
    until: std::cell::Cell<Option<Instant>>,
}

impl Mute {
    /// Holds the connection off for `delay` from now, unless it is held longer already.
    pub fn hold(&self, delay: Duration) {
        if delay.is_zero() {
            return;
        }
        let until = Instant::now() + delay;
        self.until
            .set(Some(self.until.get().map_or(until, |u| u.max(until))));
    }

    /// Waits out the hold, if there is one (or until the shard stops).
    pub async fn wait(&self, shard: &Shard) {
        let Some(until) = self.until.get() else {
            return;
        };
        let wait = until.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            futures_lite::future::or(glommio::timer::sleep(wait), shard.stopped()).await;
        }
        self.until.set(None);
    }
}

impl Accepted {
    /// Who the connection is and where from, for authorization.
    pub fn caller(&self) -> Caller {
        let host = self.stream.peer_addr().map_or_else(
            |_| "unknown".to_string(),
            |a| a.ip().to_canonical().to_string(),
        );
        Caller::new(self.principal.clone(), host)
    }
}

/// Accepts connections on this shard's listener until shutdown, serving each with
/// `serve` (after the TLS handshake, on a TLS listener).
pub async fn serve_listener<F, Fut>(
    shard: Rc<Shard>,
    listener: Rc<Listener>,
    socket: TcpListener,
    tls: Option<Arc<TlsServer>>,
    limits: Arc<ConnectionLimits>,
    serve: F,
) where
    F: Fn(Rc<Shard>, Accepted) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let serve = Rc::new(serve);
    while let Some(stream) = next_connection(&shard, &socket).await {
        if shard.metrics.connections.get() >= shard.config.shard_connections_max as u64 {
            tracing::warn!(
                limit = shard.config.shard_connections_max,
                "refusing a connection: shard at its limit"
            );
            drop(stream);
            continue;
        }
        let Some(admitted) = admit(&shard, &limits, &stream).await else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (shard, listener, tls, serve) =
            (shard.clone(), listener.clone(), tls.clone(), serve.clone());
        glommio::spawn_local(async move {
            let _admitted = admitted;
            ShardMetrics::add(&shard.metrics.connections, 1);
            ShardMetrics::add(&shard.metrics.connections_total, 1);
            let accepted = match tls {
                None => Some(Accepted {
                    stream: Stream::Plain(stream),
                    principal: Principal::anonymous(),
                    listener,
                }),
                Some(tls) => match tls.accept(stream).await {
                    Ok((stream, principal)) => Some(Accepted {
                        stream,
                        principal,
                        listener,
                    }),
                    Err(error) => {
                        tracing::info!(%error, "TLS handshake failed");
                        None
                    }
                },
            };
            if let Some(accepted) = accepted {
                serve(shard.clone(), accepted).await;
            }
            let connections = &shard.metrics.connections;
            connections.set(connections.get() - 1);
        })
        .detach();
    }
}

/// The connection's place under the broker's connection limits: `None` if it must be
/// closed; waits (accepting nothing more on this shard) while the creation rate is spent.
async fn admit(
    shard: &Shard,
    limits: &Arc<ConnectionLimits>,
    stream: &TcpStream,
) -> Option<Admitted> {
    let ip = stream.peer_addr().ok()?.ip();
    loop {
        match limits.admit(ip, std::time::Instant::now()) {
            Ok(admitted) => return Some(admitted),
            Err(Refusal::Later(wait)) => {
                ShardMetrics::add(&shard.metrics.connections_throttled, 1);
                glommio::timer::sleep(wait).await;
            }
            Err(Refusal::Full(reason)) => {
                ShardMetrics::add(&shard.metrics.connections_refused, 1);
                tracing::warn!(%ip, %reason, "refusing a connection");
                return None;
            }
        }
    }
}

/// The next accepted connection, or `None` once the shard is shutting down. The accept is
/// raced against `Shard::stopped`, an event, so it is polled only when woken (see there);
/// a failed accept is logged and retried after a pause.
pub async fn next_connection(shard: &Shard, listener: &TcpListener) -> Option<TcpStream> {
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shard.stopped().await;
            None
        })
        .await?;
        match accepted {
            Ok(stream) => return Some(stream),
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// Runs one connection: `read_requests` reads frames and queues each request's pending
/// response; a writer task sends them in queue order. Returns once both are done, with the
/// reason the reader stopped (if it was not the peer closing) and the peer's address.
pub async fn run_connection<F, Fut>(
    shard: Rc<Shard>,
    stream: Stream,
    read_requests: F,
) -> Result<(), (String, String)>
where
    F: FnOnce(Rc<Shard>, ReadHalf<Stream>, Rc<LocalSender<Queued>>) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "unknown".to_string(), |a| a.to_string());
    let fd = stream.plain_fd();
    let (reader, writer) = futures_lite::io::split(stream);
    let (responses, queue) =
        local_channel::new_bounded::<Queued>(shard.config.connection_requests_max);
    let writer_task = spawn_writer(shard.clone(), writer, fd, queue);
    // The reader's future owns the only long-lived sender: when it ends, the writer
    // drains what is queued and stops.
    let result = read_requests(shard, reader, Rc::new(responses)).await;
    writer_task.await;
    result.map_err(|reason| (reason, peer))
}

/// Responses one send may carry, and their bytes: past these a response's memory permit
/// would wait on the ones sent with it.
const COALESCED_RESPONSES_MAX: usize = 32;
const COALESCED_BYTES_MAX: usize = 1 << 20;

/// Writes queued responses in queue order until the queue closes or a response asks
/// for the connection to close. Responses that are ready behind the one at hand go out
/// in the same send: one sync answers several produce requests of a connection at once,
/// and a `sendmsg` over loopback costs about as much as the broker's work on a request.
fn spawn_writer(
    shard: Rc<Shard>,
    mut writer: WriteHalf<Stream>,
    fd: Option<RawFd>,
    queue: LocalReceiver<Queued>,
) -> glommio::Task<()> {
    glommio::spawn_local(async move {
        let mut next: Option<Queued> = None;
        loop {
            let queued = match next.take() {
                Some(queued) => queued,
                None => match queue.recv().await {
                    Some(queued) => queued,
                    None => break,
                },
            };
            let Some(first) = queued.await else { continue };
            let mut bytes: usize = first.parts.iter().map(Bytes::len).sum();
            let mut sent = vec![first];
            while sent.len() < COALESCED_RESPONSES_MAX
                && bytes < COALESCED_BYTES_MAX
                && !sent.last().is_some_and(|out| out.close_after)
            {
                let Some(Some(mut queued)) = futures_lite::future::poll_once(queue.recv()).await
                else {
                    break;
                };
                match futures_lite::future::poll_once(&mut queued).await {
                    Some(Some(out)) => {
                        bytes += out.parts.iter().map(Bytes::len).sum::<usize>();
                        sent.push(out);
                    }
                    Some(None) => {}
                    None => {
                        next = Some(queued);
                        break;
                    }
                }
            }
            let parts: Vec<Bytes> = sent
                .iter()
                .flat_map(|out| out.parts.iter().cloned())
                .collect();
            let written = weir_client::io::write_frame(&mut writer, fd, &parts).await;
            if let Err(error) = written {
                tracing::debug!(%error, "writing a response failed");
                break;
            }
            ShardMetrics::add(&shard.metrics.bytes_out, bytes as u64);
            if sent.iter().any(|out| out.close_after) {
                break;
            }
        }
        let _ = writer.close().await;
    })
}

/// A request's share of the shard's memory budget and its connection's in-flight slot.
/// The budget's share moves into the response (`take_permit`) and returns when the
/// response is written; the slot returns on drop.
#[derive(Debug)]
pub struct MemoryHold {
    permit: Option<MemoryPermit>,
    _slot: StaticPermit,
}

impl MemoryHold {
    /// Waits for `bytes` of the shard's budget and one of the connection's slots.
    pub async fn acquire(
        shard: &Rc<Shard>,
        slots: &Rc<Semaphore>,
        bytes: u64,
    ) -> Result<MemoryHold, String> {
        let permit = MemoryPermit::reserve(shard, bytes).await?;
        let slot = slots
            .acquire_static_permit(1)
            .await
            .map_err(|e| e.to_string())?;
        Ok(MemoryHold {
            permit: Some(permit),
            _slot: slot,
        })
    }

    pub fn take_permit(&mut self) -> Option<MemoryPermit> {
        self.permit.take()
    }
}

/// Bytes of the shard's memory budget, counted in `weir_shard_memory_bytes`, returned
/// when dropped: a request's frame, or the record bytes a fetch read (reserved before
/// reading, so reads wait while the budget is spent and what they allocate is bounded
/// first, then cut to what was read). Responses hold theirs until they are written.
#[derive(Debug)]
pub struct MemoryPermit {
    shard: Rc<Shard>,
    bytes: u64,
}

impl MemoryPermit {
    /// Waits for `bytes` of the shard's budget.
    pub async fn reserve(shard: &Rc<Shard>, bytes: u64) -> Result<MemoryPermit, String> {
        shard
            .memory
            .acquire(bytes)
            .await
            .map_err(|e| e.to_string())?;
        ShardMetrics::add(&shard.metrics.memory_in_use, bytes);
        Ok(MemoryPermit {
            shard: shard.clone(),
            bytes,
        })
    }

    /// Holds `bytes`, what a read made of the reservation: the rest returns to the
    /// budget; bytes past it (a first batch larger than the whole limit, read already)
    /// are held too when the budget has them now.
    pub fn settle(&mut self, bytes: u64) {
        if bytes < self.bytes {
            self.release(self.bytes - bytes);
            self.bytes = bytes;
        }
        let more = bytes - self.bytes;
        if more > 0 && self.shard.memory.try_acquire(more).unwrap_or(false) {
            ShardMetrics::add(&self.shard.metrics.memory_in_use, more);
            self.bytes = bytes;
        }
    }

    fn release(&self, bytes: u64) {
        self.shard.memory.signal(bytes);
        let metrics = &self.shard.metrics;
        metrics
            .memory_in_use
            .set(metrics.memory_in_use.get().saturating_sub(bytes));
    }
}

impl Drop for MemoryPermit {
    fn drop(&mut self) {
        self.release(self.bytes);
    }
}

/// Counts a request in flight for as long as it lives, even if its task is cancelled
/// (a Kafka connection that closes drops the responses it has not written).
#[derive(Debug)]
pub struct InFlight(Rc<Shard>);

impl InFlight {
    pub fn start(shard: &Rc<Shard>) -> InFlight {
        shard.request_started();
        InFlight(shard.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}
