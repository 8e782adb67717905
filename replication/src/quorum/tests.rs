use std::collections::VecDeque;

use super::*;

fn config(node: NodeId) -> QuorumConfig {
    QuorumConfig {
        node,
        election_ticks: 10,
        heartbeat_ticks: 2,
        max_message_bytes: 1 << 20,
        max_inflight_messages: 64,
    }
}

/// Nodes on a perfect network; what each applied, in order.
struct Cluster {
    nodes: Vec<Quorum>,
    applied: Vec<Vec<Vec<u8>>>,
    network: VecDeque<Message>,
}

impl Cluster {
    fn new(count: i32) -> Cluster {
        let voters: Vec<NodeId> = (0..count).collect();
        let nodes = voters
            .iter()
            .map(|n| {
                Quorum::new(
                    &config(*n),
                    QuorumStorage::bootstrap(&voters),
                    0,
                    &logger(),
                    Some(*n as u64 + 7),
                )
                .unwrap()
            })
            .collect();
        Cluster {
            nodes,
            applied: vec![Vec::new(); count as usize],
            network: VecDeque::new(),
        }
    }

    fn run_ready(&mut self) {
        for (i, node) in self.nodes.iter_mut().enumerate() {
            while let Some(mut work) = node.ready().unwrap() {
                self.network.extend(work.messages.drain(..));
                let committed = std::mem::take(&mut work.committed);
                self.applied[i].extend(
                    committed
                        .into_iter()
                        .map(|c| c.data)
                        .filter(|d| !d.is_empty()),
                );
                let after = node.advance(work).unwrap();
                self.network.extend(after.messages);
                self.applied[i].extend(
                    after
                        .committed
                        .into_iter()
                        .map(|c| c.data)
                        .filter(|d| !d.is_empty()),
                );
            }
        }
    }

    fn deliver(&mut self) {
        while let Some(message) = self.network.pop_front() {
            let to = recipient(&message) as usize;
            // Through the wire encoding, as between brokers.
            let message = decode_message(&encode_message(&message)).unwrap();
            self.nodes[to].step(message).unwrap();
            self.run_ready();
        }
    }

    fn tick(&mut self, ticks: usize) {
        for _ in 0..ticks {
            for node in &mut self.nodes {
                node.tick();
            }
            self.run_ready();
            self.deliver();
        }
    }

    fn leader(&self) -> Option<usize> {
        self.nodes.iter().position(|n| n.is_leader())
    }
}

#[test]
fn three_nodes_elect_one_leader_and_apply_proposals_in_order() {
    let mut cluster = Cluster::new(3);
    cluster.tick(50);
    let leader = cluster.leader().expect("a leader after 50 ticks");
    assert_eq!(cluster.nodes.iter().filter(|n| n.is_leader()).count(), 1);
    for node in &cluster.nodes {
        assert_eq!(node.leader(), Some(leader as NodeId));
    }
    let mut proposals = Vec::new();
    for i in 0..5u8 {
        proposals.push(cluster.nodes[leader].propose(vec![i]).unwrap());
    }
    cluster.run_ready();
    cluster.tick(5);
    for applied in &cluster.applied {
        assert_eq!(applied, &(0..5u8).map(|i| vec![i]).collect::<Vec<_>>());
    }
    assert!(proposals.windows(2).all(|w| w[1].index == w[0].index + 1));
}

#[test]
fn followers_refuse_proposals_and_name_the_leader() {
    let mut cluster = Cluster::new(3);
    cluster.tick(50);
    let leader = cluster.leader().unwrap();
    let follower = (leader + 1) % 3;
    match cluster.nodes[follower].propose(vec![1]) {
        Err(ReplicationError::NotLeader { leader: known }) => {
            assert_eq!(known, Some(leader as NodeId));
        }
        other => panic!("expected NotLeader, got {other:?}"),
    }
}

#[test]
fn a_single_node_leads_itself_and_commits_alone() {
    let mut cluster = Cluster::new(1);
    cluster.tick(30);
    assert_eq!(cluster.leader(), Some(0));
    cluster.nodes[0].propose(b"alone".to_vec()).unwrap();
    cluster.run_ready();
    assert_eq!(cluster.applied[0], vec![b"alone".to_vec()]);
}

#[test]
fn compaction_keeps_the_log_after_the_snapshot_and_a_restart_resumes_from_it() {
    let mut cluster = Cluster::new(1);
    cluster.tick(30);
    for i in 0..4u8 {
        cluster.nodes[0].propose(vec![i]).unwrap();
        cluster.run_ready();
    }
    let applied = cluster.nodes[0].applied();
    let snapshot = cluster.nodes[0].compact(b"image".to_vec()).unwrap();
    assert_eq!(snapshot.get_metadata().index, applied);
    assert!(cluster.nodes[0].storage().entries().is_empty());
    cluster.nodes[0].propose(vec![9]).unwrap();
    cluster.run_ready();
    let storage = cluster.nodes[0].storage();
    let restored = QuorumStorage::restore(
        storage.latest_snapshot().clone(),
        storage.entries().to_vec(),
        storage.hard_state.clone(),
        storage.conf_state.clone(),
    )
    .unwrap();
    let node = Quorum::new(&config(0), restored, applied, &logger(), None).unwrap();
    assert_eq!(node.storage().entries().len(), 1);
    assert_eq!(node.storage().entries()[0].data.to_vec(), vec![9]);
}

#[test]
fn a_gap_in_a_restored_log_is_an_error() {
    let entry = Entry {
        index: 5,
        ..Entry::default()
    };
    let result = QuorumStorage::restore(
        Snapshot::default(),
        vec![entry],
        HardState::default(),
        ConfState::default(),
    );
    assert!(matches!(result, Err(ReplicationError::Corrupt { .. })));
}

/// A node added to a running quorum starts with the voters' configuration (not
/// including itself), is added as a learner, receives everything committed before and
/// after, never campaigns, and the voters keep their quorum without it.
#[test]
fn a_learner_added_later_receives_the_whole_log_and_never_leads() {
    let mut cluster = Cluster::new(3);
    cluster.tick(50);
    let leader = cluster.leader().unwrap();
    for i in 0..3u8 {
        cluster.nodes[leader].propose(vec![i]).unwrap();
    }
    cluster.tick(5);
    let voters: Vec<NodeId> = (0..3).collect();
    cluster.nodes.push(
        Quorum::new(
            &config(3),
            QuorumStorage::bootstrap(&voters),
            0,
            &logger(),
            Some(10),
        )
        .unwrap(),
    );
    cluster.applied.push(Vec::new());
    assert!(!cluster.nodes[leader].conf_change_pending());
    cluster.nodes[leader].add_learner(3).unwrap();
    assert!(cluster.nodes[leader].conf_change_pending());
    cluster.tick(20);
    assert!(!cluster.nodes[leader].conf_change_pending());
    assert_eq!(cluster.nodes[leader].members(), (vec![0, 1, 2], vec![3]));
    cluster.nodes[leader].propose(vec![3]).unwrap();
    cluster.tick(200);
    let all: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i]).collect();
    assert_eq!(cluster.applied[3], all);
    assert_eq!(cluster.nodes[3].members(), (vec![0, 1, 2], vec![3]));
    assert!(!cluster.nodes[3].is_leader());
    assert_eq!(cluster.nodes[3].leader(), Some(leader as NodeId));
}
