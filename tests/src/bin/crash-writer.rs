//! A helper process for the storage crash test: opens the log in the given directory,
//! announces `ready <log end offset>`, then appends batches with `every-batch` forever,
//! printing `acked <base offset>` after each append completes (so only after its fsync).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use glommio::{LocalExecutorBuilder, Placement};
use weir_storage::{Log, ShardStorage, ShardStorageConfig};
use weir_tests::{crash_batch, crash_log_config, crash_log_identity};

fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).context("usage: crash-writer DIR")?);
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .make()
        .map_err(std::io::Error::from)
        .context("starting glommio")?;
    executor.run(async move {
        let shard = ShardStorage::new(ShardStorageConfig::default());
        let log = Log::open(&dir, &crash_log_identity(), crash_log_config(), shard).await?;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "ready {}", log.log_end_offset())?;
        stdout.flush()?;
        loop {
            let info = log.append(crash_batch(log.log_end_offset()), 0).await?;
            writeln!(stdout, "acked {}", info.base_offset)?;
            stdout.flush()?;
        }
    })
}
