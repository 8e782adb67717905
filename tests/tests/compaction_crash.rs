//! Proves that compaction loses nothing when its process is killed with SIGKILL in the
//! middle of a pass, again and again: after every restart the latest value of every key
//! is there (the one last acknowledged, or the one written right after it), the log
//! verifies, and the next pass continues.

use std::path::Path;
use std::process::Child;
use std::sync::mpsc;
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};
use weir_storage::{Log, ShardStorage, ShardStorageConfig};
use weir_tests::Rng;
use weir_tests::compaction::{KEYS, key, latest_sequences, log_config, log_identity};

/// Kills that must land inside a compaction pass.
const KILLS_IN_COMPACTION: usize = 30;
const RUNS_MAX: usize = 120;

fn spawn_writer(dir: &Path) -> (Child, mpsc::Receiver<String>) {
    weir_tests::spawn_with_lines(env!("CARGO_BIN_EXE_compaction-writer"), dir)
}

/// Recovers the log in-process and checks every key's latest value against the last
/// acknowledged sequence. Returns the number of segments.
fn check_log(dir: &Path, last_acked: u64) -> usize {
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .make()
        .expect("glommio executor");
    let dir = dir.to_path_buf();
    executor.run(async move {
        let shard = ShardStorage::new(ShardStorageConfig::default());
        let log = Log::open(&dir, &log_identity(), log_config(), shard)
            .await
            .expect("recover log");
        log.verify().await.expect("every batch verifies");
        let latest = latest_sequences(&log).await.expect("read log");
        if last_acked > 0 {
            for index in 0..KEYS {
                let found = latest.get(&key(index)).copied();
                assert!(
                    found.is_some_and(|s| s == last_acked || s == last_acked + 1),
                    "key {index}: latest sequence {found:?}, last acknowledged {last_acked}"
                );
            }
        }
        let segments = log.segment_count();
        log.close().await.expect("close after check");
        segments
    })
}

#[test]
fn latest_values_survive_kill_9_during_compaction() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rng = Rng::from_clock();
    let mut last_acked = 0u64;
    let mut pass_micros = 20_000u64;
    let mut kills_in_compaction = 0;
    let mut runs = 0;
    let mut segments = 0;
    // Files a killed pass left for recovery: output being written, or a committed swap.
    let (mut cleaned_left, mut swaps_left) = (0, 0);
    while kills_in_compaction < KILLS_IN_COMPACTION {
        runs += 1;
        assert!(
            runs <= RUNS_MAX,
            "only {kills_in_compaction} of {runs} kills landed inside a compaction pass"
        );
        let (mut child, lines) = spawn_writer(dir.path());
        let record = |line: &str, last_acked: &mut u64, pass_micros: &mut u64| {
            if let Some(sequence) = line.strip_prefix("acked ") {
                *last_acked = sequence.parse().expect("acked sequence");
            } else if let Some(micros) = line.strip_prefix("compacted ") {
                *pass_micros = micros.parse().expect("pass duration");
            }
        };
        // Let the writer finish a few passes now and then, so there is always old data.
        let passes_first = rng.below(3);
        let mut compacting = 0;
        loop {
            let line = lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("run {runs}: compaction-writer went quiet: {e}"));
            record(&line, &mut last_acked, &mut pass_micros);
            if line == "compacting" {
                compacting += 1;
                if compacting > passes_first {
                    break;
                }
            }
        }
        // Somewhere inside the pass, judged by how long the last one took.
        std::thread::sleep(Duration::from_micros(rng.below(pass_micros)));
        child.kill().expect("kill -9 the writer");
        child.wait().expect("reap the killed writer");
        let mut finished = false;
        while let Ok(line) = lines.try_recv() {
            finished |= line.starts_with("compacted ");
            record(&line, &mut last_acked, &mut pass_micros);
        }
        if !finished {
            kills_in_compaction += 1;
        }
        for entry in std::fs::read_dir(dir.path()).expect("list").flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            cleaned_left += usize::from(name.ends_with(".cleaned"));
            swaps_left += usize::from(name.ends_with(".swap"));
        }
        segments = check_log(dir.path(), last_acked);
    }
    println!(
        "{kills_in_compaction} of {runs} kills landed inside a pass ({cleaned_left} left a \
         cleaned file, {swaps_left} a swap); every key's latest value survived; last sequence \
         {last_acked}, {segments} segments"
    );
    assert!(
        cleaned_left >= 5,
        "only {cleaned_left} kills interrupted a pass while it wrote its output"
    );
}
