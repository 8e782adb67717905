//! Real `weir serve` processes for benchmarks and tests: each on free ports with its own
//! data directory, stopped by PID when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};

/// How long a broker may take to announce that it serves.
const START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct BrokerProcess {
    binary: PathBuf,
    data_dir: PathBuf,
    env: Vec<(String, String)>,
    args: Vec<String>,
    child: Option<Child>,
    /// Every address the broker announced, by name (`kafka+SASL_SSL`, ...).
    pub announced: Vec<(String, String)>,
    /// The native protocol address, HOST:PORT.
    pub native: String,
    /// The Kafka protocol address, HOST:PORT.
    pub kafka: String,
    pub http: String,
}

impl BrokerProcess {
    /// Starts `binary serve` on ports chosen by the OS, with `cores` shards and extra
    /// arguments, and waits for its `weir serving` line.
    pub fn start(
        binary: impl AsRef<Path>,
        data_dir: &Path,
        cores: usize,
        extra: &[&str],
    ) -> anyhow::Result<BrokerProcess> {
        BrokerProcess::start_with_env(binary, data_dir, cores, extra, &[])
    }

    /// Like `start`, with extra environment variables (`WEIR_*` settings).
    pub fn start_with_env(
        binary: impl AsRef<Path>,
        data_dir: &Path,
        cores: usize,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<BrokerProcess> {
        let binary = binary.as_ref();
        let mut args = serve_args(data_dir, "127.0.0.1:0", cores);
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut broker = BrokerProcess {
            binary: binary.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            args,
            child: None,
            announced: Vec::new(),
            native: String::new(),
            kafka: String::new(),
            http: String::new(),
        };
        broker.launch()?;
        Ok(broker)
    }

    /// Starts a cluster of `count` brokers on 127.0.0.1 (`--node-id i --cluster ...` on
    /// native ports chosen free beforehand), each with `cores` shards in `root/broker-i`
    /// and the environment `env(i)`. They start together: none announces itself before
    /// the controller quorum has formed.
    pub fn start_cluster(
        binary: impl AsRef<Path>,
        root: &Path,
        count: usize,
        cores: usize,
        env: impl Fn(usize) -> Vec<(String, String)>,
    ) -> anyhow::Result<Vec<BrokerProcess>> {
        let ports = (0..count)
            .map(|_| {
                Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                    .local_addr()?
                    .port())
            })
            .collect::<anyhow::Result<Vec<u16>>>()?;
        let cluster = ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let launches: Vec<_> = (0..count)
            .map(|node| {
                let mut broker = BrokerProcess {
                    binary: binary.as_ref().to_path_buf(),
                    data_dir: root.join(format!("broker-{node}")),
                    env: env(node),
                    args: Vec::new(),
                    child: None,
                    announced: Vec::new(),
                    native: String::new(),
                    kafka: String::new(),
                    http: String::new(),
                };
                broker.args = serve_args(
                    &broker.data_dir,
                    &format!("127.0.0.1:{}", ports[node]),
                    cores,
                );
                broker.args.extend([
                    "--node-id".to_string(),
                    node.to_string(),
                    "--cluster".into(),
                    cluster.clone(),
                ]);
                std::thread::spawn(move || broker.launch().map(|()| broker))
            })
            .collect();
        launches
            .into_iter()
            .map(|l| {
                l.join()
                    .map_err(|_| anyhow::anyhow!("a broker launch panicked"))?
            })
            .collect()
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let mut child = Command::new(&self.binary)
            .args(&self.args)
            .env("WEIR_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        let stdout = child.stdout.take().context("broker stdout")?;
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        self.child = Some(child);
        let line = receiver
            .recv_timeout(START_TIMEOUT)
            .context("the broker did not announce itself")?;
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .map(str::to_string)
                .with_context(|| format!("no {name} in {line:?}"))
        };
        self.announced = announced_addresses(&line);
        self.native = field("native=")?;
        self.kafka = field("kafka=")?;
        self.http = field("http=")?;
        // A restart keeps the ports: Kafka clients reconnect to the addresses they know.
        for (flag, address) in [
            ("--native-listen", &self.native),
            ("--kafka-listen", &self.kafka),
            ("--http-listen", &self.http),
        ] {
            if let Some(at) = self.args.iter().position(|a| a == flag) {
                self.args[at + 1] = address.clone();
            }
        }
        Ok(())
    }

    /// The address of an extra listener as the broker announced it (`kafka+SASL_SSL`).
    pub fn extra_listener(&self, name: &str) -> anyhow::Result<String> {
        self.announced
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .with_context(|| format!("the broker announced no {name} listener"))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("broker not running")
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
            .context("sending SIGTERM")?;
        Ok(child.wait()?)
    }

    /// Starts again on the same data directory and ports.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            self.terminate()?;
        }
        self.launch()
    }

    /// Runs `binary ARGS --brokers NATIVE`, feeding `stdin`.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Output> {
        use std::io::Write;
        let mut child = Command::new(&self.binary)
            .args(args)
            .args(["--brokers", &self.native])
            .env("WEIR_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut input = child.stdin.take().context("cli stdin")?;
        let text = stdin.unwrap_or_default().to_string();
        let writer = std::thread::spawn(move || input.write_all(text.as_bytes()));
        let output = child.wait_with_output()?;
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("stdin writer panicked"))??;
        Ok(output)
    }

    /// Like `cli`, but fails unless the command succeeds; returns its stdout.
    pub fn cli_ok(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        let output = self.cli(args, stdin)?;
        if !output.status.success() {
            bail!(
                "weir {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8(output.stdout)?)
    }

    /// GETs a path of the HTTP endpoint; returns (status line, body).
    pub fn http_get(&self, path: &str) -> anyhow::Result<(String, String)> {
        http_get(&self.http, path)
    }
}

/// The `name=address` pairs of a broker's `weir serving ...` line.
pub fn announced_addresses(line: &str) -> Vec<(String, String)> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// GET `path` from a broker's plain HTTP listener at `address`: the status line and the
/// body.
pub fn http_get(address: &str, path: &str) -> anyhow::Result<(String, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address)?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: weir\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").context("no HTTP head")?;
    Ok((
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    ))
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `serve` on `native` (Kafka and HTTP on ports the OS chooses), with `cores` shards and
/// data in `data_dir`.
fn serve_args(data_dir: &Path, native: &str, cores: usize) -> Vec<String> {
    [
        "serve",
        "--data-dir",
        &data_dir.display().to_string(),
        "--native-listen",
        native,
        "--kafka-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--cores",
        &cores.to_string(),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}
