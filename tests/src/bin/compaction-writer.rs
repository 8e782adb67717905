//! A helper process for the compaction crash test: opens the compacted log in the given
//! directory, then forever writes rounds of updates (every key once per batch, with
//! `every-batch`, printing `acked <sequence>` after each append completes), rolls, and
//! compacts, printing `compacting` before a pass and `compacted <microseconds>` after it.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use glommio::{LocalExecutorBuilder, Placement};
use weir_storage::{Log, ShardStorage, ShardStorageConfig};
use weir_tests::compaction::{COMPACTION_MAP_BYTES, log_config, log_identity, update_batch};

/// Batches written between passes.
const BATCHES_PER_ROUND: u64 = 12;

fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .context("usage: compaction-writer DIR")?,
    );
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .make()
        .map_err(std::io::Error::from)
        .context("starting glommio")?;
    executor.run(async move {
        let shard = ShardStorage::new(ShardStorageConfig::default());
        let log = Log::open(&dir, &log_identity(), log_config(), shard).await?;
        // Sequences continue from where the log ends, so later writes are always newer.
        let mut sequence = weir_tests::compaction::latest_sequence(&log).await? + 1;
        let mut stdout = std::io::stdout().lock();
        loop {
            for _ in 0..BATCHES_PER_ROUND {
                log.append(update_batch(sequence), 0).await?;
                writeln!(stdout, "acked {sequence}")?;
                stdout.flush()?;
                sequence += 1;
            }
            log.roll().await?;
            writeln!(stdout, "compacting")?;
            stdout.flush()?;
            let started = Instant::now();
            log.compact(i64::MAX / 2, i64::MAX, COMPACTION_MAP_BYTES)
                .await?;
            writeln!(stdout, "compacted {}", started.elapsed().as_micros())?;
            stdout.flush()?;
        }
    })
}
