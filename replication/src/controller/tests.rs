use super::*;
use crate::metadata::TopicImage;

fn config() -> ControllerConfig {
    ControllerConfig {
        session_timeout_ms: 1000,
        leader_rebalance_interval_ms: 0,
        default_replication_factor: 1,
        initial_brokers: 3,
        internal_topics: vec![InternalTopic {
            name: "__consumer_offsets".into(),
            partitions: 2,
            replication_factor: 3,
            configs: vec![("cleanup.policy".into(), "compact".into())],
        }],
        new_cluster_id: "test-cluster".into(),
    }
}

fn endpoint(node: NodeId) -> Endpoint {
    Endpoint {
        host: format!("127.0.0.{}", node + 1),
        native_port: 9192,
        kafka_port: 9092,
        kafka_listeners: Vec::new(),
    }
}

/// Applies a decision's records the way the log would: one entry.
fn apply(image: &mut MetadataImage, records: &[MetadataRecord]) {
    let index = image.applied_index + 1;
    image.apply(index, records);
}

fn decide(
    controller: &mut Controller,
    image: &mut MetadataImage,
    request: ControllerRequest,
    now_ms: u64,
) -> std::result::Result<ControllerAnswer, ControllerError> {
    let decision = controller.decide(image, &request, now_ms)?;
    apply(image, &decision.records);
    Ok(decision.answer)
}

/// Brokers 0..count registered and unfenced.
fn cluster(count: i32) -> (Controller, MetadataImage) {
    let mut controller = Controller::new(config(), 0);
    let mut image = MetadataImage::default();
    let created = controller.tick(&image, 0);
    assert_eq!(
        created,
        [MetadataRecord::ClusterCreated {
            cluster_id: "test-cluster".into()
        }]
    );
    apply(&mut image, &created);
    for node in 0..count {
        let register = ControllerRequest::RegisterBroker {
            node,
            incarnation: 1,
            endpoint: endpoint(node),
            shards: 2,
        };
        decide(&mut controller, &mut image, register, 0).unwrap();
        let heartbeat = ControllerRequest::Heartbeat {
            node,
            incarnation: 1,
            applied_index: image.applied_index,
        };
        decide(&mut controller, &mut image, heartbeat, 0).unwrap();
    }
    (controller, image)
}

fn create(
    controller: &mut Controller,
    image: &mut MetadataImage,
    name: &str,
    partitions: i32,
    factor: i16,
) {
    let request = ControllerRequest::CreateTopic {
        name: name.into(),
        partitions,
        replication_factor: factor,
        configs: vec![],
    };
    decide(controller, image, request, 0).unwrap();
}

fn topic<'a>(image: &'a MetadataImage, name: &str) -> &'a TopicImage {
    image.topic(name).unwrap()
}

#[test]
fn brokers_are_unfenced_once_caught_up() {
    let mut controller = Controller::new(config(), 0);
    let mut image = MetadataImage::default();
    let register = ControllerRequest::RegisterBroker {
        node: 4,
        incarnation: 1,
        endpoint: endpoint(4),
        shards: 1,
    };
    decide(&mut controller, &mut image, register, 0).unwrap();
    let behind = ControllerRequest::Heartbeat {
        node: 4,
        incarnation: 1,
        applied_index: 0,
    };
    assert_eq!(
        decide(&mut controller, &mut image, behind, 10),
        Ok(ControllerAnswer::Heartbeat { fenced: true })
    );
    let caught_up = ControllerRequest::Heartbeat {
        node: 4,
        incarnation: 1,
        applied_index: 1,
    };
    assert_eq!(
        decide(&mut controller, &mut image, caught_up, 20),
        Ok(ControllerAnswer::Heartbeat { fenced: false })
    );
    assert!(image.is_live(4));
    let stale = ControllerRequest::Heartbeat {
        node: 4,
        incarnation: 0,
        applied_index: 1,
    };
    assert!(matches!(
        decide(&mut controller, &mut image, stale, 30),
        Err(ControllerError::StaleBrokerEpoch { .. })
    ));
}

#[test]
fn replicas_and_leaders_spread_over_brokers_and_shards() {
    let (mut controller, mut image) = cluster(3);
    create(&mut controller, &mut image, "t", 6, 3);
    let t = topic(&image, "t");
    let mut leaders = BTreeMap::new();
    for p in &t.partitions {
        assert_eq!(p.replicas.len(), 3);
        assert_eq!(p.isr.len(), 3);
        assert_eq!(p.nodes().collect::<BTreeSet<_>>().len(), 3);
        *leaders.entry(p.leader).or_insert(0) += 1;
    }
    assert_eq!(leaders.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
    for node in 0..3 {
        assert_eq!(image.shard_load(node, 2), vec![3, 3]);
    }
}

#[test]
fn a_replication_factor_above_the_live_brokers_is_refused() {
    let (mut controller, image) = cluster(2);
    let request = ControllerRequest::CreateTopic {
        name: "t".into(),
        partitions: 1,
        replication_factor: 3,
        configs: vec![],
    };
    assert!(matches!(
        controller.decide(&image, &request, 0),
        Err(ControllerError::InvalidReplicationFactor(_))
    ));
}

#[test]
fn a_silent_broker_is_fenced_and_its_partitions_get_leaders_from_the_isr() {
    let (mut controller, mut image) = cluster(3);
    create(&mut controller, &mut image, "t", 3, 3);
    let before: Vec<PartitionState> = topic(&image, "t").partitions.clone();
    // The controller ticks every 100 ms; brokers 0 and 1 send a heartbeat at 900 ms.
    let fenced = |records: &[MetadataRecord]| {
        records
            .iter()
            .any(|r| matches!(r, MetadataRecord::BrokerFenced { .. }))
    };
    for now in (100..=900).step_by(100) {
        assert!(!fenced(&controller.tick(&image, now)));
    }
    for node in [0, 1] {
        let heartbeat = ControllerRequest::Heartbeat {
            node,
            incarnation: 1,
            applied_index: image.applied_index,
        };
        decide(&mut controller, &mut image, heartbeat, 900).unwrap();
    }
    let mut records = Vec::new();
    for now in (1000..=1500).step_by(100) {
        records = controller.tick(&image, now);
        if fenced(&records) {
            break;
        }
    }
    assert_eq!(records[0], MetadataRecord::BrokerFenced { node: 2 });
    apply(&mut image, &records);
    assert!(!image.is_live(2));
    for (old, new) in before.iter().zip(&topic(&image, "t").partitions) {
        assert!(!new.in_isr(2));
        assert_ne!(new.leader, 2);
        if old.leader == 2 {
            assert_eq!(new.leader_epoch, old.leader_epoch + 1);
        } else {
            assert_eq!(new.leader, old.leader);
            assert_eq!(new.leader_epoch, old.leader_epoch);
        }
        assert_eq!(new.partition_epoch, old.partition_epoch + 1);
    }
}

#[test]
fn a_controller_that_stood_still_fences_no_one_at_once() {
    let (mut controller, image) = cluster(3);
    // Ticks every 100 ms, then nothing for 5 s (the process was stopped).
    for now in (100..=800).step_by(100) {
        let _ = controller.tick(&image, now);
    }
    let records = controller.tick(&image, 5_800);
    assert!(
        !records
            .iter()
            .any(|r| matches!(r, MetadataRecord::BrokerFenced { .. })),
        "{records:?}"
    );
}

#[test]
fn the_last_in_sync_replica_stays_in_the_isr_and_leads_again_when_back() {
    let (mut controller, mut image) = cluster(2);
    create(&mut controller, &mut image, "t", 1, 1);
    let only = topic(&image, "t").partitions[0].leader;
    let records = fence(&image, only);
    apply(&mut image, &records);
    let state = &topic(&image, "t").partitions[0];
    assert_eq!((state.leader, state.isr.clone()), (NO_LEADER, vec![only]));
    // It restarts: registers again, then catches up.
    let register = ControllerRequest::RegisterBroker {
        node: only,
        incarnation: 2,
        endpoint: endpoint(only),
        shards: 2,
    };
    decide(&mut controller, &mut image, register, 10).unwrap();
    let heartbeat = ControllerRequest::Heartbeat {
        node: only,
        incarnation: 2,
        applied_index: image.applied_index,
    };
    decide(&mut controller, &mut image, heartbeat, 20).unwrap();
    let state = &topic(&image, "t").partitions[0];
    assert_eq!(state.leader, only);
    assert_eq!(state.leader_epoch, 2);
}

#[test]
fn a_restarted_leader_gives_up_its_epoch() {
    let (mut controller, mut image) = cluster(3);
    create(&mut controller, &mut image, "t", 1, 3);
    let old = topic(&image, "t").partitions[0].clone();
    let register = ControllerRequest::RegisterBroker {
        node: old.leader,
        incarnation: 2,
        endpoint: endpoint(old.leader),
        shards: 2,
    };
    decide(&mut controller, &mut image, register, 10).unwrap();
    let new = &topic(&image, "t").partitions[0];
    assert_ne!(new.leader, old.leader);
    assert!(!new.in_isr(old.leader));
    assert_eq!(new.leader_epoch, old.leader_epoch + 1);
}

#[test]
fn isr_changes_are_checked_against_the_leader_and_partition_epochs() {
    let (mut controller, mut image) = cluster(3);
    create(&mut controller, &mut image, "t", 1, 3);
    let state = topic(&image, "t").partitions[0].clone();
    let follower = state.nodes().find(|n| *n != state.leader).unwrap();
    let shrunk: Vec<NodeId> = state
        .isr
        .iter()
        .copied()
        .filter(|n| *n != follower)
        .collect();
    let alter =
        |leader_epoch, partition_epoch, isr: Vec<NodeId>| ControllerRequest::AlterPartition {
            topic: "t".into(),
            partition: 0,
            leader: state.leader,
            leader_epoch,
            partition_epoch,
            isr,
        };
    assert!(matches!(
        controller.decide(&image, &alter(state.leader_epoch + 1, 0, shrunk.clone()), 0),
        Err(ControllerError::FencedLeaderEpoch { .. })
    ));
    assert!(matches!(
        controller.decide(&image, &alter(state.leader_epoch, 5, shrunk.clone()), 0),
        Err(ControllerError::InvalidUpdateVersion { .. })
    ));
    let answer = decide(
        &mut controller,
        &mut image,
        alter(state.leader_epoch, 0, shrunk.clone()),
        0,
    );
    let Ok(ControllerAnswer::Partition(next)) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(next.isr, shrunk);
    assert_eq!(next.partition_epoch, 1);
    // A fenced broker cannot join.
    let records = fence(&image, follower);
    apply(&mut image, &records);
    let state = topic(&image, "t").partitions[0].clone();
    let mut grown = state.isr.clone();
    grown.push(follower);
    let request = ControllerRequest::AlterPartition {
        topic: "t".into(),
        partition: 0,
        leader: state.leader,
        leader_epoch: state.leader_epoch,
        partition_epoch: state.partition_epoch,
        isr: grown,
    };
    assert!(matches!(
        controller.decide(&image, &request, 0),
        Err(ControllerError::IneligibleReplica(_))
    ));
}

#[test]
fn a_move_adds_the_new_replicas_and_removes_the_old_once_they_are_in_sync() {
    let (mut controller, mut image) = cluster(4);
    create(&mut controller, &mut image, "t", 1, 1);
    let old = topic(&image, "t").partitions[0].leader;
    let new: Vec<NodeId> = (0..4).filter(|n| *n != old).take(2).collect();
    let request = ControllerRequest::MovePartition {
        topic: "t".into(),
        partition: 0,
        replicas: new.clone(),
    };
    decide(&mut controller, &mut image, request, 0).unwrap();
    let moving = topic(&image, "t").partitions[0].clone();
    assert_eq!(moving.nodes().collect::<Vec<_>>(), [new[0], new[1], old]);
    assert_eq!(moving.target, Some(new.clone()));
    assert_eq!(moving.leader, old);
    // The leader adds the new replicas to its ISR once they caught up.
    let request = ControllerRequest::AlterPartition {
        topic: "t".into(),
        partition: 0,
        leader: old,
        leader_epoch: moving.leader_epoch,
        partition_epoch: moving.partition_epoch,
        isr: vec![old, new[0], new[1]],
    };
    decide(&mut controller, &mut image, request, 0).unwrap();
    let done = &topic(&image, "t").partitions[0];
    assert_eq!(done.nodes().collect::<Vec<_>>(), new);
    assert_eq!(done.isr, new);
    assert_eq!(done.target, None);
    assert_eq!(done.leader, new[0]);
    assert_eq!(done.leader_epoch, moving.leader_epoch + 1);
}

#[test]
fn leadership_returns_to_the_preferred_replica() {
    let mut config = config();
    config.leader_rebalance_interval_ms = 100;
    let (_, mut image) = cluster(3);
    let mut controller = Controller::new(config, 0);
    create(&mut controller, &mut image, "t", 1, 3);
    let preferred = topic(&image, "t").partitions[0].leader;
    let mut state = topic(&image, "t").partitions[0].clone();
    state.leader = state.replicas[1].node;
    state.leader_epoch += 1;
    apply(
        &mut image,
        &[MetadataRecord::PartitionChanged {
            topic: "t".into(),
            partition: 0,
            state,
        }],
    );
    for node in 0..3 {
        let heartbeat = ControllerRequest::Heartbeat {
            node,
            incarnation: 1,
            applied_index: image.applied_index,
        };
        decide(&mut controller, &mut image, heartbeat, 100).unwrap();
    }
    // The first round creates the offsets topic; the next moves leadership.
    for _ in 0..3 {
        let records = controller.tick(&image, 100);
        apply(&mut image, &records);
    }
    assert_eq!(topic(&image, "t").partitions[0].leader, preferred);
}

#[test]
fn the_offsets_topic_waits_for_enough_brokers() {
    let (mut controller, image) = cluster(2);
    assert!(controller.tick(&image, 0).is_empty());
    let (mut controller, image) = cluster(3);
    let records = controller.tick(&image, 0);
    let Some(MetadataRecord::TopicCreated {
        name,
        partitions,
        internal,
        ..
    }) = records.first()
    else {
        panic!("{records:?}")
    };
    assert_eq!(name, "__consumer_offsets");
    assert!(internal);
    assert!(partitions.iter().all(|p| p.replicas.len() == 3));
}

#[test]
fn a_broker_with_fewer_shards_gets_its_replicas_moved_onto_the_rest() {
    let (mut controller, mut image) = cluster(1);
    create(&mut controller, &mut image, "t", 4, 1);
    let register = ControllerRequest::RegisterBroker {
        node: 0,
        incarnation: 2,
        endpoint: endpoint(0),
        shards: 1,
    };
    decide(&mut controller, &mut image, register, 0).unwrap();
    assert!(
        topic(&image, "t")
            .partitions
            .iter()
            .all(|p| p.replicas[0].shard == 0)
    );
}
