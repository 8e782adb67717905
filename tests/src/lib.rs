//! Helpers shared by weir's cross-crate tests and their helper processes.

/// Real `weir serve` processes (shared with the benchmarks).
pub use weir_bench::process as broker;

pub mod certs;
pub mod cluster;
pub mod compaction;

/// Starts a helper process on `dir` with its stdout piped, and a thread that forwards
/// its lines (until it exits or the receiver is dropped).
pub fn spawn_with_lines(
    binary: &str,
    dir: &std::path::Path,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(binary)
        .arg(dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {binary}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let (lines, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    (child, receiver)
}

/// A small deterministic generator for crash tests, seeded from the clock and printing
/// its seed, so that a failing run can be repeated from it.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn from_clock() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        println!("seed {seed}");
        Rng(seed)
    }

    pub fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound.max(1)
    }
}

use bytes::BytesMut;
use weir_storage::{FlushPolicy, LogConfig, LogIdentity};
use weir_wire::BatchBuilder;

/// The identity of the log the crash tests write.
pub fn crash_log_identity() -> LogIdentity {
    LogIdentity {
        topic: "crash".into(),
        partition: 0,
    }
}

/// Small segments, so that kills land during rolls too; every batch synced before it is
/// acknowledged.
pub fn crash_log_config() -> LogConfig {
    LogConfig {
        segment_bytes: 256 * 1024,
        batch_bytes_max: 64 * 1024,
        flush: FlushPolicy::EveryBatch,
        retention_ms: None,
        ..LogConfig::default()
    }
}

/// The batch the crash writer appends at `base_offset`: its records, sizes and bytes are
/// a function of the offset alone, so a checker can rebuild what was acknowledged.
pub fn crash_batch(base_offset: i64) -> BytesMut {
    let seed = base_offset as u64;
    let records = 1 + (seed % 4) as usize;
    // Sizes from 40 bytes to ~40 KiB, so batches straddle pages and fill segments unevenly.
    let value_bytes =
        [40, 700, 3000, 9000, 40_000][(seed.wrapping_mul(2654435761) % 5) as usize] / records;
    let mut builder = BatchBuilder::new(1_700_000_000_000 + base_offset);
    for i in 0..records {
        let value: Vec<u8> = (0..value_bytes)
            .map(|j| (seed as usize).wrapping_mul(131).wrapping_add(i * 17 + j) as u8)
            .collect();
        let key = format!("offset-{}", base_offset + i as i64);
        builder.append(
            1_700_000_000_000 + base_offset + i as i64,
            Some(key.as_bytes()),
            Some(&value),
            &[],
        );
    }
    builder.build()
}

/// The stored form of [`crash_batch`]: base offset and leader epoch 0 assigned.
pub fn crash_batch_stored(base_offset: i64) -> Vec<u8> {
    let mut batch = crash_batch(base_offset);
    weir_wire::batch::assign_offset_and_epoch(&mut batch, base_offset, 0);
    batch.to_vec()
}

/// The repository's root.
pub fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Python with the Kafka client packages (`scripts/install-test-deps` makes it).
pub fn python() -> std::path::PathBuf {
    let python = repo().join("target/test-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run ./scripts/install-test-deps (./scripts/test does)",
        python.display()
    );
    python
}
