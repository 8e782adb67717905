//! A cluster of real `weir serve` processes for tests: each broker on its own address and
//! data directory, started, killed (SIGKILL), paused (SIGSTOP) and restarted by PID, and,
//! in network namespaces, cut off from the others with iptables.
//!
//! Namespaces: each broker runs in its own network namespace with one veth into a bridge
//! of the test's own (`10.A.B.0/24`, A.B from the test's process id, so that tests in
//! parallel never share one); the test process reaches every broker through the bridge.
//! A cut drops packets between brokers only: clients keep reaching both sides, as in
//! Jepsen's partitions. Everything is torn down on drop (namespaces take their veths and
//! rules with them).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

const START_TIMEOUT: Duration = Duration::from_secs(90);

/// Runs a command; fails with its stderr if it fails.
fn run(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Network namespaces for `count` brokers behind one bridge.
#[derive(Debug)]
pub struct Network {
    prefix: String,
    subnet: String,
    count: usize,
}

impl Network {
    /// Whether this machine can make network namespaces (root, iproute2, iptables).
    pub fn available() -> bool {
        let probe = format!("wprobe{}", std::process::id());
        let made = Command::new("ip")
            .args(["netns", "add", &probe])
            .output()
            .is_ok_and(|o| o.status.success());
        if made {
            let _ = Command::new("ip").args(["netns", "del", &probe]).output();
        }
        made && Command::new("iptables")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    pub fn create(count: usize) -> anyhow::Result<Network> {
        let pid = std::process::id();
        let network = Network {
            prefix: format!("w{pid}"),
            subnet: format!("10.{}.{}", 100 + (pid >> 8) % 150, pid % 256),
            count,
        };
        let bridge = network.bridge();
        run(Command::new("ip").args(["link", "add", &bridge, "type", "bridge"]))?;
        run(Command::new("ip").args([
            "addr",
            "add",
            &format!("{}.254/24", network.subnet),
            "dev",
            &bridge,
        ]))?;
        run(Command::new("ip").args(["link", "set", &bridge, "up"]))?;
        for node in 0..count {
            let ns = network.namespace(node);
            let veth = format!("{}v{node}", network.prefix);
            run(Command::new("ip").args(["netns", "add", &ns]))?;
            run(Command::new("ip").args([
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]))?;
            run(Command::new("ip").args(["link", "set", &veth, "master", &bridge, "up"]))?;
            network.exec(
                node,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{}/24", network.ip(node)),
                    "dev",
                    "eth0",
                ],
            )?;
            network.exec(node, &["ip", "link", "set", "eth0", "up"])?;
            network.exec(node, &["ip", "link", "set", "lo", "up"])?;
        }
        Ok(network)
    }

    fn bridge(&self) -> String {
        format!("{}br", self.prefix)
    }

    pub fn namespace(&self, node: usize) -> String {
        format!("{}n{node}", self.prefix)
    }

    pub fn ip(&self, node: usize) -> String {
        format!("{}.{}", self.subnet, node + 1)
    }

    fn exec(&self, node: usize, command: &[&str]) -> anyhow::Result<String> {
        run(Command::new("ip")
            .args(["netns", "exec", &self.namespace(node)])
            .args(command))
    }

    /// Drops every packet from `from` to `to` (one way).
    pub fn cut(&self, from: usize, to: usize) -> anyhow::Result<()> {
        let destination = self.ip(to);
        self.exec(
            from,
            &["iptables", "-A", "OUTPUT", "-d", &destination, "-j", "DROP"],
        )?;
        Ok(())
    }

    /// Cuts `node` off from every other broker, both ways.
    pub fn isolate(&self, node: usize) -> anyhow::Result<()> {
        for other in (0..self.count).filter(|o| *o != node) {
            self.cut(node, other)?;
            self.cut(other, node)?;
        }
        Ok(())
    }

    /// Splits the brokers into `side` and the rest, both ways.
    pub fn split(&self, side: &[usize]) -> anyhow::Result<()> {
        for a in side {
            for b in (0..self.count).filter(|b| !side.contains(b)) {
                self.cut(*a, b)?;
                self.cut(b, *a)?;
            }
        }
        Ok(())
    }

    pub fn heal(&self) -> anyhow::Result<()> {
        for node in 0..self.count {
            self.exec(node, &["iptables", "-F", "OUTPUT"])?;
        }
        Ok(())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for node in 0..self.count {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.namespace(node)])
                .output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .output();
    }
}

/// One broker of a test cluster.
#[derive(Debug)]
pub struct Node {
    pub id: usize,
    pub data_dir: PathBuf,
    pub native: String,
    pub kafka: String,
    pub http: String,
    /// Every address the broker announced when it last started, by name
    /// (`kafka+SASL_PLAINTEXT`, ...): extra listeners on port 0 get theirs then.
    pub announced: Vec<(String, String)>,
    args: Vec<String>,
    namespace: Option<String>,
    child: Option<Child>,
    paused: bool,
}

impl Node {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// A cluster of `weir serve` processes.
#[derive(Debug)]
pub struct Cluster {
    binary: PathBuf,
    pub nodes: Vec<Node>,
    pub network: Option<Network>,
    env: Vec<(String, String)>,
    /// What `cli` adds to every command (how the CLI reaches secured brokers).
    pub client_args: Vec<String>,
}

/// Ports the OS says are free now (on `ip`), for brokers that must know each other's
/// addresses before they start.
fn free_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    let listeners: Vec<std::net::TcpListener> = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()?)
}

impl Cluster {
    /// Starts `count` brokers, on 127.0.0.1 (free ports) or, with `namespaces`, each in
    /// its own network namespace; waits until every one announces itself.
    pub fn start(
        binary: impl AsRef<Path>,
        dir: &Path,
        count: usize,
        namespaces: bool,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Cluster> {
        let network = if namespaces {
            Some(Network::create(count)?)
        } else {
            None
        };
        let ports = free_ports(3 * count)?;
        let mut nodes = Vec::with_capacity(count);
        for id in 0..count {
            let (host, native, kafka, http) = match &network {
                Some(network) => (network.ip(id), 9192, 9092, 9644),
                None => (
                    "127.0.0.1".to_string(),
                    ports[3 * id],
                    ports[3 * id + 1],
                    ports[3 * id + 2],
                ),
            };
            nodes.push(Node {
                id,
                data_dir: dir.join(format!("broker-{id}")),
                native: format!("{host}:{native}"),
                kafka: format!("{host}:{kafka}"),
                http: format!("{host}:{http}"),
                announced: Vec::new(),
                args: Vec::new(),
                namespace: network.as_ref().map(|n| n.namespace(id)),
                child: None,
                paused: false,
            });
        }
        let members: Vec<String> = nodes.iter().map(|n| n.native.clone()).collect();
        for node in &mut nodes {
            node.args = vec![
                "serve".into(),
                "--data-dir".into(),
                node.data_dir.display().to_string(),
                "--node-id".into(),
                node.id.to_string(),
                "--cluster".into(),
                members.join(","),
                "--native-listen".into(),
                node.native.clone(),
                "--kafka-listen".into(),
                node.kafka.clone(),
                "--http-listen".into(),
                node.http.clone(),
                "--cores".into(),
                "1".into(),
            ];
        }
        let mut cluster = Cluster {
            binary: binary.as_ref().to_path_buf(),
            nodes,
            network,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            client_args: Vec::new(),
        };
        let announced: Vec<_> = (0..count)
            .map(|id| cluster.spawn(id))
            .collect::<anyhow::Result<_>>()?;
        for (id, lines) in announced.into_iter().enumerate() {
            cluster.nodes[id].announced = wait_announced(id, &lines)?;
        }
        Ok(cluster)
    }

    /// Adds a broker to the running cluster (on 127.0.0.1: clusters in namespaces have a
    /// fixed size): the next node id, `--cluster` naming the initial brokers as theirs
    /// does; waits until it announces itself. Returns its id.
    pub fn add_broker(&mut self) -> anyhow::Result<usize> {
        anyhow::ensure!(
            self.network.is_none(),
            "a namespaced cluster has a fixed size"
        );
        let id = self.nodes.len();
        let ports = free_ports(3)?;
        let mut args = self.nodes[0].args.clone();
        let data_dir = self.nodes[0]
            .data_dir
            .with_file_name(format!("broker-{id}"));
        let native = format!("127.0.0.1:{}", ports[0]);
        let kafka = format!("127.0.0.1:{}", ports[1]);
        let http = format!("127.0.0.1:{}", ports[2]);
        for (flag, value) in [
            ("--data-dir", data_dir.display().to_string()),
            ("--node-id", id.to_string()),
            ("--native-listen", native.clone()),
            ("--kafka-listen", kafka.clone()),
            ("--http-listen", http.clone()),
        ] {
            let at = args
                .iter()
                .position(|a| a == flag)
                .with_context(|| format!("no {flag}"))?;
            args[at + 1] = value;
        }
        self.nodes.push(Node {
            id,
            data_dir,
            native,
            kafka,
            http,
            announced: Vec::new(),
            args,
            namespace: None,
            child: None,
            paused: false,
        });
        let lines = self.spawn(id)?;
        self.nodes[id].announced = wait_announced(id, &lines)?;
        Ok(id)
    }

    /// Starts broker `id`'s process; returns its stdout lines.
    fn spawn(&mut self, id: usize) -> anyhow::Result<mpsc::Receiver<String>> {
        let node = &mut self.nodes[id];
        let mut command = match &node.namespace {
            Some(ns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns]).arg(&self.binary);
                command
            }
            None => Command::new(&self.binary),
        };
        let mut child = command
            .args(&node.args)
            .env(
                "WEIR_LOG",
                std::env::var("TEST_BROKER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting broker {id}"))?;
        // Each broker's log lines, marked with its id.
        let stderr = child.stderr.take().context("broker stderr")?;
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[broker {id}] {line}");
            }
        });
        let stdout = child.stdout.take().context("broker stdout")?;
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        node.child = Some(child);
        node.paused = false;
        Ok(receiver)
    }

    /// Every broker's Kafka address, comma-separated (a bootstrap list).
    pub fn kafka_bootstrap(&self) -> String {
        let addresses: Vec<&str> = self.nodes.iter().map(|n| n.kafka.as_str()).collect();
        addresses.join(",")
    }

    /// Every broker's address on the listener it announced as `name`
    /// (`kafka+SASL_PLAINTEXT`), comma-separated.
    pub fn listener_bootstrap(&self, name: &str) -> anyhow::Result<String> {
        let addresses: Vec<&str> = self
            .nodes
            .iter()
            .map(|node| {
                node.announced
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.as_str())
                    .with_context(|| format!("broker {} announced no {name} listener", node.id))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(addresses.join(","))
    }

    pub fn native_bootstrap(&self) -> String {
        let addresses: Vec<&str> = self.nodes.iter().map(|n| n.native.as_str()).collect();
        addresses.join(",")
    }

    pub fn kill9(&mut self, id: usize) {
        let node = &mut self.nodes[id];
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        node.paused = false;
    }

    /// Starts a stopped broker again on the same data directory and addresses, without
    /// waiting (it announces itself once the cluster took it back).
    pub fn restart(&mut self, id: usize) -> anyhow::Result<mpsc::Receiver<String>> {
        if self.nodes[id].child.is_some() {
            bail!("broker {id} is running");
        }
        self.spawn(id)
    }

    /// Restarts and waits for the announcement.
    pub fn restart_and_wait(&mut self, id: usize) -> anyhow::Result<()> {
        let lines = self.restart(id)?;
        self.nodes[id].announced = wait_announced(id, &lines)?;
        Ok(())
    }

    fn signal(&mut self, id: usize, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
        let pid = self.nodes[id]
            .pid()
            .with_context(|| format!("broker {id} is not running"))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)?;
        Ok(())
    }

    pub fn pause(&mut self, id: usize) -> anyhow::Result<()> {
        self.signal(id, nix::sys::signal::Signal::SIGSTOP)?;
        self.nodes[id].paused = true;
        Ok(())
    }

    pub fn resume(&mut self, id: usize) -> anyhow::Result<()> {
        self.signal(id, nix::sys::signal::Signal::SIGCONT)?;
        self.nodes[id].paused = false;
        Ok(())
    }

    /// SIGTERM to every broker, waiting for each to exit (a clean close of every log).
    pub fn stop_all(&mut self) -> anyhow::Result<()> {
        for id in 0..self.nodes.len() {
            if self.nodes[id].paused {
                self.resume(id)?;
            }
            if self.nodes[id].child.is_some() {
                self.signal(id, nix::sys::signal::Signal::SIGTERM)?;
            }
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    if child.try_wait()?.is_some() {
                        break;
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        bail!("broker {} did not stop on SIGTERM", node.id);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        Ok(())
    }

    /// Runs `weir ARGS --brokers <every native address>` (and `client_args`).
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        self.cli_at(&self.native_bootstrap(), args)
    }

    /// `cli` against the brokers `brokers` (native addresses) only.
    pub fn cli_at(&self, brokers: &str, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new(&self.binary)
            .args(args)
            .args(["--brokers", brokers])
            .args(&self.client_args)
            .env("WEIR_LOG", "warn")
            .output()?;
        if !output.status.success() {
            bail!(
                "weir {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8(output.stdout)?)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for id in 0..self.nodes.len() {
            if self.nodes[id].paused {
                let _ = self.resume(id);
            }
            self.kill9(id);
        }
    }
}

/// Waits for broker `id`'s announcement; returns the addresses it names.
fn wait_announced(
    id: usize,
    lines: &mpsc::Receiver<String>,
) -> anyhow::Result<Vec<(String, String)>> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .with_context(|| format!("broker {id} did not announce itself"))?;
        if line.starts_with("weir serving") {
            return Ok(crate::broker::announced_addresses(&line));
        }
    }
}

/// One batch of a replica's log as stored: where it is and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredBatch {
    pub base_offset: i64,
    pub last_offset: i64,
    pub crc: u32,
}

/// Reads a partition directory's batches from its segment files, without opening the log
/// (nothing is changed; a torn tail ends the listing).
pub fn read_replica(dir: &Path) -> anyhow::Result<Vec<StoredBatch>> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segments.sort();
    let mut batches = Vec::new();
    for segment in segments {
        let bytes = std::fs::read(&segment)?;
        let mut at = 0;
        while at + weir_wire::batch::BATCH_HEADER_BYTES <= bytes.len() {
            let Ok(header) = weir_wire::BatchHeader::parse(&bytes[at..]) else {
                break;
            };
            let total = header.total_bytes();
            if total == 0 || at + total > bytes.len() {
                break;
            }
            batches.push(StoredBatch {
                base_offset: header.base_offset,
                last_offset: header.last_offset(),
                crc: header.crc,
            });
            at += total;
        }
    }
    Ok(batches)
}
