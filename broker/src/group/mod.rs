//! The group coordinator: consumer groups under Kafka's classic protocol.
//!
//! A group lives on the shard that owns its partition of `__consumer_offsets`, so its
//! membership and its commits are decided in one place without locks. `state.rs` is the
//! pure state machine of one group; this module keeps the requests that wait (JoinGroup
//! until the join phase ends, SyncGroup until the leader's assignment arrives) and
//! delivers the machine's answers to them. Membership is kept in memory: after a restart
//! members learn with `UNKNOWN_MEMBER_ID` that they must rejoin, and resume from the
//! committed offsets, which are durable.

pub mod state;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use kafka_protocol::ResponseError;

use state::{Effects, Group, Reply};
pub use state::{GroupLimits, GroupState, JoinRequest, JoinResult, SyncRequest, SyncResult};

/// A snapshot of one group for DescribeGroups.
#[derive(Debug, Clone)]
pub struct GroupDescription {
    pub state: GroupState,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberDescription>,
}

#[derive(Debug, Clone)]
pub struct MemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: bytes::Bytes,
    pub assignment: bytes::Bytes,
}

struct Slot {
    group: Group,
    joins: HashMap<String, LocalSender<JoinResult>>,
    syncs: HashMap<String, LocalSender<SyncResult>>,
}

impl Slot {
    fn deliver(&mut self, effects: Effects) {
        for (member, result) in effects.joins {
            if let Some(waiter) = self.joins.remove(&member) {
                let _ = waiter.try_send(result);
            }
        }
        for (member, result) in effects.syncs {
            if let Some(waiter) = self.syncs.remove(&member) {
                let _ = waiter.try_send(result);
            }
        }
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("group", &self.group)
            .field("joins", &self.joins.len())
            .field("syncs", &self.syncs.len())
            .finish()
    }
}

#[derive(Debug)]
pub struct Coordinator {
    limits: GroupLimits,
    epoch: Instant,
    groups: RefCell<BTreeMap<String, Slot>>,
}

impl Coordinator {
    pub fn new(limits: GroupLimits) -> Coordinator {
        Coordinator {
            limits,
            epoch: Instant::now(),
            groups: RefCell::new(BTreeMap::new()),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Runs `event` on the group (created if new) and delivers its effects.
    fn with_group<T>(&self, group: &str, event: impl FnOnce(&mut Slot, u64) -> T) -> T {
        let now = self.now();
        let mut groups = self.groups.borrow_mut();
        let slot = groups.entry(group.to_string()).or_insert_with(|| Slot {
            group: Group::new(self.limits),
            joins: HashMap::new(),
            syncs: HashMap::new(),
        });
        event(slot, now)
    }

    pub async fn join(&self, group: &str, request: JoinRequest) -> JoinResult {
        let member_id = request.member_id.clone();
        let waiting = self.with_group(group, |slot, now| {
            let (reply, effects) = slot.group.join(request, now);
            let waiting = match reply {
                Reply::Now(result) => Waiting::Answered(result),
                Reply::Later(member) => Waiting::On(waiter(&mut slot.joins, member)),
            };
            slot.deliver(effects);
            waiting
        });
        waiting
            .answer(|| JoinResult::failed(ResponseError::CoordinatorNotAvailable, &member_id))
            .await
    }

    pub async fn sync(&self, group: &str, request: SyncRequest) -> SyncResult {
        let waiting = self.with_group(group, |slot, now| {
            let (reply, effects) = slot.group.sync(request, now);
            let waiting = match reply {
                Reply::Now(result) => Waiting::Answered(result),
                Reply::Later(member) => Waiting::On(waiter(&mut slot.syncs, member)),
            };
            slot.deliver(effects);
            waiting
        });
        waiting
            .answer(|| SyncResult::failed(ResponseError::CoordinatorNotAvailable))
            .await
    }

    pub fn heartbeat(
        &self,
        group: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), ResponseError> {
        let now = self.now();
        match self.groups.borrow_mut().get_mut(group) {
            Some(slot) => slot
                .group
                .heartbeat(member_id, instance_id, generation, now),
            None => Err(ResponseError::UnknownMemberId),
        }
    }

    pub fn leave(
        &self,
        group: &str,
        members: &[(String, Option<String>)],
    ) -> Vec<Result<(), ResponseError>> {
        let now = self.now();
        match self.groups.borrow_mut().get_mut(group) {
            Some(slot) => {
                let (results, effects) = slot.group.leave(members, now);
                slot.deliver(effects);
                results
            }
            None => vec![Err(ResponseError::UnknownMemberId); members.len()],
        }
    }

    /// Whether this member may commit offsets for the group now. A group the coordinator
    /// does not know (never joined, or joined before a restart) accepts only commits that
    /// claim no generation.
    pub fn check_commit(
        &self,
        group: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), ResponseError> {
        match self.groups.borrow().get(group) {
            Some(slot) => slot.group.check_commit(member_id, instance_id, generation),
            None if generation < 0 => Ok(()),
            None => Err(ResponseError::IllegalGeneration),
        }
    }

    pub fn describe(&self, group: &str) -> Option<GroupDescription> {
        let groups = self.groups.borrow();
        let group = &groups.get(group)?.group;
        let protocol = group.protocol().unwrap_or_default().to_string();
        Some(GroupDescription {
            state: group.state(),
            protocol_type: group.protocol_type().unwrap_or_default().to_string(),
            members: group
                .members()
                .map(|m| MemberDescription {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: m.metadata(&protocol),
                    assignment: m.assignment.clone(),
                })
                .collect(),
            protocol,
        })
    }

    /// Every group with its state and protocol type.
    pub fn list(&self) -> Vec<(String, GroupState, String)> {
        self.groups
            .borrow()
            .iter()
            .map(|(name, slot)| {
                let group = &slot.group;
                let protocol_type = group.protocol_type().unwrap_or_default().to_string();
                (name.clone(), group.state(), protocol_type)
            })
            .collect()
    }

    /// Forgets a group without members (DeleteGroups); a group with members is refused.
    pub fn delete(&self, group: &str) -> Result<(), ResponseError> {
        let mut groups = self.groups.borrow_mut();
        let Some(slot) = groups.get_mut(group) else {
            return Ok(());
        };
        if !slot.group.is_empty() {
            return Err(ResponseError::NonEmptyGroup);
        }
        let effects = slot.group.kill();
        slot.deliver(effects);
        groups.remove(group);
        Ok(())
    }

    /// Whether the group has members (OffsetDelete refuses to drop offsets they may use).
    pub fn has_members(&self, group: &str) -> bool {
        self.groups
            .borrow()
            .get(group)
            .is_some_and(|slot| !slot.group.is_empty())
    }

    /// Expires sessions and ends join phases whose time has come.
    pub fn tick(&self) {
        let now = self.now();
        for slot in self.groups.borrow_mut().values_mut() {
            let effects = slot.group.tick(now);
            slot.deliver(effects);
        }
    }

    /// Releases every waiting request (they answer `COORDINATOR_NOT_AVAILABLE`), so that a
    /// shutting-down shard can drain.
    pub fn release_waiters(&self) {
        for slot in self.groups.borrow_mut().values_mut() {
            slot.joins.clear();
            slot.syncs.clear();
        }
    }
}

/// A request's answer: at hand, or to wait for.
enum Waiting<T> {
    Answered(T),
    On(LocalReceiver<T>),
}

impl<T> Waiting<T> {
    /// The answer; `lost` if the waiter was dropped (shutdown, or a repeated request).
    async fn answer(self, lost: impl FnOnce() -> T) -> T {
        match self {
            Waiting::Answered(result) => result,
            Waiting::On(receiver) => receiver.recv().await.unwrap_or_else(lost),
        }
    }
}

/// Registers a one-shot waiter for `member`; an earlier waiter of the same member (a
/// repeated request) is dropped and its request answered as failed.
fn waiter<T>(waiters: &mut HashMap<String, LocalSender<T>>, member: String) -> LocalReceiver<T> {
    let (sender, receiver) = local_channel::new_bounded(1);
    waiters.insert(member, sender);
    receiver
}
