//! Shard 0's connections to the other brokers: Raft messages of the controller quorum
//! (one link per peer, messages batched into one request per round) and calls to the
//! active controller. Both use the native protocol over `weir-client` connections.
//!
//! Raft tolerates lost messages, so a link never waits for an unreachable peer: its queue
//! is bounded (the oldest messages go first), connecting and writing are bounded in time,
//! and raft-rs is told the peer is unreachable so that it probes instead of streaming.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use event_listener::Event;
use flatbuffers::FlatBufferBuilder;
use weir_client::{Connection, TlsClient};
use weir_replication::eraftpb::Message;
use weir_replication::{ControllerAnswer, ControllerError, ControllerRequest, NodeId, quorum};
use weir_wire::native::schema;

/// A controller's answer: the decision, and the metadata log index that holds it.
pub type ControllerReply = Result<(ControllerAnswer, u64), ControllerError>;

/// Raft messages waiting for one peer at most; older ones are dropped past it.
const LINK_QUEUE_MAX: usize = 4096;
/// Messages per request to a peer at most.
const MESSAGES_PER_REQUEST_MAX: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A write to a peer that takes longer than this means the peer (or the path to it) is
/// gone: the connection is dropped and made again.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a call to the controller may take (heartbeats allow less: a heartbeat stuck
/// on a controller that stopped would let the next controller fence this broker).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Debug)]
struct Link {
    queue: RefCell<VecDeque<Bytes>>,
    wake: Event,
}

#[derive(Debug)]
pub struct Peers {
    node: NodeId,
    addresses: RefCell<BTreeMap<NodeId, String>>,
    links: RefCell<BTreeMap<NodeId, Rc<Link>>>,
    calls: RefCell<BTreeMap<NodeId, Rc<Connection>>>,
    /// Peers a message could not be delivered to, for raft-rs to hear about.
    unreachable: RefCell<BTreeSet<NodeId>>,
    /// TLS to the peers' native listeners, when they serve it.
    tls: Option<Arc<TlsClient>>,
}

impl Peers {
    pub fn new(
        node: NodeId,
        addresses: BTreeMap<NodeId, String>,
        tls: Option<Arc<TlsClient>>,
    ) -> Rc<Peers> {
        Rc::new(Peers {
            node,
            addresses: RefCell::new(addresses),
            links: RefCell::new(BTreeMap::new()),
            calls: RefCell::new(BTreeMap::new()),
            unreachable: RefCell::new(BTreeSet::new()),
            tls,
        })
    }

    /// Learns brokers' addresses from their registrations (the initial list stays for
    /// the others).
    pub fn learn_addresses(&self, image: &weir_replication::MetadataImage) {
        let mut addresses = self.addresses.borrow_mut();
        for broker in image.brokers.values() {
            let address = crate::metadata::native_address(broker);
            if addresses.get(&broker.node) != Some(&address) {
                addresses.insert(broker.node, address);
                // A connection to the old address is useless now.
                self.calls.borrow_mut().remove(&broker.node);
            }
        }
    }

    /// Every broker whose address is known, but this one.
    pub fn others(&self) -> Vec<NodeId> {
        let me = self.node;
        self.addresses
            .borrow()
            .keys()
            .copied()
            .filter(|n| *n != me)
            .collect()
    }

    pub fn address(&self, node: NodeId) -> Option<String> {
        self.addresses.borrow().get(&node).cloned()
    }

    /// Peers that could not be reached since the last call.
    pub fn take_unreachable(&self) -> Vec<NodeId> {
        std::mem::take(&mut *self.unreachable.borrow_mut())
            .into_iter()
            .collect()
    }

    /// Queues raft messages for their peers; each peer's link sends them in order.
    pub fn send_raft(self: &Rc<Self>, messages: Vec<Message>) {
        for message in messages {
            let to = quorum::recipient(&message);
            if to == self.node {
                continue;
            }
            let link = self.link(to);
            let mut queue = link.queue.borrow_mut();
            if queue.len() >= LINK_QUEUE_MAX {
                queue.pop_front();
            }
            queue.push_back(Bytes::from(quorum::encode_message(&message)));
            drop(queue);
            link.wake.notify(1);
        }
    }

    fn link(self: &Rc<Self>, node: NodeId) -> Rc<Link> {
        if let Some(link) = self.links.borrow().get(&node) {
            return link.clone();
        }
        let link = Rc::new(Link {
            queue: RefCell::new(VecDeque::new()),
            wake: Event::new(),
        });
        self.links.borrow_mut().insert(node, link.clone());
        glommio::spawn_local(self.clone().run_link(node, link.clone())).detach();
        link
    }

    /// Sends a link's queued messages, a batch per request, for as long as the broker runs.
    async fn run_link(self: Rc<Self>, node: NodeId, link: Rc<Link>) {
        let mut connection: Option<Rc<Connection>> = None;
        loop {
            let listener = link.wake.listen();
            let batch: Vec<Bytes> = {
                let mut queue = link.queue.borrow_mut();
                let count = queue.len().min(MESSAGES_PER_REQUEST_MAX);
                queue.drain(..count).collect()
            };
            if batch.is_empty() {
                listener.await;
                continue;
            }
            if connection.as_ref().is_none_or(|c| c.is_broken()) {
                connection = self.connect(node).await;
            }
            let Some(open) = &connection else {
                self.unreachable.borrow_mut().insert(node);
                glommio::timer::sleep(RECONNECT_BACKOFF).await;
                continue;
            };
            let sent = with_timeout(WRITE_TIMEOUT, send_messages(open, batch)).await;
            if !matches!(sent, Some(Ok(()))) {
                tracing::debug!(peer = node, "raft messages not delivered; reconnecting");
                self.unreachable.borrow_mut().insert(node);
                connection = None;
            }
        }
    }

    async fn connect(&self, node: NodeId) -> Option<Rc<Connection>> {
        let address = self.address(node)?;
        let opened = Connection::open(&address, self.tls.as_deref());
        match with_timeout(CONNECT_TIMEOUT, opened).await {
            Some(Ok(connection)) => Some(connection),
            Some(Err(error)) => {
                tracing::debug!(peer = node, %address, %error, "cannot reach peer");
                None
            }
            None => None,
        }
    }

    /// Calls the controller on `node` (which this broker believes leads the quorum).
    pub async fn call_controller(
        &self,
        node: NodeId,
        request: &ControllerRequest,
        timeout: Duration,
    ) -> ControllerReply {
        let unreachable = || ControllerError::NotController { leader: Some(node) };
        let existing = self.calls.borrow().get(&node).cloned();
        let connection = match existing.filter(|c| !c.is_broken()) {
            Some(connection) => connection,
            None => {
                let connection = self.connect(node).await.ok_or_else(unreachable)?;
                self.calls.borrow_mut().insert(node, connection.clone());
                connection
            }
        };
        let body = rkyv::to_bytes::<rkyv::rancor::Error>(request)
            .map_err(|_| unreachable())?
            .into_vec();
        let length = body.len() as u32;
        let call = connection.request(
            schema::RequestBody::ControllerCallRequest,
            move |builder: &mut FlatBufferBuilder<'static>| {
                let slice = schema::PayloadSlice::new(0, length);
                schema::ControllerCallRequest::create(
                    builder,
                    &schema::ControllerCallRequestArgs { body: Some(&slice) },
                )
                .as_union_value()
            },
            vec![Bytes::from(body)],
            true,
        );
        let frame = match with_timeout(timeout, call).await {
            Some(Ok(Some(frame))) => frame,
            _ => {
                self.calls.borrow_mut().remove(&node);
                return Err(unreachable());
            }
        };
        let decoded = (|| {
            let response = frame.checked().ok()?;
            let body = response.body_as_controller_call_response()?;
            let bytes = frame.slice(Some(body.body())).ok()?;
            decode_reply(&bytes)
        })();
        decoded.unwrap_or_else(|| Err(unreachable()))
    }
}

async fn send_messages(
    connection: &Connection,
    messages: Vec<Bytes>,
) -> weir_client::ClientResult<()> {
    let mut offset = 0u32;
    let slices: Vec<schema::PayloadSlice> = messages
        .iter()
        .map(|m| {
            let slice = schema::PayloadSlice::new(offset, m.len() as u32);
            offset += m.len() as u32;
            slice
        })
        .collect();
    connection
        .request(
            schema::RequestBody::RaftMessagesRequest,
            move |builder: &mut FlatBufferBuilder<'static>| {
                let messages = builder.create_vector(&slices);
                schema::RaftMessagesRequest::create(
                    builder,
                    &schema::RaftMessagesRequestArgs {
                        messages: Some(messages),
                    },
                )
                .as_union_value()
            },
            messages,
            false,
        )
        .await
        .map(|_| ())
}

pub fn encode_reply(reply: &ControllerReply) -> Vec<u8> {
    rkyv::to_bytes::<rkyv::rancor::Error>(reply)
        .map(|bytes| bytes.into_vec())
        .unwrap_or_default()
}

pub fn decode_reply(bytes: &[u8]) -> Option<ControllerReply> {
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    rkyv::from_bytes::<ControllerReply, rkyv::rancor::Error>(&aligned).ok()
}

pub fn decode_request(bytes: &[u8]) -> Option<ControllerRequest> {
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    rkyv::from_bytes::<ControllerRequest, rkyv::rancor::Error>(&aligned).ok()
}

/// `future`, or `None` if it takes longer than `limit`.
pub async fn with_timeout<T>(
    limit: Duration,
    future: impl std::future::Future<Output = T>,
) -> Option<T> {
    futures_lite::future::or(async { Some(future.await) }, async {
        glommio::timer::sleep(limit).await;
        None
    })
    .await
}
