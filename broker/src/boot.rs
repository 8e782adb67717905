//! Starting and stopping the broker: one pinned glommio executor per shard, the channel
//! mesh between them, listeners, and a graceful stop on SIGTERM or SIGINT.

use std::io::Write;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use glommio::{Latency, LocalExecutorBuilder, Placement, Shares};

use crate::config::BrokerConfig;
use crate::router::{self, Envelope, Router};
use crate::security::SharedSecurity;
use crate::security::limits::ConnectionLimits;
use crate::security::tls::{PeerTls, TlsServer};
use crate::security::{Listener, ListenerKind};
use crate::shard::Shard;

/// How long a starting broker waits for a busy port to be released.
const PORT_WAIT: Duration = Duration::from_secs(5);

/// How long a stopping shard waits for its in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What all shards share: the stop flag (set by signals) and start/stop barriers.
#[derive(Debug, Default)]
struct Lifecycle {
    shutdown: Arc<AtomicBool>,
    /// The active controller as shard 0 last knew it (-1: none), for every shard to report.
    controller: Arc<std::sync::atomic::AtomicI32>,
    ready: Arc<AtomicBool>,
    started: AtomicUsize,
    drained: AtomicUsize,
}

/// What every shard's listeners share: the TLS side and the connection limits.
#[derive(Debug, Clone)]
struct Access {
    tls: Option<Arc<TlsServer>>,
    /// The limits of Kafka connections.
    limits: Arc<ConnectionLimits>,
    /// The native listeners carry the brokers' own traffic too: counted, never refused.
    unlimited: Arc<ConnectionLimits>,
    /// Quotas' usage and how to dial other brokers, for the shards themselves.
    shared: SharedSecurity,
}

/// How this broker dials the other brokers of its cluster. With the authorizer on, they
/// take it for what its certificate's subject says: that must be a super user, or its
/// requests would be refused everywhere (better said now than as a cluster that never
/// forms).
fn inter_broker_tls(config: &BrokerConfig, tls: Option<&TlsServer>) -> anyhow::Result<PeerTls> {
    if config.cluster.len() <= 1 {
        return Ok(PeerTls::default());
    }
    // The first two listeners are the ones brokers dial (`BrokerConfig::listeners`).
    let listeners = config.listeners()?;
    let peer_tls = PeerTls::new(
        tls,
        listeners[0].protocol.tls(),
        listeners[1].protocol.tls(),
    )?;
    if config.authorizer_enabled
        && let Some(tls) = tls
    {
        let principal = tls.principal().unwrap_or_default();
        anyhow::ensure!(
            config.super_users.contains(&principal),
            "authorizer_enabled in a cluster: this broker's certificate makes it {principal:?} \
             to the others, which is not among super_users"
        );
    }
    Ok(peer_tls)
}

/// Runs the broker until SIGTERM or SIGINT, then stops it gracefully.
pub fn serve(mut config: BrokerConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    config.data_dir = std::fs::canonicalize(&config.data_dir)?;
    // Held until the broker stops.
    let mut claims = PortClaims::default();
    config.native_listen = claims
        .claim(config.native_listen)
        .context("native listener")?;
    config.kafka_listen = claims
        .claim(config.kafka_listen)
        .context("Kafka listener")?;
    config.http_listen = claims.claim(config.http_listen).context("http listener")?;
    for extra in [
        &mut config.kafka_listeners,
        &mut config.native_listeners,
        &mut config.http_listeners,
    ] {
        for text in extra.iter_mut() {
            let (protocol, address) = text.split_once("://").context("a listener")?;
            let address = address
                .parse()
                .with_context(|| format!("listener {text}"))?;
            let claimed = claims
                .claim(address)
                .with_context(|| format!("listener {text}"))?;
            *text = format!("{protocol}://{claimed}");
        }
    }
    let limits = ConnectionLimits::new(config.connection_limits()?);
    let quotas =
        crate::security::quotas::QuotaManager::new(Duration::from_millis(config.quota_burst_ms));
    let unlimited = ConnectionLimits::new(Default::default());
    let tls = match config.tls_settings()? {
        Some(settings) => Some(Arc::new(TlsServer::new(&settings).context("TLS")?)),
        None => None,
    };
    let peer_tls = inter_broker_tls(&config, tls.as_deref())?;
    let shards = config.shard_count();
    let lifecycle = Arc::new(Lifecycle::default());
    lifecycle.controller.store(-1, Ordering::Release);
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, lifecycle.shutdown.clone())
            .context("installing signal handlers")?;
    }
    let secured = config
        .listeners()?
        .iter()
        .any(|l| l.protocol != crate::security::SecurityProtocol::Plaintext);
    if secured && config.super_users.is_empty() {
        tracing::warn!(
            "secured listeners but no super_users: anyone who reaches the broker (the native \
             listener included) can change credentials and ACLs"
        );
    }
    let config = Arc::new(config);
    if let Some(tls) = &tls
        && config.tls_reload_interval_ms > 0
    {
        let (tls, shutdown) = (tls.clone(), lifecycle.shutdown.clone());
        let every = Duration::from_millis(config.tls_reload_interval_ms);
        std::thread::Builder::new()
            .name("weir-tls-reload".into())
            .spawn(move || {
                let mut last = Instant::now();
                while !shutdown.load(Ordering::Acquire) {
                    // Short naps, so that a stopping broker does not wait for the interval.
                    std::thread::sleep(every.min(Duration::from_millis(200)));
                    if last.elapsed() >= every {
                        tls.reload_if_changed();
                        last = Instant::now();
                    }
                }
            })
            .context("starting the certificate reloader")?;
    }
    let mesh = router::mesh(shards);
    let mut handles = Vec::with_capacity(shards);
    for id in 0..shards {
        let cpu = config.cpus.get(id).copied().unwrap_or(id);
        let (config, mesh, lifecycle) = (config.clone(), mesh.clone(), lifecycle.clone());
        let access = Access {
            tls: tls.clone(),
            limits: limits.clone(),
            unlimited: unlimited.clone(),
            shared: SharedSecurity {
                quotas: quotas.clone(),
                peer_tls: peer_tls.clone(),
            },
        };
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("weir-shard-{id}"))
            .spawn(move || async move { run_shard(id, shards, config, mesh, lifecycle, access).await })
            .map_err(std::io::Error::from)
            .with_context(|| format!("starting shard {id} on CPU {cpu} (weir needs io_uring and locked memory; see README)"))?;
        handles.push(handle);
    }
    let mut failure = None;
    for (id, handle) in handles.into_iter().enumerate() {
        let result = handle
            .join()
            .map_err(|e| anyhow::anyhow!("shard {id} stopped: {e}"))
            .and_then(|r| r);
        if let Err(error) = result {
            lifecycle.shutdown.store(true, Ordering::Release);
            failure.get_or_insert(error.context(format!("shard {id}")));
        }
    }
    drop(claims);
    failure.map_or(Ok(()), Err)
}

fn glommio_error<T>(error: glommio::GlommioError<T>) -> anyhow::Error {
    anyhow::anyhow!(std::io::Error::from(error))
}

/// The listeners' ports, held from boot until the broker stops.
///
/// Every shard binds a listener with SO_REUSEPORT, which would let a second broker bind
/// the same port the same way and share it silently, each getting some of the
/// connections. So each port is first probed without SO_REUSEPORT (which fails if anyone
/// holds it) and then held by a guard: a socket bound with SO_REUSEPORT alone, never
/// listening. The shards' listeners bind beside it; another broker's probe does not (its
/// SO_REUSEADDR does not excuse a socket without it), nor does an ephemeral port pick.
/// The guard covers the time until the shards listen, which for the Kafka listeners is
/// after the metadata is in, seconds on a busy machine.
#[derive(Debug, Default)]
struct PortClaims {
    guards: Vec<socket2::Socket>,
}

impl PortClaims {
    /// Resolves port 0 to a free port, checks that no other process holds the address,
    /// and holds it.
    ///
    /// A port a broker just stopped using can stay busy for a moment: the kernel tears
    /// down the stopped process's io_uring instance (and releases the listeners its
    /// pending accepts hold) after the process has exited. So a busy port is retried for
    /// a while.
    fn claim(&mut self, address: SocketAddr) -> anyhow::Result<SocketAddr> {
        let deadline = Instant::now() + PORT_WAIT;
        loop {
            // Between the probe's close and the guard's bind, only a bind of this exact
            // port could slip in: ephemeral ports are picked at random.
            let claimed = StdListener::bind(address)
                .and_then(|probe| probe.local_addr())
                .and_then(|address| Ok((address, crate::net::reuse_port_socket(address, false)?)));
            match claimed {
                Ok((address, guard)) => {
                    self.guards.push(guard);
                    return Ok(address);
                }
                Err(error)
                    if error.kind() == std::io::ErrorKind::AddrInUse
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(error) => {
                    return Err(error).with_context(|| format!("{address} is not available"));
                }
            }
        }
    }
}

async fn run_shard(
    id: usize,
    count: usize,
    config: Arc<BrokerConfig>,
    mesh: glommio::channels::channel_mesh::FullMesh<Envelope>,
    lifecycle: Arc<Lifecycle>,
    access: Access,
) -> anyhow::Result<()> {
    let (senders, receivers) = mesh
        .join()
        .await
        .map_err(|e| glommio_error(e).context("joining the shard mesh"))?;
    let router = Router::new(id, senders);
    let shard = Shard::new(
        id,
        count,
        config.clone(),
        router.clone(),
        lifecycle.shutdown.clone(),
        lifecycle.controller.clone(),
        access.shared.clone(),
    )?;
    let executor = glommio::executor();
    let requests = executor.create_task_queue(
        Shares::Static(1000),
        Latency::Matters(Duration::from_millis(1)),
        "requests",
    );
    router
        .serve(shard.clone(), receivers, requests)
        .map_err(glommio_error)?;
    let background =
        executor.create_task_queue(Shares::Static(100), Latency::NotImportant, "background");
    let started = start(&shard, &config, &lifecycle, access, requests, background).await;
    if let Err(error) = &started {
        tracing::error!(
            shard = id,
            error = format!("{error:#}"),
            "shard failed to start; stopping the broker"
        );
        lifecycle.shutdown.store(true, Ordering::Release);
    }
    while !lifecycle.shutdown.load(Ordering::Acquire) {
        glommio::timer::sleep(Duration::from_millis(config.tick_ms)).await;
    }
    stop(&shard, &lifecycle, count).await;
    started
}

async fn start(
    shard: &Rc<Shard>,
    config: &BrokerConfig,
    lifecycle: &Lifecycle,
    access: Access,
    requests: glommio::TaskQueueHandle,
    background: glommio::TaskQueueHandle,
) -> anyhow::Result<()> {
    weir_storage::probe_direct_io(&config.data_dir).await?;
    let listeners = config.listeners()?;
    let tls_of = |listener: &Listener| access.tls.clone().filter(|_| listener.protocol.tls());
    // The native listeners first: the other brokers must reach this one before the
    // controller quorum can form. Requests that come before the metadata get retriable
    // errors.
    let of_kind = |kind| listeners.iter().filter(move |l: &&Listener| l.kind == kind);
    for listener in of_kind(ListenerKind::Native) {
        let serve = crate::native::serve_connection;
        spawn_listener(shard, listener, tls_of(listener), &access, requests, serve)?;
    }
    glommio::spawn_local_into(shard.clone().run_background(), background)
        .map_err(glommio_error)?
        .detach();
    glommio::spawn_local_into(shard.clone().run_compaction(), background)
        .map_err(glommio_error)?
        .detach();
    if shard.id == 0 {
        crate::shard::remove_deleted_dirs(&config.data_dir, &shard.storage);
        shard
            .start_cluster(requests)
            .await
            .context("opening the controller quorum's metadata log")?;
    }
    // Serving once registered and unfenced, with the internal topics in place (in a
    // cluster: once the quorum has formed and enough brokers are up).
    shard.wait_ready().await;
    // Kafka clients only once the metadata is in: before, a restarted broker would call
    // topics unknown, which librdkafka does not retry. A refused connection it does.
    for listener in of_kind(ListenerKind::Kafka) {
        let serve = crate::kafka::serve_connection;
        spawn_listener(shard, listener, tls_of(listener), &access, requests, serve)?;
    }
    lifecycle.started.fetch_add(1, Ordering::AcqRel);
    if shard.id == 0 {
        for listener in of_kind(ListenerKind::Http) {
            let socket = bind(listener)?;
            let serve = crate::http::serve(
                shard.clone(),
                socket,
                tls_of(listener),
                lifecycle.ready.clone(),
            );
            glommio::spawn_local_into(serve, requests)
                .map_err(glommio_error)?
                .detach();
        }
        while lifecycle.started.load(Ordering::Acquire) < shard.count && !shard.shutting_down() {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        lifecycle.ready.store(true, Ordering::Release);
        announce(config, shard.count);
    }
    Ok(())
}

/// Serves `listener` on this shard with `serve` for each connection.
fn spawn_listener<F, Fut>(
    shard: &Rc<Shard>,
    listener: &Listener,
    tls: Option<Arc<TlsServer>>,
    access: &Access,
    queue: glommio::TaskQueueHandle,
    serve: F,
) -> anyhow::Result<()>
where
    F: Fn(Rc<Shard>, crate::net::Accepted) -> Fut + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let socket = bind(listener)?;
    let listener = Rc::new(listener.clone());
    let limits = match listener.kind {
        ListenerKind::Kafka => access.limits.clone(),
        _ => access.unlimited.clone(),
    };
    let accepting = crate::net::serve_listener(shard.clone(), listener, socket, tls, limits, serve);
    glommio::spawn_local_into(accepting, queue)
        .map_err(glommio_error)?
        .detach();
    Ok(())
}

fn bind(listener: &Listener) -> anyhow::Result<glommio::net::TcpListener> {
    crate::net::bind(listener.address)
        .map_err(|e| anyhow::Error::from(e).context(format!("binding {listener}")))
}

/// Tells whoever started the broker (people, scripts, tests) where it serves: the main
/// listeners, then each extra one as `KIND+PROTOCOL=ADDRESS` (`kafka+SASL_SSL=...`).
fn announce(config: &BrokerConfig, shards: usize) {
    let extra: String = [
        ("kafka", &config.kafka_listeners),
        ("native", &config.native_listeners),
        ("http", &config.http_listeners),
    ]
    .iter()
    .flat_map(|(kind, listeners)| {
        listeners.iter().filter_map(move |text| {
            let (protocol, address) = text.split_once("://")?;
            Some(format!(
                " {kind}+{}={address}",
                protocol.to_ascii_uppercase()
            ))
        })
    })
    .collect();
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(
        stdout,
        "weir serving native={} kafka={} http={}{extra} shards={shards} data_dir={}",
        config.native_listen,
        config.kafka_listen,
        config.http_listen,
        config.data_dir.display()
    );
    let _ = stdout.flush();
}

/// Stops accepting (the listeners watch the flag), waits for this shard's in-flight
/// requests, waits for every shard to get there (they may still call this one), then
/// closes the logs.
async fn stop(shard: &Rc<Shard>, lifecycle: &Lifecycle, count: usize) {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while shard.requests_in_flight() > 0 && Instant::now() < deadline {
        let drained = shard.drained.listen();
        if shard.requests_in_flight() > 0 {
            futures_lite::future::or(drained, glommio::timer::sleep(Duration::from_millis(10)))
                .await;
        }
    }
    lifecycle.drained.fetch_add(1, Ordering::AcqRel);
    while lifecycle.drained.load(Ordering::Acquire) < count && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    shard.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_port_is_held_from_boot_against_other_brokers() {
        let mut claims = PortClaims::default();
        let address = claims.claim("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(address.port(), 0);
        // Before any shard listens, another broker's probe finds the port taken...
        let probe = StdListener::bind(address).unwrap_err();
        assert_eq!(probe.kind(), std::io::ErrorKind::AddrInUse);
        // ...while the shards' listeners bind beside the guard and serve.
        let shards: Vec<_> = (0..2)
            .map(|_| crate::net::shared_listener(address).unwrap())
            .collect();
        std::net::TcpStream::connect(address).unwrap();
        drop(shards);
        drop(claims);
        StdListener::bind(address).unwrap();
    }
}
