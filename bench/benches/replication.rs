//! Partition replication's own cost, without disks or sockets: Kafka's ISR protocol (the
//! state machines weir's brokers drive) against one Raft group per partition (raft-rs,
//! the library weir's controller quorum runs on), each replicating 16 KiB record
//! batches from a leader to two followers until the leader may acknowledge them.
//!
//! Both pay what they would pay in weir besides the disk: Raft proposes each batch as
//! a log entry (a copy into the entry), ships it in protobuf-encoded append messages
//! (a copy out and one in per follower) and keeps it in the Raft log's storage; the ISR
//! followers fetch the leader's batches as shared `Bytes` (weir serves replica fetches
//! from the cache and writes them with writev) and report their log end in the next
//! fetch. Run: `cargo bench -p weir-bench --bench replication`; results in
//! docs/BENCHMARKS.md.

use std::collections::VecDeque;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use weir_replication::eraftpb::Message;
use weir_replication::metadata::{PartitionState, Replica};
use weir_replication::partition::ReplicaLog;
use weir_replication::{
    FetchAnswer, FetchPosition, FollowerReplica, LeaderReplica, Quorum, QuorumConfig,
    QuorumStorage, quorum,
};

const BATCH_BYTES: usize = 16 << 10;
/// Batches in flight per round: what a busy partition's producers keep outstanding.
const BATCHES_PER_ROUND: usize = 16;
const ROUNDS: usize = 64;

/// An in-memory replica log: batches of one record each, all in epoch 0.
#[derive(Default)]
struct MemoryLog {
    batches: Vec<Bytes>,
}

impl ReplicaLog for MemoryLog {
    fn log_start_offset(&self) -> i64 {
        0
    }
    fn log_end_offset(&self) -> i64 {
        self.batches.len() as i64
    }
    fn committable_end_offset(&self) -> i64 {
        self.batches.len() as i64
    }
    fn latest_epoch(&self) -> Option<i32> {
        (!self.batches.is_empty()).then_some(0)
    }
    fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, i64)> {
        (epoch >= 0).then_some((0, self.batches.len() as i64))
    }
}

fn state() -> PartitionState {
    PartitionState {
        replicas: (0..3).map(|node| Replica { node, shard: 0 }).collect(),
        leader: 0,
        leader_epoch: 0,
        isr: vec![0, 1, 2],
        partition_epoch: 0,
        target: None,
    }
}

/// ISR: per round the leader appends the round's batches, each follower fetches from its
/// log end (getting the batches as shared bytes) and fetches again (telling the leader
/// it holds them), and the leader's high watermark passes them.
fn isr_rounds(batch: &Bytes) -> i64 {
    let state = state();
    let mut leader_log = MemoryLog::default();
    let mut leader = LeaderReplica::new(0, &state, &leader_log, 0, 0);
    let mut followers: Vec<(i32, FollowerReplica, MemoryLog)> = (1..3)
        .map(|n| (n, FollowerReplica::new(&state, 0), MemoryLog::default()))
        .collect();
    for round in 0..ROUNDS {
        for _ in 0..BATCHES_PER_ROUND {
            leader_log.batches.push(batch.clone());
        }
        for (node, follower, log) in &mut followers {
            for _ in 0..2 {
                let position: FetchPosition = follower.position(log).unwrap();
                match leader.on_fetch(*node, position, &leader_log, round as u64) {
                    Ok(FetchAnswer::Read) => {}
                    other => panic!("fetch answered {other:?}"),
                }
                leader.advance_high_watermark(&leader_log);
                let from = position.fetch_offset as usize;
                log.batches.extend_from_slice(&leader_log.batches[from..]);
                follower.on_records(leader.high_watermark(), log);
            }
        }
    }
    let hw = leader.high_watermark();
    assert_eq!(hw, (ROUNDS * BATCHES_PER_ROUND) as i64);
    hw
}

fn raft_group() -> Vec<Quorum> {
    let voters = [0, 1, 2];
    let config = |node| QuorumConfig {
        node,
        election_ticks: 10,
        heartbeat_ticks: 2,
        max_message_bytes: 1 << 20,
        max_inflight_messages: 256,
    };
    let mut nodes: Vec<Quorum> = voters
        .iter()
        .map(|n| {
            Quorum::new(
                &config(*n),
                QuorumStorage::bootstrap(&voters),
                0,
                &quorum::logger(),
                Some(*n as u64 + 1),
            )
            .unwrap()
        })
        .collect();
    nodes[0].campaign().unwrap();
    let mut network = VecDeque::new();
    drive(&mut nodes, &mut network);
    assert!(nodes[0].is_leader());
    nodes
}

/// Runs every node's ready work and delivers messages (encoded as between brokers)
/// until nothing moves; returns how many entries the leader saw committed.
fn drive(nodes: &mut [Quorum], network: &mut VecDeque<Message>) -> usize {
    let mut committed = 0;
    loop {
        for (i, node) in nodes.iter_mut().enumerate() {
            while let Some(mut work) = node.ready().unwrap() {
                network.extend(work.messages.drain(..));
                if i == 0 {
                    committed += work.committed.iter().filter(|c| !c.data.is_empty()).count();
                }
                let after = node.advance(work).unwrap();
                network.extend(after.messages);
                if i == 0 {
                    committed += after
                        .committed
                        .iter()
                        .filter(|c| !c.data.is_empty())
                        .count();
                }
            }
        }
        let Some(message) = network.pop_front() else {
            return committed;
        };
        let to = quorum::recipient(&message) as usize;
        let message = quorum::decode_message(&quorum::encode_message(&message)).unwrap();
        nodes[to].step(message).unwrap();
    }
}

/// Raft: per round the leader proposes the round's batches and the group runs until the
/// leader has them committed (a quorum holds them).
fn raft_rounds(nodes: &mut [Quorum], batch: &Bytes) -> usize {
    let mut network = VecDeque::new();
    let mut committed = 0;
    for _ in 0..ROUNDS {
        for _ in 0..BATCHES_PER_ROUND {
            nodes[0].propose(batch.to_vec()).unwrap();
        }
        committed += drive(nodes, &mut network);
    }
    assert_eq!(committed, ROUNDS * BATCHES_PER_ROUND);
    committed
}

fn replication(c: &mut Criterion) {
    let batch = Bytes::from(vec![7u8; BATCH_BYTES]);
    let mut group = c.benchmark_group("replicate 16 KiB batches to 2 followers");
    group.throughput(Throughput::Bytes(
        (ROUNDS * BATCHES_PER_ROUND * BATCH_BYTES) as u64,
    ));
    group.sample_size(20);
    group.bench_function("isr", |b| b.iter(|| isr_rounds(&batch)));
    group.bench_function("raft", |b| {
        b.iter_batched(
            raft_group,
            |mut nodes| raft_rounds(&mut nodes, &batch),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, replication);
criterion_main!(benches);
