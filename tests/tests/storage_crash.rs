//! Proves that a log written with `every-batch` loses nothing it acknowledged when its
//! process is killed with SIGKILL at random moments, again and again: after every restart
//! every acknowledged batch is there, in order and byte-identical, and appends continue.

use std::path::Path;
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use weir_storage::{Log, ShardStorage, ShardStorageConfig};
use weir_tests::{Rng, crash_batch_stored, crash_log_config, crash_log_identity};
use weir_wire::BatchHeader;

const KILLS: usize = 70;

fn spawn_writer(dir: &Path) -> (Child, mpsc::Receiver<String>) {
    weir_tests::spawn_with_lines(env!("CARGO_BIN_EXE_crash-writer"), dir)
}

/// What a process that stopped answering is doing: each thread's state and kernel wait.
fn describe_process(pid: u32) -> String {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"));
    let Ok(tasks) = tasks else {
        return format!("process {pid} is gone");
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let path = task.path();
        let read = |name: &str| std::fs::read_to_string(path.join(name)).unwrap_or_default();
        let status = read("status");
        let state = status
            .lines()
            .find(|l| l.starts_with("State:"))
            .unwrap_or("State: ?");
        out.push(format!(
            "thread {} {state} wchan {} stack [{}]",
            task.file_name().to_string_lossy(),
            read("wchan"),
            read("stack").lines().take(6).collect::<Vec<_>>().join("; ")
        ));
    }
    out.join("\n")
}

/// SIGKILL, as `kill -9` sends it (`Child::kill` sends SIGKILL on Unix), then reap.
fn kill(child: &mut Child) {
    child.kill().expect("kill -9 the writer");
    child.wait().expect("reap the killed writer");
}

/// Reads the whole log in-process and checks every acknowledged batch against its
/// expected bytes. Returns the log end offset.
fn check_log(dir: &Path, acknowledged: &[i64]) -> i64 {
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .make()
        .expect("glommio executor");
    let dir = dir.to_path_buf();
    let acknowledged = acknowledged.to_vec();
    executor.run(async move {
        let shard = ShardStorage::new(ShardStorageConfig::default());
        let log = Log::open(&dir, &crash_log_identity(), crash_log_config(), shard)
            .await
            .expect("recover log");
        let mut stored = Vec::new();
        let mut offset = 0;
        loop {
            let batches = log.read(offset, 1 << 20, i64::MAX).await.expect("read log");
            let Some(last) = batches.last() else { break };
            offset = BatchHeader::parse(last).expect("header").next_offset();
            stored.extend(batches);
        }
        let mut expected_base = 0;
        for batch in &stored {
            let header = BatchHeader::parse(batch).expect("header");
            assert_eq!(
                header.base_offset, expected_base,
                "batches must be contiguous and in order"
            );
            assert_eq!(
                &batch[..],
                &crash_batch_stored(header.base_offset)[..],
                "batch at {} differs",
                header.base_offset
            );
            expected_base = header.next_offset();
        }
        let present: std::collections::HashSet<i64> = stored
            .iter()
            .map(|b| BatchHeader::parse(b).expect("header").base_offset)
            .collect();
        for base in &acknowledged {
            assert!(
                present.contains(base),
                "acknowledged batch at {base} was lost"
            );
        }
        let end = log.log_end_offset();
        log.close().await.expect("close after check");
        end
    })
}

#[test]
fn acknowledged_batches_survive_repeated_kill_9() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rng = Rng::from_clock();
    let mut acknowledged = Vec::new();
    let mut kills_after_acks = 0;
    for round in 0..KILLS {
        let (mut child, lines) = spawn_writer(dir.path());
        let mut acked_this_round = 0;
        let mut record = |line: String, acked: &mut usize| {
            if let Some(base) = line.strip_prefix("acked ") {
                acknowledged.push(base.parse::<i64>().expect("acked offset"));
                *acked += 1;
            }
        };
        if round % 5 == 0 {
            // Some kills land while the writer opens and recovers the log.
            std::thread::sleep(Duration::from_millis(rng.below(15)));
        } else {
            // The others land while it appends: wait for its first acknowledgement, then
            // let it run for a random while.
            // A liveness bound, not a timing claim: on a loaded two-core machine whose
            // disk stalls, recovery plus one synced append can take seconds.
            let mut seen = Vec::new();
            while acked_this_round == 0 {
                match lines.recv_timeout(Duration::from_secs(60)) {
                    Ok(line) => {
                        seen.push(line.clone());
                        record(line, &mut acked_this_round)
                    }
                    Err(error) => panic!(
                        "round {round}: no acknowledgement from crash-writer: {error}; it \
                         printed {seen:?}; {}",
                        describe_process(child.id())
                    ),
                }
            }
            let deadline = Instant::now() + Duration::from_millis(rng.below(100));
            while let Some(wait) = deadline.checked_duration_since(Instant::now()) {
                match lines.recv_timeout(wait) {
                    Ok(line) => record(line, &mut acked_this_round),
                    Err(mpsc::RecvTimeoutError::Timeout) => break,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        panic!("round {round}: crash-writer exited")
                    }
                }
            }
        }
        kill(&mut child);
        // Lines already printed before the kill are acknowledgements too.
        while let Ok(line) = lines.try_recv() {
            record(line, &mut acked_this_round);
        }
        if acked_this_round > 0 {
            kills_after_acks += 1;
        }
        let end = check_log(dir.path(), &acknowledged);
        assert!(
            acknowledged.last().is_none_or(|last| end > *last),
            "round {round}: log end {end} is not past the last ack"
        );
    }
    assert!(
        kills_after_acks >= 40,
        "only {kills_after_acks} kills interrupted an appending writer"
    );
    let segments = std::fs::read_dir(dir.path())
        .expect("list")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "log"))
        })
        .count();
    assert!(
        segments > 3,
        "the writer should have rolled segments, found {segments}"
    );
    println!(
        "{} acknowledged batches survived {KILLS} kills across {segments} segments",
        acknowledged.len()
    );
}
