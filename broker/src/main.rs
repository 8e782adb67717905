//! The `weir` command.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use weir_broker::cli::{
    self, AclCommand, Brokers, ClusterCommand, ConsumeArgs, GroupCommand, PartitionCommand,
    ProduceArgs, QuotaCommand, TopicCommand, UserCommand,
};
use weir_broker::config::{BrokerConfig, FlagOverrides};

#[derive(Debug, Parser)]
#[command(
    name = "weir",
    version,
    about = "A streaming broker in the Kafka family"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log in to a SASL native listener with this mechanism (PLAIN, SCRAM-SHA-256,
    /// SCRAM-SHA-512); the password comes from --sasl-password or WEIR_SASL_PASSWORD.
    #[arg(long, global = true, requires = "sasl_username")]
    sasl_mechanism: Option<String>,
    #[arg(long, global = true)]
    sasl_username: Option<String>,
    #[arg(long, global = true)]
    sasl_password: Option<String>,
    /// Connect over TLS, trusting the CAs of this PEM file (a broker's TLS native
    /// listener).
    #[arg(long, global = true)]
    tls_ca_file: Option<PathBuf>,
    /// Present this certificate chain (PEM) to the broker (mutual TLS; its subject is
    /// the principal); with --tls-key-file.
    #[arg(long, global = true, requires_all = ["tls_key_file", "tls_ca_file"])]
    tls_cert_file: Option<PathBuf>,
    #[arg(long, global = true, requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker (a complete single node by default, data in ./weir-data).
    Serve {
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// This broker's id in the cluster.
        #[arg(long)]
        node_id: Option<i32>,
        /// The native addresses of the brokers the cluster is formed with, in node-id
        /// order (HOST:PORT,... or ID@HOST:PORT,...).
        #[arg(long, value_delimiter = ',')]
        cluster: Option<Vec<String>>,
        #[arg(long)]
        native_listen: Option<SocketAddr>,
        #[arg(long)]
        kafka_listen: Option<SocketAddr>,
        #[arg(long)]
        http_listen: Option<SocketAddr>,
        /// Shards, one per core (default: every core).
        #[arg(long)]
        cores: Option<usize>,
        /// A TOML configuration file (see docs/CONFIG.md).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Create, list, describe and delete topics.
    Topic {
        #[command(flatten)]
        brokers: Brokers,
        #[command(subcommand)]
        command: TopicCommand,
    },
    /// Produce lines of stdin as records.
    Produce {
        #[command(flatten)]
        brokers: Brokers,
        #[command(flatten)]
        args: ProduceArgs,
    },
    /// Print records of a topic.
    Consume {
        #[command(flatten)]
        brokers: Brokers,
        #[command(flatten)]
        args: ConsumeArgs,
    },
    /// Measure the machine's limits, and weir against them.
    Bench {
        #[command(subcommand)]
        command: weir_broker::bench::BenchCommand,
    },
    /// The cluster: brokers, controller, leadership.
    Cluster {
        #[command(flatten)]
        brokers: Brokers,
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Partitions: move replicas between brokers.
    Partition {
        #[command(flatten)]
        brokers: Brokers,
        #[command(subcommand)]
        command: PartitionCommand,
    },
    /// Offline tools over data directories.
    Log {
        #[command(subcommand)]
        command: cli::LogCommand,
    },
    /// Consumer groups: committed offsets and lag.
    Group {
        #[command(flatten)]
        brokers: Brokers,
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// Users and their SCRAM credentials (for SASL PLAIN and SCRAM logins).
    User {
        #[command(flatten)]
        brokers: Brokers,
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Client quotas: byte and request rates per user and client id.
    Quota {
        #[command(flatten)]
        brokers: Brokers,
        #[command(subcommand)]
        command: QuotaCommand,
    },
    /// ACLs: who may do what to which topics, groups, transactional ids and the cluster
    /// (enforced with `authorizer_enabled`).
    Acl {
        #[command(flatten)]
        brokers: Brokers,
        #[command(subcommand)]
        command: AclCommand,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let mut security = weir_client::Security::default();
    if let (Some(mechanism), Some(username)) = (cli.sasl_mechanism, cli.sasl_username) {
        let password = match cli.sasl_password {
            Some(password) => password,
            None => std::env::var("WEIR_SASL_PASSWORD").map_err(|_| {
                anyhow::anyhow!("--sasl-mechanism needs --sasl-password or WEIR_SASL_PASSWORD")
            })?,
        };
        security.sasl = Some(weir_client::SaslCredentials {
            mechanism,
            username,
            password,
        });
    }
    if let Some(ca_file) = &cli.tls_ca_file {
        let identity = cli
            .tls_cert_file
            .as_deref()
            .zip(cli.tls_key_file.as_deref());
        let tls = weir_client::TlsClient::from_files(ca_file, identity)?;
        security.tls = Some(std::sync::Arc::new(tls));
    }
    cli::secure_with(security);
    match cli.command {
        Command::Serve {
            data_dir,
            node_id,
            cluster,
            native_listen,
            kafka_listen,
            http_listen,
            cores,
            config,
        } => {
            let flags = FlagOverrides {
                data_dir,
                node_id,
                cluster,
                native_listen,
                kafka_listen,
                http_listen,
                cores,
            };
            let env = std::env::vars().filter(|(k, _)| k != "WEIR_LOG");
            let config = BrokerConfig::load(config.as_deref(), env, &flags)?;
            weir_broker::boot::serve(config)
        }
        Command::Topic { brokers, command } => {
            cli::run(move || cli::topic(brokers.brokers, command))
        }
        Command::Produce { brokers, args } => {
            let lines = cli::stdin_lines()?;
            let count = cli::run(move || cli::produce(brokers.brokers, args, lines))?;
            eprintln!("produced {count} records");
            Ok(())
        }
        Command::Consume { brokers, args } => cli::run(move || cli::consume(brokers.brokers, args)),
        Command::Group { brokers, command } => {
            cli::run(move || cli::group(brokers.brokers, command))
        }
        Command::User { brokers, command } => cli::run(move || cli::user(brokers.brokers, command)),
        Command::Quota { brokers, command } => {
            cli::run(move || cli::quota(brokers.brokers, command))
        }
        Command::Acl { brokers, command } => cli::run(move || cli::acl(brokers.brokers, command)),
        Command::Cluster { brokers, command } => {
            cli::run(move || cli::cluster(brokers.brokers, command))
        }
        Command::Partition { brokers, command } => {
            cli::run(move || cli::partition(brokers.brokers, command))
        }
        Command::Log { command } => cli::log(command),
        Command::Bench { command } => weir_broker::bench::run(command),
    }
}
