//! The `weir` command.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "weir",
    version,
    about = "A streaming broker in the Kafka family"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker.
    Serve {
        /// Where partitions are stored.
        #[arg(long, default_value = "./weir-data")]
        data_dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve { data_dir } => {
            std::fs::create_dir_all(&data_dir)?;
            anyhow::bail!(
                "weir serve: the data directory {} is ready, but the network broker is not built yet \
                 (only the storage engine is); see README.md",
                data_dir.display()
            )
        }
    }
}
