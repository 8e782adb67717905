//! One consumer group under Kafka's classic rebalance protocol, as a pure state machine.
//!
//! No I/O and no clock: every event carries the time (milliseconds on any monotonic
//! scale), and answers that must wait (a join until every member has rejoined, a sync
//! until the leader has sent the assignment) come back later as `Effects` of whichever
//! event completes them. The coordinator (`super::Coordinator`) keeps the waiting
//! requests and delivers the effects; property tests drive this machine directly.
//!
//! States: `Empty` (no members; offsets may still be committed) → `PreparingRebalance`
//! (members (re)join; ends when all known members have joined or the rebalance timeout
//! passes) → `CompletingRebalance` (a new generation exists; waits for the leader's
//! assignment) → `Stable`. Any join with new metadata, a leave or an expired session
//! starts the next rebalance. `Dead` is a deleted group.

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::ResponseError;

/// The group's limits, as Kafka's `group.*` broker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLimits {
    pub min_session_timeout_ms: u64,
    pub max_session_timeout_ms: u64,
    /// How long the first rebalance of an empty group waits for more members
    /// (`group.initial.rebalance.delay.ms`), extended by each new member up to the
    /// rebalance timeout.
    pub initial_rebalance_delay_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    /// The name Kafka's DescribeGroups and ListGroups use.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
    /// Supported assignment protocols with their metadata, in the member's preference order.
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    last_seen_ms: u64,
    awaiting_join: bool,
    awaiting_sync: bool,
}

impl Member {
    /// The member's metadata for `protocol`.
    pub fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a new member first gets its id with `MEMBER_ID_REQUIRED`.
    pub require_known_member_id: bool,
    /// The id to give a new member (`client_id-uuid`, made by the caller so this stays pure).
    pub fresh_member_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinResult {
    pub error: Option<ResponseError>,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// The leader's view: every member with its metadata for the chosen protocol.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

impl JoinResult {
    pub fn failed(error: ResponseError, member_id: &str) -> JoinResult {
        JoinResult {
            error: Some(error),
            generation: -1,
            protocol_type: None,
            protocol: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncResult {
    pub error: Option<ResponseError>,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignment: Bytes,
}

impl SyncResult {
    pub fn failed(error: ResponseError) -> SyncResult {
        SyncResult {
            error: Some(error),
            protocol_type: None,
            protocol: None,
            assignment: Bytes::new(),
        }
    }
}

/// An answer now, or later as an effect addressed to this member id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<T> {
    Now(T),
    Later(String),
}

/// Answers to requests that waited, by member id.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Effects {
    pub joins: Vec<(String, JoinResult)>,
    pub syncs: Vec<(String, SyncResult)>,
}

/// A SyncGroup request.
#[derive(Debug, Clone)]
pub struct SyncRequest {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    /// The leader's assignment per member id; empty from followers.
    pub assignments: Vec<(String, Bytes)>,
}

#[derive(Debug, Clone)]
pub struct Group {
    limits: GroupLimits,
    state: GroupState,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// group.instance.id → member id of static members.
    static_members: BTreeMap<String, String>,
    /// Ids handed out with `MEMBER_ID_REQUIRED`, valid until the given time.
    pending: BTreeMap<String, u64>,
    /// While preparing: the join phase ends at this time at the latest.
    join_deadline_ms: u64,
    /// While preparing the first generation after `Empty`: wait at least until then.
    delay_until_ms: Option<u64>,
}

impl Group {
    pub fn new(limits: GroupLimits) -> Group {
        Group {
            limits,
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            static_members: BTreeMap::new(),
            pending: BTreeMap::new(),
            join_deadline_ms: 0,
            delay_until_ms: None,
        }
    }

    pub fn state(&self) -> GroupState {
        self.state
    }

    pub fn generation(&self) -> i32 {
        self.generation
    }

    pub fn protocol_type(&self) -> Option<&str> {
        self.protocol_type.as_deref()
    }

    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    pub fn leader(&self) -> Option<&str> {
        self.leader.as_deref()
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Marks the group deleted: every later event finds it dead.
    pub fn kill(&mut self) -> Effects {
        let mut effects = Effects::default();
        for member in self.members.values() {
            if member.awaiting_join {
                let failed = JoinResult::failed(ResponseError::CoordinatorNotAvailable, &member.id);
                effects.joins.push((member.id.clone(), failed));
            }
            if member.awaiting_sync {
                let failed = SyncResult::failed(ResponseError::CoordinatorNotAvailable);
                effects.syncs.push((member.id.clone(), failed));
            }
        }
        self.members.clear();
        self.static_members.clear();
        self.pending.clear();
        self.state = GroupState::Dead;
        effects
    }

    pub fn join(&mut self, request: JoinRequest, now: u64) -> (Reply<JoinResult>, Effects) {
        let mut effects = Effects::default();
        match self.admit(&request, now, &mut effects) {
            Ok(member_id) => {
                // A member that must wait is answered by the effects of whichever event
                // ends the join phase, possibly this one: the caller registers the waiter
                // before delivering effects.
                let waits = self
                    .members
                    .get(&member_id)
                    .is_some_and(|m| m.awaiting_join);
                let reply = if waits {
                    Reply::Later(member_id)
                } else {
                    Reply::Now(self.join_result(&member_id))
                };
                effects.joins.extend(self.complete_join_if_ready(now).joins);
                (reply, effects)
            }
            Err(failed) => (Reply::Now(*failed), effects),
        }
    }

    /// Checks a join and records the member; returns its id.
    fn admit(
        &mut self,
        request: &JoinRequest,
        now: u64,
        effects: &mut Effects,
    ) -> Result<String, Box<JoinResult>> {
        let fail = |error| Box::new(JoinResult::failed(error, &request.member_id));
        if self.state == GroupState::Dead {
            return Err(fail(ResponseError::CoordinatorNotAvailable));
        }
        let session = u64::try_from(request.session_timeout_ms).unwrap_or(0);
        if !(self.limits.min_session_timeout_ms..=self.limits.max_session_timeout_ms)
            .contains(&session)
        {
            return Err(fail(ResponseError::InvalidSessionTimeout));
        }
        if request.protocol_type.is_empty()
            || request.protocols.is_empty()
            || !self.accepts_protocols(&request.protocol_type, &request.protocols)
        {
            return Err(fail(ResponseError::InconsistentGroupProtocol));
        }
        let mut member_id = request.member_id.clone();
        if let Some(instance) = &request.instance_id {
            match self.static_members.get(instance).cloned() {
                Some(known) if member_id.is_empty() => {
                    // A static member restarted: it takes its old place under a new id, and
                    // the old id is fenced.
                    member_id = request.fresh_member_id.clone();
                    self.replace_member(&known, &member_id, effects);
                }
                Some(known) if known != member_id => {
                    return Err(fail(ResponseError::FencedInstanceId));
                }
                Some(_) => {}
                None if member_id.is_empty() || !self.members.contains_key(&member_id) => {
                    member_id = request.fresh_member_id.clone();
                    self.static_members
                        .insert(instance.clone(), member_id.clone());
                }
                None => {
                    self.static_members
                        .insert(instance.clone(), member_id.clone());
                }
            }
        } else if member_id.is_empty() {
            member_id = request.fresh_member_id.clone();
            if request.require_known_member_id {
                self.pending.insert(member_id.clone(), now + session);
                return Err(Box::new(JoinResult::failed(
                    ResponseError::MemberIdRequired,
                    &member_id,
                )));
            }
        } else if !self.members.contains_key(&member_id)
            && self.pending.remove(&member_id).is_none()
        {
            return Err(fail(ResponseError::UnknownMemberId));
        }

        let rebalance = u64::try_from(request.rebalance_timeout_ms)
            .ok()
            .filter(|ms| *ms > 0)
            .unwrap_or(session);
        let changed = match self.members.get_mut(&member_id) {
            Some(member) => {
                let changed = member.protocols != request.protocols;
                member.protocols = request.protocols.clone();
                member.session_timeout_ms = session;
                member.rebalance_timeout_ms = rebalance;
                member.client_id = request.client_id.clone();
                member.client_host = request.client_host.clone();
                member.last_seen_ms = now;
                changed
            }
            None => {
                self.members.insert(
                    member_id.clone(),
                    Member {
                        id: member_id.clone(),
                        instance_id: request.instance_id.clone(),
                        client_id: request.client_id.clone(),
                        client_host: request.client_host.clone(),
                        session_timeout_ms: session,
                        rebalance_timeout_ms: rebalance,
                        protocols: request.protocols.clone(),
                        assignment: Bytes::new(),
                        last_seen_ms: now,
                        awaiting_join: false,
                        awaiting_sync: false,
                    },
                );
                if self.delay_until_ms.is_some() {
                    self.extend_initial_delay(now);
                }
                true
            }
        };
        self.protocol_type = Some(request.protocol_type.clone());
        let is_leader = self.leader.as_deref() == Some(member_id.as_str());
        let rejoin = match self.state {
            GroupState::PreparingRebalance => true,
            GroupState::CompletingRebalance => changed,
            // The leader rejoining means it wants a new assignment (subscription change).
            GroupState::Stable => changed || is_leader,
            GroupState::Empty | GroupState::Dead => true,
        };
        if rejoin {
            if let Some(member) = self.members.get_mut(&member_id) {
                member.awaiting_join = true;
            }
            if self.state != GroupState::PreparingRebalance {
                self.prepare_rebalance(now, effects);
            }
        }
        Ok(member_id)
    }

    fn join_result(&self, member_id: &str) -> JoinResult {
        let protocol = self.protocol.clone().unwrap_or_default();
        let leader = self.leader.clone().unwrap_or_default();
        let members = if leader == member_id {
            self.members
                .values()
                .map(|m| (m.id.clone(), m.instance_id.clone(), m.metadata(&protocol)))
                .collect()
        } else {
            Vec::new()
        };
        JoinResult {
            error: None,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            leader,
            member_id: member_id.to_string(),
            members,
        }
    }

    /// Whether a member with these protocols fits the group: same protocol type, and at
    /// least one protocol every member supports.
    fn accepts_protocols(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.members.is_empty() {
            return true;
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        protocols.iter().any(|(name, _)| {
            self.members
                .values()
                .all(|m| m.protocols.iter().any(|(n, _)| n == name))
        })
    }

    fn replace_member(&mut self, old: &str, new: &str, effects: &mut Effects) {
        if let Some(mut member) = self.members.remove(old) {
            if member.awaiting_join {
                let fenced = JoinResult::failed(ResponseError::FencedInstanceId, old);
                effects.joins.push((old.to_string(), fenced));
            }
            if member.awaiting_sync {
                let fenced = SyncResult::failed(ResponseError::FencedInstanceId);
                effects.syncs.push((old.to_string(), fenced));
                member.awaiting_sync = false;
            }
            member.id = new.to_string();
            if let Some(instance) = &member.instance_id {
                self.static_members
                    .insert(instance.clone(), new.to_string());
            }
            self.members.insert(new.to_string(), member);
        }
        if self.leader.as_deref() == Some(old) {
            self.leader = Some(new.to_string());
        }
    }

    fn extend_initial_delay(&mut self, now: u64) {
        let wanted = now + self.limits.initial_rebalance_delay_ms;
        self.delay_until_ms = Some(wanted.min(self.join_deadline_ms));
    }

    fn prepare_rebalance(&mut self, now: u64, effects: &mut Effects) {
        if self.state == GroupState::CompletingRebalance {
            for member in self.members.values_mut() {
                if std::mem::take(&mut member.awaiting_sync) {
                    let failed = SyncResult::failed(ResponseError::RebalanceInProgress);
                    effects.syncs.push((member.id.clone(), failed));
                }
            }
        }
        let rebalance_timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout_ms)
            .max()
            .unwrap_or(0);
        self.join_deadline_ms = now + rebalance_timeout;
        self.delay_until_ms = None;
        if self.state == GroupState::Empty {
            self.extend_initial_delay(now);
        }
        self.state = GroupState::PreparingRebalance;
    }

    /// Ends the join phase once every member has rejoined (and the initial delay passed),
    /// or at the deadline, dropping members that did not rejoin.
    fn complete_join_if_ready(&mut self, now: u64) -> Effects {
        let mut effects = Effects::default();
        if self.state != GroupState::PreparingRebalance {
            return effects;
        }
        let all_joined = self.members.values().all(|m| m.awaiting_join);
        let delayed = self.delay_until_ms.is_some_and(|until| now < until);
        if (delayed || !all_joined) && now < self.join_deadline_ms {
            return effects;
        }
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| !m.awaiting_join)
            .map(|m| m.id.clone())
            .collect();
        for id in gone {
            self.remove_member(&id);
        }
        self.generation += 1;
        self.delay_until_ms = None;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol = None;
            self.leader = None;
            return effects;
        }
        self.protocol = self.select_protocol();
        if !self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        self.state = GroupState::CompletingRebalance;
        for member in self.members.values_mut() {
            member.awaiting_join = false;
            member.assignment = Bytes::new();
        }
        for id in self.members.keys() {
            effects.joins.push((id.clone(), self.join_result(id)));
        }
        effects
    }

    /// The protocol every member supports that most members prefer.
    fn select_protocol(&self) -> Option<String> {
        let first = self.members.values().next()?;
        let candidates: Vec<&str> = first
            .protocols
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == name))
            })
            .collect();
        let mut votes: Vec<(usize, &str)> = candidates.iter().map(|c| (0, *c)).collect();
        for member in self.members.values() {
            if let Some((name, _)) = member
                .protocols
                .iter()
                .find(|(n, _)| candidates.contains(&n.as_str()))
                && let Some(vote) = votes.iter_mut().find(|(_, c)| c == name)
            {
                vote.0 += 1;
            }
        }
        // Most votes; among equals, the first member's preference.
        let best = votes.iter().map(|(n, _)| *n).max()?;
        votes
            .iter()
            .find(|(n, _)| *n == best)
            .map(|(_, name)| name.to_string())
    }

    fn remove_member(&mut self, id: &str) -> Option<Member> {
        let member = self.members.remove(id)?;
        if let Some(instance) = &member.instance_id
            && self.static_members.get(instance).map(String::as_str) == Some(id)
        {
            self.static_members.remove(instance);
        }
        Some(member)
    }

    /// The member a request names, or why it may not act: unknown, or a static member's
    /// old incarnation.
    fn check_member(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<&Member, ResponseError> {
        if let Some(instance) = instance_id
            && let Some(current) = self.static_members.get(instance)
            && current != member_id
        {
            return Err(ResponseError::FencedInstanceId);
        }
        self.members
            .get(member_id)
            .ok_or(ResponseError::UnknownMemberId)
    }

    pub fn sync(&mut self, request: SyncRequest, now: u64) -> (Reply<SyncResult>, Effects) {
        let mut effects = Effects::default();
        let fail = |e| (Reply::Now(SyncResult::failed(e)), Effects::default());
        if self.state == GroupState::Dead {
            return fail(ResponseError::CoordinatorNotAvailable);
        }
        if let Err(error) = self.check_member(&request.member_id, request.instance_id.as_deref()) {
            return fail(error);
        }
        if request.generation != self.generation {
            return fail(ResponseError::IllegalGeneration);
        }
        let mismatch = |asked: &Option<String>, ours: &Option<String>| {
            asked.as_ref().is_some_and(|a| ours.as_ref() != Some(a))
        };
        if mismatch(&request.protocol_type, &self.protocol_type)
            || mismatch(&request.protocol, &self.protocol)
        {
            return fail(ResponseError::InconsistentGroupProtocol);
        }
        if let Some(member) = self.members.get_mut(&request.member_id) {
            member.last_seen_ms = now;
        }
        match self.state {
            GroupState::PreparingRebalance => fail(ResponseError::RebalanceInProgress),
            GroupState::Stable => {
                let member = &self.members[&request.member_id];
                (Reply::Now(self.sync_result(member)), effects)
            }
            GroupState::CompletingRebalance => {
                if let Some(member) = self.members.get_mut(&request.member_id) {
                    member.awaiting_sync = true;
                }
                if self.leader.as_deref() == Some(request.member_id.as_str()) {
                    for (id, assignment) in request.assignments {
                        if let Some(member) = self.members.get_mut(&id) {
                            member.assignment = assignment;
                        }
                    }
                    self.state = GroupState::Stable;
                    for member in self.members.values() {
                        if member.awaiting_sync {
                            effects
                                .syncs
                                .push((member.id.clone(), self.sync_result(member)));
                        }
                    }
                    for member in self.members.values_mut() {
                        member.awaiting_sync = false;
                    }
                }
                (Reply::Later(request.member_id), effects)
            }
            GroupState::Empty | GroupState::Dead => fail(ResponseError::UnknownMemberId),
        }
    }

    fn sync_result(&self, member: &Member) -> SyncResult {
        SyncResult {
            error: None,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            assignment: member.assignment.clone(),
        }
    }

    pub fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: u64,
    ) -> Result<(), ResponseError> {
        if self.state == GroupState::Dead {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        self.check_member(member_id, instance_id)?;
        if generation != self.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        if let Some(member) = self.members.get_mut(member_id) {
            member.last_seen_ms = now;
        }
        match self.state {
            GroupState::PreparingRebalance => Err(ResponseError::RebalanceInProgress),
            _ => Ok(()),
        }
    }

    /// Members leave, by member id or (static members) by instance id.
    pub fn leave(
        &mut self,
        leaving: &[(String, Option<String>)],
        now: u64,
    ) -> (Vec<Result<(), ResponseError>>, Effects) {
        let mut effects = Effects::default();
        let mut results = Vec::with_capacity(leaving.len());
        let mut removed = false;
        for (member_id, instance_id) in leaving {
            let id = match instance_id {
                Some(instance) => match self.static_members.get(instance) {
                    Some(current) if !member_id.is_empty() && current != member_id => {
                        results.push(Err(ResponseError::FencedInstanceId));
                        continue;
                    }
                    Some(current) => current.clone(),
                    None => {
                        results.push(Err(ResponseError::UnknownMemberId));
                        continue;
                    }
                },
                None => member_id.clone(),
            };
            if self.pending.remove(&id).is_some() {
                results.push(Ok(()));
                continue;
            }
            match self.remove_member(&id) {
                Some(member) => {
                    if member.awaiting_join {
                        let gone = JoinResult::failed(ResponseError::UnknownMemberId, &id);
                        effects.joins.push((id.clone(), gone));
                    }
                    if member.awaiting_sync {
                        let gone = SyncResult::failed(ResponseError::UnknownMemberId);
                        effects.syncs.push((id.clone(), gone));
                    }
                    removed = true;
                    results.push(Ok(()));
                }
                None => results.push(Err(ResponseError::UnknownMemberId)),
            }
        }
        if removed {
            self.membership_changed(now, &mut effects);
        }
        (results, effects)
    }

    fn membership_changed(&mut self, now: u64, effects: &mut Effects) {
        if matches!(
            self.state,
            GroupState::Stable | GroupState::CompletingRebalance
        ) {
            self.prepare_rebalance(now, effects);
        }
        let completed = self.complete_join_if_ready(now);
        effects.joins.extend(completed.joins);
    }

    /// Expires members whose session lapsed and ends a join phase whose time has come.
    pub fn tick(&mut self, now: u64) -> Effects {
        let mut effects = Effects::default();
        self.pending.retain(|_, until| *until > now);
        // A member waiting in a join is bounded by the rebalance timeout, not its session.
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| !m.awaiting_join && m.last_seen_ms + m.session_timeout_ms < now)
            .map(|m| m.id.clone())
            .collect();
        for id in &expired {
            if let Some(member) = self.remove_member(id)
                && member.awaiting_sync
            {
                let gone = SyncResult::failed(ResponseError::UnknownMemberId);
                effects.syncs.push((id.clone(), gone));
            }
        }
        if expired.is_empty() {
            effects.joins.extend(self.complete_join_if_ready(now).joins);
        } else {
            self.membership_changed(now, &mut effects);
        }
        effects
    }

    /// Whether a member may commit offsets for this group (Kafka's rules for the classic
    /// protocol): anyone while the group has no members and no generation is claimed;
    /// otherwise only a current member of the current generation, once it is complete.
    pub fn check_commit(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), ResponseError> {
        if self.state == GroupState::Dead {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        if generation < 0 && self.state == GroupState::Empty {
            return Ok(());
        }
        self.check_member(member_id, instance_id)?;
        if generation != self.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        if self.state == GroupState::CompletingRebalance {
            return Err(ResponseError::RebalanceInProgress);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{Arbitrary, Gen, QuickCheck};

    const LIMITS: GroupLimits = GroupLimits {
        min_session_timeout_ms: 6_000,
        max_session_timeout_ms: 300_000,
        initial_rebalance_delay_ms: 0,
    };

    fn join_request(member_id: &str, fresh: &str, protocols: &[&str]) -> JoinRequest {
        JoinRequest {
            member_id: member_id.into(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|p| (p.to_string(), Bytes::from(format!("{member_id}{fresh}"))))
                .collect(),
            require_known_member_id: false,
            fresh_member_id: fresh.into(),
        }
    }

    fn sync_request(member: &str, generation: i32, assignments: &[(&str, &str)]) -> SyncRequest {
        SyncRequest {
            member_id: member.into(),
            instance_id: None,
            generation,
            protocol_type: Some("consumer".into()),
            protocol: None,
            assignments: assignments
                .iter()
                .map(|(m, a)| (m.to_string(), Bytes::from(a.to_string())))
                .collect(),
        }
    }

    /// Three members join; the join phase ends when the third arrives (no initial delay),
    /// the leader assigns, and every member gets its assignment.
    #[test]
    fn three_members_rebalance_to_stable() {
        let mut group = Group::new(LIMITS);
        let (reply, effects) = group.join(join_request("", "a", &["range", "roundrobin"]), 0);
        // Alone and not delayed, the first member completes the first generation at once.
        assert_eq!(reply, Reply::Later("a".into()));
        assert_eq!(effects.joins.len(), 1);
        assert_eq!(group.generation(), 1);
        let (reply, effects) = group.join(join_request("", "b", &["roundrobin", "range"]), 1);
        assert_eq!(reply, Reply::Later("b".into()));
        assert!(effects.joins.is_empty(), "a has not rejoined yet");
        assert_eq!(group.state(), GroupState::PreparingRebalance);
        assert_eq!(
            group.heartbeat("a", None, 1, 2),
            Err(ResponseError::RebalanceInProgress)
        );
        let (_, effects) = group.join(join_request("", "c", &["roundrobin"]), 3);
        assert!(effects.joins.is_empty());
        let (_, effects) = group.join(join_request("a", "x", &["range", "roundrobin"]), 4);
        assert_eq!(effects.joins.len(), 3);
        assert_eq!(group.generation(), 2);
        assert_eq!(group.protocol(), Some("roundrobin"));
        let leader = group.leader().unwrap().to_string();
        for (id, result) in &effects.joins {
            assert_eq!(result.generation, 2);
            assert_eq!(result.leader, leader);
            assert_eq!(result.members.len(), if *id == leader { 3 } else { 0 });
        }
        let (reply, effects) = group.sync(sync_request("b", 2, &[]), 5);
        assert!(matches!(reply, Reply::Later(_)) || leader == "b");
        let _ = effects;
        let assignments = [("a", "pa"), ("b", "pb"), ("c", "pc")];
        let (_, effects) = group.sync(sync_request(&leader, 2, &assignments), 6);
        assert_eq!(group.state(), GroupState::Stable);
        let got: Vec<(String, Bytes)> = effects
            .syncs
            .iter()
            .map(|(id, r)| (id.clone(), r.assignment.clone()))
            .collect();
        assert!(got.contains(&("b".into(), Bytes::from("pb"))));
        let (reply, _) = group.sync(sync_request("c", 2, &[]), 7);
        assert_eq!(
            reply,
            Reply::Now(SyncResult {
                error: None,
                protocol_type: Some("consumer".into()),
                protocol: Some("roundrobin".into()),
                assignment: Bytes::from("pc"),
            })
        );
        assert_eq!(group.heartbeat("c", None, 2, 8), Ok(()));
        assert_eq!(group.check_commit("c", None, 2), Ok(()));
        assert_eq!(
            group.check_commit("c", None, 1),
            Err(ResponseError::IllegalGeneration)
        );
        assert_eq!(
            group.check_commit("", None, -1),
            Err(ResponseError::UnknownMemberId)
        );
    }

    #[test]
    fn an_expired_session_starts_a_rebalance_without_the_member() {
        let mut group = Group::new(LIMITS);
        group.join(join_request("", "a", &["range"]), 0);
        group.join(join_request("", "b", &["range"]), 0);
        group.join(join_request("a", "-", &["range"]), 0);
        assert_eq!(group.state(), GroupState::CompletingRebalance);
        let leader = group.leader().unwrap().to_string();
        group.sync(sync_request(&leader, 2, &[("a", "1"), ("b", "2")]), 1);
        assert_eq!(group.state(), GroupState::Stable);
        assert_eq!(group.heartbeat("a", None, 2, 9_000), Ok(()));
        // b's session (10 s) lapses; a keeps heartbeating.
        let effects = group.tick(10_002);
        assert!(effects.joins.is_empty());
        assert_eq!(group.state(), GroupState::PreparingRebalance);
        assert_eq!(
            group.heartbeat("b", None, 2, 10_003),
            Err(ResponseError::UnknownMemberId)
        );
        let (_, effects) = group.join(join_request("a", "-", &["range"]), 10_004);
        assert_eq!(effects.joins.len(), 1);
        assert_eq!(group.generation(), 3);
        assert_eq!(group.leader(), Some("a"));
    }

    #[test]
    fn new_members_need_a_member_id_first_from_v4() {
        let mut group = Group::new(LIMITS);
        let mut request = join_request("", "m-1", &["range"]);
        request.require_known_member_id = true;
        let (reply, _) = group.join(request.clone(), 0);
        let Reply::Now(result) = reply else {
            panic!("expected an immediate answer")
        };
        assert_eq!(result.error, Some(ResponseError::MemberIdRequired));
        assert_eq!(result.member_id, "m-1");
        assert!(group.is_empty());
        request.member_id = "m-1".into();
        let (reply, effects) = group.join(request.clone(), 1);
        assert_eq!(reply, Reply::Later("m-1".into()));
        assert_eq!(effects.joins.len(), 1);
        // An id nobody handed out is refused.
        request.member_id = "forged".into();
        let (reply, _) = group.join(request, 2);
        assert!(matches!(
            reply,
            Reply::Now(JoinResult {
                error: Some(ResponseError::UnknownMemberId),
                ..
            })
        ));
    }

    #[test]
    fn a_restarted_static_member_fences_its_old_id() {
        let mut group = Group::new(LIMITS);
        let mut request = join_request("", "old", &["range"]);
        request.instance_id = Some("host-1".into());
        group.join(request.clone(), 0);
        group.sync(sync_request("old", 1, &[("old", "p0")]), 1);
        assert_eq!(group.state(), GroupState::Stable);
        request.fresh_member_id = "new".into();
        let (reply, _) = group.join(request, 2);
        // Same metadata: no rebalance, the new id takes the old one's place.
        assert!(matches!(reply, Reply::Later(_) | Reply::Now(_)));
        assert_eq!(
            group.heartbeat("old", Some("host-1"), 1, 3),
            Err(ResponseError::FencedInstanceId)
        );
        assert!(group.members().any(|m| m.id == "new"));
    }

    #[test]
    fn the_initial_delay_waits_for_more_members() {
        let limits = GroupLimits {
            initial_rebalance_delay_ms: 3_000,
            ..LIMITS
        };
        let mut group = Group::new(limits);
        let (_, effects) = group.join(join_request("", "a", &["range"]), 0);
        assert!(effects.joins.is_empty());
        let (_, effects) = group.join(join_request("", "b", &["range"]), 1_000);
        assert!(effects.joins.is_empty());
        assert!(
            group.tick(3_500).joins.is_empty(),
            "b's join extended the delay"
        );
        assert_eq!(group.tick(4_001).joins.len(), 2);
        assert_eq!(group.generation(), 1);
    }

    #[test]
    fn incompatible_protocols_are_refused() {
        let mut group = Group::new(LIMITS);
        group.join(join_request("", "a", &["range"]), 0);
        let (reply, _) = group.join(join_request("", "b", &["sticky"]), 1);
        assert!(matches!(
            reply,
            Reply::Now(JoinResult {
                error: Some(ResponseError::InconsistentGroupProtocol),
                ..
            })
        ));
    }

    /// Random events from a handful of clients that follow the protocol loosely (they may
    /// be late, repeat themselves or use stale generations).
    #[derive(Debug, Clone)]
    enum Event {
        Join { client: u8, protocols: u8 },
        Sync { client: u8 },
        Heartbeat { client: u8 },
        Leave { client: u8 },
        Wait { ms: u16 },
    }

    impl Arbitrary for Event {
        fn arbitrary(g: &mut Gen) -> Event {
            let client = u8::arbitrary(g) % 4;
            match u8::arbitrary(g) % 6 {
                0 | 1 => Event::Join {
                    client,
                    protocols: u8::arbitrary(g) % 3,
                },
                2 => Event::Sync { client },
                3 => Event::Heartbeat { client },
                4 => Event::Leave { client },
                _ => Event::Wait {
                    ms: u16::arbitrary(g),
                },
            }
        }
    }

    /// What each client believes: its member id and generation.
    #[derive(Default, Clone)]
    struct Client {
        member_id: String,
        generation: i32,
        waiting_join: bool,
        waiting_sync: bool,
    }

    fn check_invariants(group: &Group) -> Result<(), String> {
        let state = group.state();
        if group.is_empty() != (state == GroupState::Empty) {
            return Err(format!("{state:?} with {} members", group.members.len()));
        }
        if matches!(state, GroupState::Stable | GroupState::CompletingRebalance) {
            let leader = group.leader().ok_or("no leader")?;
            if !group.members.contains_key(leader) {
                return Err("leader is not a member".into());
            }
            let protocol = group.protocol().ok_or("no protocol")?;
            if !group
                .members()
                .all(|m| m.protocols.iter().any(|(n, _)| n == protocol))
            {
                return Err("a member does not support the chosen protocol".into());
            }
        }
        for (instance, id) in &group.static_members {
            if group.members.get(id).and_then(|m| m.instance_id.as_ref()) != Some(instance) {
                return Err("static member map out of date".into());
            }
        }
        Ok(())
    }

    fn apply(
        effects: Effects,
        clients: &mut [Client],
        group: &Group,
        leaders_by_generation: &mut BTreeMap<i32, String>,
        assigned: &BTreeMap<(i32, String), Bytes>,
    ) -> Result<(), String> {
        for (id, result) in effects.joins {
            let Some(client) = clients
                .iter_mut()
                .find(|c| c.member_id == id && c.waiting_join)
            else {
                continue;
            };
            client.waiting_join = false;
            if result.error.is_none() {
                client.generation = result.generation;
                let leader = leaders_by_generation
                    .entry(result.generation)
                    .or_insert(result.leader.clone());
                if *leader != result.leader {
                    return Err("two leaders in one generation".into());
                }
                if (result.leader == id) == result.members.is_empty() {
                    return Err("member list not exactly for the leader".into());
                }
            }
        }
        for (id, result) in effects.syncs {
            let Some(client) = clients
                .iter_mut()
                .find(|c| c.member_id == id && c.waiting_sync)
            else {
                continue;
            };
            client.waiting_sync = false;
            if result.error.is_none() {
                let expected = assigned
                    .get(&(group.generation(), id.clone()))
                    .cloned()
                    .unwrap_or_default();
                if result.assignment != expected {
                    return Err("assignment differs from the leader's".into());
                }
            }
        }
        Ok(())
    }

    /// Steps at which a multi-member group was stable: proves the events reach it.
    static STABLE_SEEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    fn run(events: Vec<Event>) -> Result<(), String> {
        let protocol_sets: [&[&str]; 3] = [
            &["range"],
            &["range", "roundrobin"],
            &["roundrobin", "range"],
        ];
        let mut group = Group::new(LIMITS);
        let mut clients: Vec<Client> = vec![Client::default(); 4];
        let mut now = 0u64;
        let mut fresh = 0u32;
        let mut generation_seen = 0;
        let mut leaders_by_generation: BTreeMap<i32, String> = BTreeMap::new();
        let mut assigned: BTreeMap<(i32, String), Bytes> = BTreeMap::new();
        for event in events {
            match event {
                Event::Join { client, protocols } => {
                    let c = &mut clients[client as usize];
                    if c.waiting_join {
                        continue;
                    }
                    fresh += 1;
                    let request = join_request(
                        &c.member_id,
                        &format!("m{fresh}"),
                        protocol_sets[protocols as usize],
                    );
                    let (reply, effects) = group.join(request, now);
                    match reply {
                        Reply::Later(id) => {
                            c.member_id = id;
                            c.waiting_join = true;
                        }
                        Reply::Now(result) => {
                            if result.error.is_none() {
                                c.generation = result.generation;
                            }
                            if result.error == Some(ResponseError::UnknownMemberId) {
                                c.member_id.clear();
                            }
                        }
                    }
                    apply(
                        effects,
                        &mut clients,
                        &group,
                        &mut leaders_by_generation,
                        &assigned,
                    )?;
                }
                Event::Sync { client } => {
                    let c = &clients[client as usize];
                    if c.waiting_join || c.waiting_sync || c.member_id.is_empty() {
                        continue;
                    }
                    let mut assignments = Vec::new();
                    if group.leader() == Some(c.member_id.as_str())
                        && group.state() == GroupState::CompletingRebalance
                        && c.generation == group.generation()
                    {
                        for m in group.members() {
                            let a = Bytes::from(format!("{}:{}", group.generation(), m.id));
                            assigned.insert((group.generation(), m.id.clone()), a.clone());
                            assignments.push((m.id.clone(), a));
                        }
                    }
                    let request = SyncRequest {
                        assignments,
                        ..sync_request(&c.member_id, c.generation, &[])
                    };
                    let id = c.member_id.clone();
                    let (reply, effects) = group.sync(request, now);
                    if let Reply::Later(_) = reply {
                        clients[client as usize].waiting_sync = true;
                    }
                    if let Reply::Now(result) = &reply
                        && result.error.is_none()
                    {
                        let expected = assigned
                            .get(&(group.generation(), id))
                            .cloned()
                            .unwrap_or_default();
                        if result.assignment != expected {
                            return Err("immediate assignment differs".into());
                        }
                    }
                    apply(
                        effects,
                        &mut clients,
                        &group,
                        &mut leaders_by_generation,
                        &assigned,
                    )?;
                }
                Event::Heartbeat { client } => {
                    let c = &clients[client as usize];
                    let stable_member = group.state() == GroupState::Stable
                        && group.members.contains_key(&c.member_id);
                    let result = group.heartbeat(&c.member_id, None, c.generation, now);
                    if stable_member && c.generation == group.generation() && result.is_err() {
                        return Err(format!("heartbeat of a stable member failed: {result:?}"));
                    }
                }
                Event::Leave { client } => {
                    let id = clients[client as usize].member_id.clone();
                    let (_, effects) = group.leave(&[(id, None)], now);
                    apply(
                        effects,
                        &mut clients,
                        &group,
                        &mut leaders_by_generation,
                        &assigned,
                    )?;
                    clients[client as usize] = Client::default();
                }
                Event::Wait { ms } => {
                    now += u64::from(ms);
                    let effects = group.tick(now);
                    apply(
                        effects,
                        &mut clients,
                        &group,
                        &mut leaders_by_generation,
                        &assigned,
                    )?;
                }
            }
            if group.generation() < generation_seen {
                return Err("generation went back".into());
            }
            generation_seen = group.generation();
            check_invariants(&group)?;
            if group.state() == GroupState::Stable && group.members.len() > 1 {
                STABLE_SEEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        Ok(())
    }

    #[test]
    fn random_event_sequences_keep_the_group_consistent() {
        fn property(events: Vec<Event>) -> bool {
            match run(events) {
                Ok(()) => true,
                Err(problem) => {
                    eprintln!("{problem}");
                    false
                }
            }
        }
        QuickCheck::new()
            .tests(500)
            .quickcheck(property as fn(Vec<Event>) -> bool);
        let stable = STABLE_SEEN.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            stable > 10,
            "only {stable} stable steps: the generator misses the point"
        );
    }
}
