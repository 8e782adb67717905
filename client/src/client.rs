//! One call per native request, over a pipelined connection.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use weir_wire::native::PROTOCOL_VERSION;
use weir_wire::native::schema::{self, Acks, ConfigSource, ErrorCode, OffsetSpec, RequestBody};

use crate::connection::{Connection, PendingResponse, ResponseFrame};
use crate::error::{ClientError, ClientResult};
use crate::gate::ArrivalGate;
use crate::tls::TlsClient;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMeta {
    pub partition: i32,
    /// -1 while the partition has no leader.
    pub leader: i32,
    pub shard: i32,
    /// The leader's; -1 when the broker asked is not the leader.
    pub log_start_offset: i64,
    pub high_watermark: i64,
    pub size_bytes: i64,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
}

/// A broker as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterBroker {
    pub node_id: i32,
    pub host: String,
    pub native_port: i32,
    pub kafka_port: i32,
    pub shards: i32,
    pub fenced: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDescription {
    pub cluster_id: String,
    /// -1 when the broker asked knows of none.
    pub controller: i32,
    pub brokers: Vec<ClusterBroker>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMeta {
    pub name: String,
    pub error: ErrorCode,
    pub internal: bool,
    pub partitions: Vec<PartitionMeta>,
    pub configs: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub brokers: Vec<(i32, String, i32)>,
    pub topics: Vec<TopicMeta>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceResult {
    pub topic: String,
    pub partition: i32,
    pub error: ErrorCode,
    pub error_message: String,
    pub base_offset: i64,
}

/// What a fetch asks for.
#[derive(Debug, Clone)]
pub struct FetchSpec {
    pub max_wait_ms: i32,
    pub min_bytes: i32,
    pub max_bytes: i32,
    /// (topic, partition, offset, max bytes)
    pub partitions: Vec<(String, i32, i64, i32)>,
    /// Read only below each partition's last stable offset, with the aborted
    /// transactions listed (Kafka's `isolation.level=read_committed`).
    pub read_committed: bool,
}

#[derive(Debug, Clone)]
pub struct FetchedPartition {
    pub topic: String,
    pub partition: i32,
    pub error: ErrorCode,
    pub error_message: String,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub last_stable_offset: i64,
    /// Whole record batches, as the broker stored them.
    pub records: Bytes,
    /// With `read_committed`: (producer id, first offset) of each aborted transaction
    /// with batches among `records`, to be skipped.
    pub aborted: Vec<(i64, i64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetQuery {
    Earliest,
    Latest,
    Timestamp(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    pub topic: String,
    pub partition: i32,
    /// -1 when nothing is committed.
    pub offset: i64,
    pub metadata: String,
}

/// One config of a topic as the broker describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfigEntry {
    pub key: String,
    pub value: String,
    /// Whether the topic overrides it, the broker's configuration sets it, or it is the
    /// built-in default.
    pub source: ConfigSource,
}

type Builder = flatbuffers::FlatBufferBuilder<'static>;
type TableVector<T> =
    flatbuffers::WIPOffset<flatbuffers::Vector<'static, flatbuffers::ForwardsUOffset<T>>>;

/// Shakes hands on `connection`; returns the broker's node id and whether it is still
/// starting (without its metadata).
async fn handshake(connection: &Connection, client_id: &str) -> ClientResult<(i32, bool)> {
    let frame = call_on(
        connection,
        RequestBody::HandshakeRequest,
        |b| {
            let client_id = b.create_string(client_id);
            let args = schema::HandshakeRequestArgs {
                client_id: Some(client_id),
                min_version: PROTOCOL_VERSION,
                max_version: PROTOCOL_VERSION,
            };
            schema::HandshakeRequest::create(b, &args).as_union_value()
        },
        vec![],
    )
    .await?;
    let response = frame.checked()?;
    let body = response
        .body_as_handshake_response()
        .ok_or_else(|| ClientError::Invalid("no handshake body".into()))?;
    Ok((body.node_id(), body.starting()))
}

pub(crate) async fn call_on(
    connection: &Connection,
    body_type: RequestBody,
    build: impl FnOnce(
        &mut flatbuffers::FlatBufferBuilder<'static>,
    ) -> flatbuffers::WIPOffset<flatbuffers::UnionWIPOffset>,
    payload: Vec<Bytes>,
) -> ClientResult<ResponseFrame> {
    connection
        .request(body_type, build, payload, true)
        .await?
        .ok_or_else(|| ClientError::ConnectionLost("no response".into()))
}

/// The topics of a commit request: (topic, partition, offset) each.
pub(crate) fn commit_topics(
    b: &mut Builder,
    offsets: &[(String, i32, i64)],
) -> TableVector<schema::CommitTopic<'static>> {
    let entries = offsets
        .iter()
        .map(|(topic, partition, offset)| {
            let args = schema::CommitPartitionArgs {
                partition: *partition,
                offset: *offset,
                metadata: None,
            };
            (topic.as_str(), schema::CommitPartition::create(b, &args))
        })
        .collect();
    per_topic(b, entries, |b, name, list| {
        let args = schema::CommitTopicArgs {
            name: Some(name),
            partitions: Some(list),
        };
        schema::CommitTopic::create(b, &args)
    })
}

/// One table per topic holding its partitions' tables, topics in first-seen order: the
/// shape of every per-partition request.
pub(crate) fn per_topic<P: 'static, T: 'static>(
    b: &mut Builder,
    entries: Vec<(&str, flatbuffers::WIPOffset<P>)>,
    topic: impl Fn(
        &mut Builder,
        flatbuffers::WIPOffset<&'static str>,
        TableVector<P>,
    ) -> flatbuffers::WIPOffset<T>,
) -> TableVector<T> {
    let mut grouped: Vec<(&str, Vec<flatbuffers::WIPOffset<P>>)> = Vec::new();
    for (name, entry) in entries {
        match grouped.iter_mut().find(|(t, _)| *t == name) {
            Some((_, partitions)) => partitions.push(entry),
            None => grouped.push((name, vec![entry])),
        }
    }
    let topics: Vec<_> = grouped
        .into_iter()
        .map(|(name, partitions)| {
            let name = b.create_string(name);
            let partitions = b.create_vector(&partitions);
            topic(b, name, partitions)
        })
        .collect();
    b.create_vector(&topics)
}

/// A client of a cluster: admin requests go to the broker it connected to first (brokers
/// forward them to the controller); produce, fetch and list-offsets requests go to each
/// partition's leader, and a group's offsets to its coordinator (the leader of the
/// group's offsets partition), found in the metadata and refreshed when a broker answers
/// that it no longer leads.
#[derive(Debug, Clone)]
pub struct Client {
    routes: Rc<Routes>,
}

/// What a client knows of the cluster: brokers, leaders, connections to them.
#[derive(Debug, Default)]
struct Routes {
    /// The addresses the client was given, to connect to again after losing them all.
    bootstrap_addresses: String,
    /// The connection made first (or made again): admin requests go there.
    bootstrap: RefCell<Option<Rc<Connection>>>,
    /// The broker `bootstrap` reaches.
    bootstrap_node: Cell<i32>,
    /// Whether that broker was starting when the client shook hands with it.
    bootstrap_starting: Cell<bool>,
    brokers: RefCell<BTreeMap<i32, String>>,
    connections: RefCell<BTreeMap<i32, Rc<Connection>>>,
    leaders: RefCell<HashMap<(String, i32), i32>>,
    /// Partitions of the internal topics whose leaders coordinate (groups and
    /// transactions), once learnt.
    internal_partitions: RefCell<HashMap<String, i32>>,
    /// Produce calls route and write in the order they were made.
    send_gate: Rc<ArrivalGate>,
    /// How every connection is secured.
    security: Security,
}

/// How a client's connections are secured: TLS (to a broker's TLS native listener) and
/// a SASL login after the handshake (to a SASL one); both for SASL_SSL.
#[derive(Debug, Clone, Default)]
pub struct Security {
    pub tls: Option<Arc<TlsClient>>,
    pub sasl: Option<SaslCredentials>,
}

/// A SASL login (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512), for a broker's SASL native
/// listener.
#[derive(Clone, Default)]
pub struct SaslCredentials {
    pub mechanism: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for SaslCredentials {
    /// Never the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslCredentials")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Logs in on `connection` with `credentials`: SaslHandshake, then SaslAuthenticate
/// until the broker says done. The mechanism's messages are rsasl's.
async fn authenticate(connection: &Connection, credentials: &SaslCredentials) -> ClientResult<()> {
    use rsasl::prelude::{Mechname, SASLClient, SASLConfig};
    let invalid = |e: &dyn std::fmt::Display| ClientError::Invalid(format!("SASL: {e}"));
    let mechanism = credentials.mechanism.clone();
    let frame = call_on(
        connection,
        RequestBody::SaslHandshakeRequest,
        |b| {
            let mechanism = b.create_string(&mechanism);
            let args = schema::SaslHandshakeRequestArgs {
                mechanism: Some(mechanism),
            };
            schema::SaslHandshakeRequest::create(b, &args).as_union_value()
        },
        vec![],
    )
    .await?;
    frame.checked()?;
    let config = SASLConfig::with_credentials(
        None,
        credentials.username.clone(),
        credentials.password.clone(),
    )
    .map_err(|e| invalid(&e))?;
    let name = Mechname::parse(credentials.mechanism.as_bytes()).map_err(|e| invalid(&e))?;
    let mut session = SASLClient::new(config)
        .start_suggested(&[name])
        .map_err(|e| invalid(&e))?;
    let mut out = Vec::new();
    let mut state = session.step(None, &mut out).map_err(|e| invalid(&e))?;
    loop {
        let message = std::mem::take(&mut out);
        let frame = call_on(
            connection,
            RequestBody::SaslAuthenticateRequest,
            |b| {
                let auth_bytes = b.create_vector(&message);
                let args = schema::SaslAuthenticateRequestArgs {
                    auth_bytes: Some(auth_bytes),
                };
                schema::SaslAuthenticateRequest::create(b, &args).as_union_value()
            },
            vec![],
        )
        .await?;
        let response = frame.checked()?;
        let body = response
            .body_as_sasl_authenticate_response()
            .ok_or_else(|| ClientError::Invalid("no SASL authenticate body".into()))?;
        let input = body
            .auth_bytes()
            .map(|b| b.bytes().to_vec())
            .unwrap_or_default();
        if body.done() {
            // SCRAM's last message proves the server knew the credential: check it.
            if state.is_running() {
                session
                    .step(Some(&input), &mut out)
                    .map_err(|e| invalid(&e))?;
            }
            return Ok(());
        }
        if !state.is_running() {
            return Err(ClientError::Invalid(
                "SASL: the broker wants more than the mechanism has".into(),
            ));
        }
        state = session
            .step(Some(&input), &mut out)
            .map_err(|e| invalid(&e))?;
    }
}

/// How long requests routed to leaders retry through a leader change.
const ROUTING_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

fn unrouted(topic: String, partition: i32, error: ErrorCode, message: &str) -> ProduceResult {
    ProduceResult {
        topic,
        partition,
        error,
        error_message: message.to_string(),
        base_offset: -1,
    }
}

fn unfetched(topic: &str, partition: i32, error: ErrorCode, message: &str) -> FetchedPartition {
    FetchedPartition {
        topic: topic.to_string(),
        partition,
        error,
        error_message: message.to_string(),
        high_watermark: -1,
        log_start_offset: -1,
        last_stable_offset: -1,
        records: Bytes::new(),
        aborted: Vec::new(),
    }
}

/// The committed-offsets topic, whose partition leaders coordinate groups.
pub(crate) const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// The transaction-state topic, whose partition leaders coordinate transactions.
pub(crate) const TXN_TOPIC: &str = "__transaction_state";

/// Whether an error means "ask someone else" (a leader change, a broker gone): the
/// client forgets what it knew of the partition's leader.
fn moved(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::NotLeader
            | ErrorCode::LeaderNotAvailable
            | ErrorCode::FencedLeaderEpoch
            | ErrorCode::UnknownLeaderEpoch
            | ErrorCode::ShuttingDown
    )
}

fn isolation(read_committed: bool) -> schema::Isolation {
    if read_committed {
        schema::Isolation::ReadCommitted
    } else {
        schema::Isolation::ReadUncommitted
    }
}

/// One item's result in a response of many.
fn item_result(error: ErrorCode, message: Option<&str>) -> ClientResult<()> {
    match error {
        ErrorCode::None => Ok(()),
        code => Err(ClientError::broker(code, message)),
    }
}

fn strings<'a>(
    builder: &mut flatbuffers::FlatBufferBuilder<'a>,
    values: &[String],
) -> flatbuffers::WIPOffset<flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<&'a str>>> {
    let offsets: Vec<_> = values.iter().map(|v| builder.create_string(v)).collect();
    builder.create_vector(&offsets)
}

/// Config entries of a request (the source is for answers; requests leave it unstated).
fn config_entries(
    builder: &mut Builder,
    configs: &[(String, String)],
) -> TableVector<schema::ConfigEntry<'static>> {
    let entries: Vec<_> = configs
        .iter()
        .map(|(key, value)| {
            let (key, value) = (builder.create_string(key), builder.create_string(value));
            let args = schema::ConfigEntryArgs {
                key: Some(key),
                value: Some(value),
                source: ConfigSource::Unknown,
            };
            schema::ConfigEntry::create(builder, &args)
        })
        .collect();
    builder.create_vector(&entries)
}

impl Client {
    /// Connects to the first reachable address of `brokers` (comma-separated HOST:PORT)
    /// and shakes hands.
    pub async fn connect(brokers: &str) -> ClientResult<Client> {
        Client::connect_with(brokers, Security::default()).await
    }

    /// `connect`, every connection secured as `security` says.
    pub async fn connect_with(brokers: &str, security: Security) -> ClientResult<Client> {
        let routes = Rc::new(Routes {
            bootstrap_addresses: brokers.to_string(),
            security,
            ..Routes::default()
        });
        let client = Client { routes };
        client.bootstrap().await?;
        Ok(client)
    }

    /// The bootstrap connection; connected again (to the first reachable address) if it
    /// broke, so that a client outlives a broker's restart. A broker that is still
    /// starting is taken only when no other answers, and looked past again at the next
    /// call.
    async fn bootstrap(&self) -> ClientResult<Rc<Connection>> {
        let current = self.routes.bootstrap.borrow().clone();
        if let Some(connection) = current.filter(|c| !c.is_broken())
            && !self.routes.bootstrap_starting.get()
        {
            return Ok(connection);
        }
        let brokers = &self.routes.bootstrap_addresses;
        let mut last_error = ClientError::Invalid(format!("no broker address in {brokers:?}"));
        let mut starting = None;
        for address in brokers.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            match self.open(address).await {
                Ok((connection, node, false)) => {
                    return Ok(self.use_bootstrap(connection, node, false));
                }
                Ok(started) => {
                    starting.get_or_insert(started);
                }
                Err(error) => last_error = error,
            }
        }
        match starting {
            Some((connection, node, _)) => Ok(self.use_bootstrap(connection, node, true)),
            None => Err(last_error),
        }
    }

    fn use_bootstrap(
        &self,
        connection: Rc<Connection>,
        node: i32,
        starting: bool,
    ) -> Rc<Connection> {
        self.routes.bootstrap_node.set(node);
        self.routes.bootstrap_starting.set(starting);
        *self.routes.bootstrap.borrow_mut() = Some(connection.clone());
        connection
    }

    async fn call(
        &self,
        body_type: RequestBody,
        build: impl FnOnce(
            &mut flatbuffers::FlatBufferBuilder<'static>,
        ) -> flatbuffers::WIPOffset<flatbuffers::UnionWIPOffset>,
        payload: Vec<Bytes>,
    ) -> ClientResult<ResponseFrame> {
        call_on(&*self.bootstrap().await?, body_type, build, payload).await
    }

    pub async fn metadata(&self, topics: Option<&[String]>) -> ClientResult<Metadata> {
        let frame = self
            .call(
                RequestBody::MetadataRequest,
                |b| {
                    let topics = topics.map(|t| strings(b, t));
                    schema::MetadataRequest::create(b, &schema::MetadataRequestArgs { topics })
                        .as_union_value()
                },
                vec![],
            )
            .await?;
        let response = frame.checked()?;
        let body = response
            .body_as_metadata_response()
            .ok_or_else(|| ClientError::Invalid("no metadata body".into()))?;
        let brokers = body
            .brokers()
            .into_iter()
            .flatten()
            .map(|b| {
                (
                    b.node_id(),
                    b.host().unwrap_or_default().to_string(),
                    b.native_port(),
                )
            })
            .collect();
        let topics = body
            .topics()
            .into_iter()
            .flatten()
            .map(|t| TopicMeta {
                name: t.name().to_string(),
                error: t.error(),
                internal: t.internal(),
                partitions: t
                    .partitions()
                    .into_iter()
                    .flatten()
                    .map(|p| PartitionMeta {
                        partition: p.partition(),
                        leader: p.leader(),
                        shard: p.shard(),
                        log_start_offset: p.log_start_offset(),
                        high_watermark: p.high_watermark(),
                        size_bytes: p.size_bytes(),
                        leader_epoch: p.leader_epoch(),
                        replicas: p.replicas().map(|r| r.iter().collect()).unwrap_or_default(),
                        isr: p.isr().map(|r| r.iter().collect()).unwrap_or_default(),
                    })
                    .collect(),
                configs: t
                    .configs()
                    .into_iter()
                    .flatten()
                    .map(|c| (c.key().to_string(), c.value().to_string()))
                    .collect(),
            })
            .collect();
        Ok(Metadata { brokers, topics })
    }

    /// The cluster's brokers and its active controller.
    pub async fn describe_cluster(&self) -> ClientResult<ClusterDescription> {
        let frame = self
            .call(
                RequestBody::DescribeClusterRequest,
                |b| {
                    schema::DescribeClusterRequest::create(
                        b,
                        &schema::DescribeClusterRequestArgs {},
                    )
                    .as_union_value()
                },
                vec![],
            )
            .await?;
        let response = frame.checked()?;
        let body = response
            .body_as_describe_cluster_response()
            .ok_or_else(|| ClientError::Invalid("no describe cluster body".into()))?;
        Ok(ClusterDescription {
            cluster_id: body.cluster_id().unwrap_or_default().to_string(),
            controller: body.controller(),
            brokers: body
                .brokers()
                .into_iter()
                .flatten()
                .map(|b| ClusterBroker {
                    node_id: b.node_id(),
                    host: b.host().unwrap_or_default().to_string(),
                    native_port: b.native_port(),
                    kafka_port: b.kafka_port(),
                    shards: b.shards(),
                    fenced: b.fenced(),
                })
                .collect(),
        })
    }

    /// Moves a partition onto `replicas` (the first is the preferred leader); returns once
    /// the move is recorded (the metadata shows it complete later).
    pub async fn move_partition(
        &self,
        topic: &str,
        partition: i32,
        replicas: &[i32],
    ) -> ClientResult<()> {
        let frame = self
            .call(
                RequestBody::MovePartitionRequest,
                |b| {
                    let topic = b.create_string(topic);
                    let replicas = b.create_vector(replicas);
                    let args = schema::MovePartitionRequestArgs {
                        topic: Some(topic),
                        partition,
                        replicas: Some(replicas),
                    };
                    schema::MovePartitionRequest::create(b, &args).as_union_value()
                },
                vec![],
            )
            .await?;
        frame.checked().map(|_| ())
    }

    /// The partition count of `topic`, or an error when it does not exist.
    pub async fn partition_count(&self, topic: &str) -> ClientResult<i32> {
        let metadata = self.metadata(Some(&[topic.to_string()])).await?;
        let topic_meta = metadata
            .topics
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::Invalid("empty metadata".into()))?;
        if topic_meta.error != ErrorCode::None {
            return Err(ClientError::broker(
                topic_meta.error,
                Some(&format!("topic {topic}")),
            ));
        }
        Ok(topic_meta.partitions.len() as i32)
    }

    /// Creates a topic with the broker's default replication factor.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: &[(String, String)],
    ) -> ClientResult<()> {
        self.create_replicated_topic(name, partitions, -1, configs)
            .await
    }

    /// Creates a topic with `replication_factor` replicas of each partition (-1: the
    /// broker's default).
    pub async fn create_replicated_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: &[(String, String)],
    ) -> ClientResult<()> {
        let frame = self
            .call(
                RequestBody::CreateTopicRequest,
                |b| {
                    let name = b.create_string(name);
                    let configs = config_entries(b, configs);
                    let args = schema::CreateTopicRequestArgs {
                        name: Some(name),
                        partitions,
                        configs: Some(configs),
                        replication_factor,
                    };
                    schema::CreateTopicRequest::create(b, &args).as_union_value()
                },
                vec![],
            )
            .await?;
        frame.checked().map(|_| ())
    }

    pub async fn delete_topic(&self, name: &str) -> ClientResult<()> {
        let frame = self
            .call(
                RequestBody::DeleteTopicRequest,
                |b| {
                    let name = b.create_string(name);
                    schema::DeleteTopicRequest::create(
                        b,
                        &schema::DeleteTopicRequestArgs { name: Some(name) },
                    )
                    .as_union_value()
                },
                vec![],
            )
            .await?;
        frame.checked().map(|_| ())
    }

    /// Every config of topic `name`, in key order, with its value and source.
    pub async fn describe_topic_configs(&self, name: &str) -> ClientResult<Vec<TopicConfigEntry>> {
        let frame = self
            .call(
                RequestBody::DescribeTopicConfigsRequest,
                |b| {
                    let name = b.create_string(name);
                    let args = schema::DescribeTopicConfigsRequestArgs { name: Some(name) };
                    schema::DescribeTopicConfigsRequest::create(b, &args).as_union_value()
                },
                vec![],
            )
            .await?;
        let response = frame.checked()?;
        let body = response
            .body_as_describe_topic_configs_response()
            .ok_or_else(|| ClientError::Invalid("no describe topic configs body".into()))?;
        Ok(body
            .configs()
            .into_iter()
            .flatten()
            .map(|c| TopicConfigEntry {
                key: c.key().to_string(),
                value: c.value().to_string(),
                source: c.source(),
            })
            .collect())
    }

    /// Sets and removes SCRAM credentials. Per user, all of its changes or none; the
    /// result of each user.
    pub async fn alter_scram_credentials(
        &self,
        upsertions: &[ScramUpsertion],
        deletions: &[(String, i8)],
    ) -> ClientResult<Vec<(String, ClientResult<()>)>> {
        let frame = self
            .call(
                RequestBody::AlterScramCredentialsRequest,
                |b| {
                    let upsertions: Vec<_> = upsertions
                        .iter()
                        .map(|u| {
                            let user = b.create_string(&u.user);
                            let salt = b.create_vector(&u.salt);
                            let salted_password = b.create_vector(&u.salted_password);
                            let args = schema::ScramUpsertionArgs {
                                user: Some(user),
                                mechanism: u.mechanism,
                                iterations: u.iterations,
                                salt: Some(salt),
                                salted_password: Some(salted_password),
                            };
                            schema::ScramUpsertion::create(b, &args)
                        })
                        .collect();
                    let upsertions = b.create_vector(&upsertions);
                    let deletions: Vec<_> = deletions
                        .iter()
                        .map(|(user, mechanism)| {
                            let user = b.create_string(user);
                            let args = schema::ScramDeletionArgs {
                                user: Some(user),
                                mechanism: *mechanism,
                            };
                            schema::ScramDeletion::create(b, &args)
                        })
                        .collect();
                    let deletions = b.create_vector(&deletions);
                    let args = schema::AlterScramCredentialsRequestArgs {
                        upsertions: Some(upsertions),
                        deletions: Some(deletions),
                    };
                    schema::AlterScramCredentialsRequest::create(b, &args).as_union_value()
                },
                vec![],
            )
            .await?;
        let response = frame.checked()?;
        let body = response
            .body_as_alter_scram_credentials_response()
            .ok_or_else(|| ClientError::Invalid("no alter scram credentials body".into()))?;
        Ok(body
            .results()
            .into_iter()
            .flatten()
            .map(|r| {
                let result = match r.error() {
                    ErrorCode::None => Ok(()),
                    code => Err(ClientError::broker(code, r.error_message())),
                };
                (r.user().to_string(), result)
            })
            .collect())
    }

    /// Each user's SCRAM mechanisms and iterations: of `users`, or of every user when it
    /// is empty.
    pub async fn describe_scram_credentials(
        &self,
        users: &[String],
    ) -> ClientResult<Vec<(String, ClientResult<Vec<(i8, i32)>>)>> {
        let frame = self
            .call(
                RequestBody::DescribeScramCredentialsRequest,
                |b| {
                    let users = strings(b, users);
                    let args = schema::DescribeScramCredentialsRequestArgs { users: Some(users) };
                    schema::DescribeScramCredentialsRequest::create(b, &args).as_union_value()
                },
                vec![],
            )
            .await?;
        let response = frame.checked()?;
        let body = response
            .body_as_describe_scram_credentials_response()
            .ok_or_else(|| ClientError::Invalid("no describe scram credentials body".into()))?;
        Ok(body
            .users()
            .into_iter()
            .flatten()
            .map(|u| {
                let result = match u.error() {
                    ErrorCode::None => Ok(u
                        .credentials()
                        .into_iter()
                        .flatten()
                        .map(|c| (c.mechanism(), c.iterations()))
                        .collect()),
                    code => Err(ClientError::broker(code, u.error_message())),
                };
                (u.user().to_string(), result)
            })
            .collect())
    }

    /// Adds ACLs (a super user's request, or one allowed ALTER on the cluster); each one's
    /// result, in order.
    pub async fn create_acls(&self, acls: &[Acl]) -> ClientResult<Vec<ClientResult<()>>> {
        let frame = self
            .call(
                RequestBody::CreateAclsRequest,
                |b| {
                    let acls: Vec<_> = acls.iter().map(|a| acl_binding(b, a)).collect();
                    let acls = b.create_vector(&acls);
                    let args = schema::CreateAclsRequestArgs { acls: Some(acls) };
                    schema::CreateAclsRequest::create(b, &args).as_union_value()
                },
                vec![],
            )
            .await?;
        let response = frame.checked()?;
        let body = response
            .body_as_create_acls_response()
            .ok_or_else(|| ClientError::Invalid("no create acls body".into()))?;
        Ok(body
            .results()
            .into_iter()
            .flatten()
            .map(|r| item_result(r.error(), r.error_message()))
            .collect())
    }

    /// The ACLs `filter` selects.
    pub async fn describe_acls(&self, filter: &AclFilter) -> ClientResult<Vec<Acl>> {
        let frame = self
            .call(
                RequestBody::DescribeAclsRequest,
                |b| {
                    let filter = acl_filter(b, filter);
                    let args = schema::DescribeAclsRequestArgs {
                        filter: Some(filter),
                    };
                    schema::DescribeAclsRequest::create(b, &args).as_union_value()
                },
                vec![],
            )
            .await?;
        let response = frame.checked()?;
        let body = response
            .body_as_describe_acls_response()
            .ok_or_else(|| ClientError::Invalid("no describe acls body".into()))?;
        Ok(body
            .acls()
            .into_iter()
            .flatten()
            .map(|a| acl_of(&a))
            .collect())
    }

    /// Removes every ACL each filter selects; per filter, the ACLs it removed.
    pub async fn delete_acls(
        &self,
        filters: &[AclFilter],
    ) -> ClientResult<Vec<ClientResult<Vec<Acl>>>> {
        let frame = self
            .call(
                RequestBody::DeleteAclsRequest,
                |b| {
                    let filters: Vec<_> = filters.iter().map(|f| acl_filter(b, f)).collect();
                    let filters = b.create_vector(&filters);
                    let args = schema::DeleteAclsRequestArgs {
                        filters: Some(filters),
                    };
                    schema::DeleteAclsRequest::create(b, &args).as_union_value()
                },
                vec![],
            )
            .await?;
        let response = frame.checked()?;
        let body = response
            .body_as_delete_acls_response()
            .ok_or_else(|| ClientError::Invalid("no delete acls body".into()))?;
        Ok(body
            .results()
            .into_iter()
            .flatten()
            .map(|r| match r.error() {
                ErrorCode::None => Ok(r.acls().into_iter().flatten().map(|a| acl_of(&a)).collect()),
                code => Err(ClientError::broker(code, r.error_message())),
            })
            .collect())
    }

    /// Sets and removes client quotas; per entity all of its changes or none, and each
    /// entity's result in order.
    pub async fn alter_client_quotas(
        &self,
        alterations: &[QuotaAlteration],
    ) -> ClientResult<Vec<ClientResult<()>>> {
        let frame = self
            .call(
                RequestBody::AlterClientQuotasRequest,
                |b| {
                    let entries: Vec<_> = alterations
                        .iter()
                        .map(|a| {
                            let entity = quota_entity(b, &a.entity);
                            let set: Vec<_> = a
                                .set
                                .iter()
                                .map(|(key, value)| {
                                    let args = schema::QuotaValueArgs {
                                        key: Some(b.create_string(key)),
                                        value: *value,
                                    };
                                    schema::QuotaValue::create(b, &args)
                                })
                                .collect();
                            let set = b.create_vector(&set);
                            let remove = strings(b, &a.remove);
                            let args = schema::QuotaAlterationArgs {
                                entity: Some(entity),
                                set: Some(set),
                                remove: Some(remove),
                            };
                            schema::QuotaAlteration::create(b, &args)
                        })
                        .collect();
                    let entries = b.create_vector(&entries);
                    let args = schema::AlterClientQuotasRequestArgs {
                        entries: Some(entries),
                        validate_only: false,
                    };
                    schema::AlterClientQuotasRequest::create(b, &args).as_union_value()
                },
                vec![],
            )
            .await?;
        let response = frame.checked()?;
        let body = response
            .body_as_alter_client_quotas_response()
            .ok_or_else(|| ClientError::Invalid("no alter client quotas body".into()))?;
        Ok(body
            .results()
            .into_iter()
            .flatten()
            .map(|r| item_result(r.error(), r.error_message()))
            .collect())
    }

    /// The quotas of entities naming `user` and (or) `client_id`; neither: every one.
    pub async fn describe_client_quotas(
        &self,
        user: Option<&str>,
        client_id: Option<&str>,
    ) -> ClientResult<Vec<(QuotaTarget, Vec<(String, f64)>)>> {
        let frame = self
            .call(
                RequestBody::DescribeClientQuotasRequest,
                |b| {
                    let args = schema::DescribeClientQuotasRequestArgs {
                        user: user.map(|u| b.create_string(u)),
                        client_id: client_id.map(|c| b.create_string(c)),
                    };
                    schema::DescribeClientQuotasRequest::create(b, &args).as_union_value()
                },
                vec![],
            )
            .await?;
        let response = frame.checked()?;
        let body = response
            .body_as_describe_client_quotas_response()
            .ok_or_else(|| ClientError::Invalid("no describe client quotas body".into()))?;
        Ok(body
            .entries()
            .into_iter()
            .flatten()
            .map(|entry| {
                let e = entry.entity();
                let target = QuotaTarget {
                    user: e.user().map(str::to_string),
                    user_default: e.user_default(),
                    client_id: e.client_id().map(str::to_string),
                    client_id_default: e.client_id_default(),
                };
                let values = entry
                    .values()
                    .into_iter()
                    .flatten()
                    .map(|v| (v.key().to_string(), v.value()))
                    .collect();
                (target, values)
            })
            .collect())
    }

    /// Overrides the keys of `set` and removes the overrides of the keys in `delete` (the
    /// broker's defaults apply again); the other overrides stay. All or nothing.
    pub async fn alter_topic_configs(
        &self,
        name: &str,
        set: &[(String, String)],
        delete: &[String],
    ) -> ClientResult<()> {
        self.change_topic_configs(name, set, delete, false).await
    }

    /// Checks what `alter_topic_configs` would do, and changes nothing.
    pub async fn validate_topic_configs(
        &self,
        name: &str,
        set: &[(String, String)],
        delete: &[String],
    ) -> ClientResult<()> {
        self.change_topic_configs(name, set, delete, true).await
    }

    async fn change_topic_configs(
        &self,
        name: &str,
        set: &[(String, String)],
        delete: &[String],
        validate_only: bool,
    ) -> ClientResult<()> {
        let frame = self
            .call(
                RequestBody::AlterTopicConfigsRequest,
                |b| {
                    let name = b.create_string(name);
                    let set = config_entries(b, set);
                    let delete = strings(b, delete);
                    let args = schema::AlterTopicConfigsRequestArgs {
                        name: Some(name),
                        set: Some(set),
                        delete: Some(delete),
                        validate_only,
                    };
                    schema::AlterTopicConfigsRequest::create(b, &args).as_union_value()
                },
                vec![],
            )
            .await?;
        frame.checked().map(|_| ())
    }

    /// Writes a produce request for `records` on `connection`.
    async fn send_produce(
        connection: &Connection,
        acks: Acks,
        timeout_ms: i32,
        records: &[(String, i32, Bytes)],
        transactional_id: Option<&str>,
    ) -> ClientResult<PendingResponse> {
        let mut offset = 0u32;
        let mut slices = Vec::with_capacity(records.len());
        for (_, _, bytes) in records {
            slices.push(schema::PayloadSlice::new(offset, bytes.len() as u32));
            offset += bytes.len() as u32;
        }
        let build = |b: &mut flatbuffers::FlatBufferBuilder<'static>| {
            let entries = records
                .iter()
                .zip(&slices)
                .map(|((topic, partition, _), slice)| {
                    let args = schema::ProducePartitionArgs {
                        partition: *partition,
                        records: Some(slice),
                    };
                    (topic.as_str(), schema::ProducePartition::create(b, &args))
                })
                .collect();
            let topics = per_topic(b, entries, |b, name, partitions| {
                let args = schema::ProduceTopicArgs {
                    name: Some(name),
                    partitions: Some(partitions),
                };
                schema::ProduceTopic::create(b, &args)
            });
            let transactional_id = transactional_id.map(|id| b.create_string(id));
            schema::ProduceRequest::create(
                b,
                &schema::ProduceRequestArgs {
                    acks,
                    timeout_ms,
                    topics: Some(topics),
                    transactional_id,
                },
            )
            .as_union_value()
        };
        let payload: Vec<Bytes> = records.iter().map(|(_, _, bytes)| bytes.clone()).collect();
        connection
            .send(
                RequestBody::ProduceRequest,
                build,
                payload,
                acks != Acks::None,
            )
            .await
    }

    /// The per-partition results of a produce response (none without one: acks none).
    fn produce_results(frame: Option<ResponseFrame>) -> ClientResult<Vec<ProduceResult>> {
        let Some(frame) = frame else {
            return Ok(Vec::new());
        };
        let response = frame.checked()?;
        let body = response
            .body_as_produce_response()
            .ok_or_else(|| ClientError::Invalid("no produce body".into()))?;
        Ok(body
            .topics()
            .into_iter()
            .flatten()
            .flat_map(|t| {
                t.partitions()
                    .into_iter()
                    .flatten()
                    .map(move |p| ProduceResult {
                        topic: t.name().to_string(),
                        partition: p.partition(),
                        error: p.error(),
                        error_message: p.error_message().unwrap_or_default().to_string(),
                        base_offset: p.base_offset(),
                    })
            })
            .collect())
    }

    /// Writes a fetch request for `spec` on `connection`.
    async fn send_fetch(
        connection: &Connection,
        spec: &FetchSpec,
    ) -> ClientResult<PendingResponse> {
        let build = |b: &mut flatbuffers::FlatBufferBuilder<'static>| {
            let entries = spec
                .partitions
                .iter()
                .map(|(topic, partition, offset, max_bytes)| {
                    let args = schema::FetchPartitionArgs {
                        partition: *partition,
                        offset: *offset,
                        max_bytes: *max_bytes,
                    };
                    (topic.as_str(), schema::FetchPartition::create(b, &args))
                })
                .collect();
            let topics = per_topic(b, entries, |b, name, partitions| {
                let args = schema::FetchTopicArgs {
                    name: Some(name),
                    partitions: Some(partitions),
                };
                schema::FetchTopic::create(b, &args)
            });
            let args = schema::FetchRequestArgs {
                max_wait_ms: spec.max_wait_ms,
                min_bytes: spec.min_bytes,
                max_bytes: spec.max_bytes,
                topics: Some(topics),
                isolation: isolation(spec.read_committed),
            };
            schema::FetchRequest::create(b, &args).as_union_value()
        };
        connection
            .send(RequestBody::FetchRequest, build, vec![], true)
            .await
    }

    /// The partitions of a fetch response.
    fn fetch_results(frame: Option<ResponseFrame>) -> ClientResult<Vec<FetchedPartition>> {
        let frame = frame.ok_or_else(|| ClientError::ConnectionLost("no response".into()))?;
        let response = frame.checked()?;
        let body = response
            .body_as_fetch_response()
            .ok_or_else(|| ClientError::Invalid("no fetch body".into()))?;
        let mut fetched = Vec::new();
        for topic in body.topics().into_iter().flatten() {
            for p in topic.partitions().into_iter().flatten() {
                fetched.push(FetchedPartition {
                    topic: topic.name().to_string(),
                    partition: p.partition(),
                    error: p.error(),
                    error_message: p.error_message().unwrap_or_default().to_string(),
                    high_watermark: p.high_watermark(),
                    log_start_offset: p.log_start_offset(),
                    last_stable_offset: p.last_stable_offset(),
                    records: frame.slice(p.records())?,
                    aborted: p
                        .aborted()
                        .into_iter()
                        .flatten()
                        .map(|a| (a.producer_id(), a.first_offset()))
                        .collect(),
                });
            }
        }
        Ok(fetched)
    }

    /// Offsets of `partitions` by `query`: `(topic, partition, offset, timestamp)`, offset
    /// -1 when no record is at or after a queried timestamp.
    async fn list_offsets_on(
        connection: &Connection,
        partitions: &[(String, i32)],
        query: OffsetQuery,
        read_committed: bool,
    ) -> ClientResult<Vec<(String, i32, i64, i64)>> {
        let (spec, timestamp) = match query {
            OffsetQuery::Earliest => (OffsetSpec::Earliest, -1),
            OffsetQuery::Latest => (OffsetSpec::Latest, -1),
            OffsetQuery::Timestamp(ts) => (OffsetSpec::Timestamp, ts),
        };
        let build = |b: &mut flatbuffers::FlatBufferBuilder<'static>| {
            let entries = partitions
                .iter()
                .map(|(topic, partition)| {
                    let args = schema::ListOffsetsPartitionArgs {
                        partition: *partition,
                        spec,
                        timestamp,
                    };
                    (
                        topic.as_str(),
                        schema::ListOffsetsPartition::create(b, &args),
                    )
                })
                .collect();
            let topics = per_topic(b, entries, |b, name, list| {
                let args = schema::ListOffsetsTopicArgs {
                    name: Some(name),
                    partitions: Some(list),
                };
                schema::ListOffsetsTopic::create(b, &args)
            });
            schema::ListOffsetsRequest::create(
                b,
                &schema::ListOffsetsRequestArgs {
                    topics: Some(topics),
                    isolation: isolation(read_committed),
                },
            )
            .as_union_value()
        };
        let frame = call_on(connection, RequestBody::ListOffsetsRequest, build, vec![]).await?;
        let response = frame.checked()?;
        let body = response
            .body_as_list_offsets_response()
            .ok_or_else(|| ClientError::Invalid("no list offsets body".into()))?;
        let mut results = Vec::new();
        for topic in body.topics().into_iter().flatten() {
            for p in topic.partitions().into_iter().flatten() {
                if p.error() != ErrorCode::None {
                    return Err(ClientError::broker(p.error(), p.error_message()));
                }
                results.push((
                    topic.name().to_string(),
                    p.partition(),
                    p.offset(),
                    p.timestamp(),
                ));
            }
        }
        Ok(results)
    }

    async fn commit_offsets_on(
        connection: &Connection,
        group: &str,
        offsets: &[(String, i32, i64)],
    ) -> ClientResult<()> {
        let build = |b: &mut flatbuffers::FlatBufferBuilder<'static>| {
            let topics = commit_topics(b, offsets);
            let group = b.create_string(group);
            schema::CommitOffsetsRequest::create(
                b,
                &schema::CommitOffsetsRequestArgs {
                    group: Some(group),
                    topics: Some(topics),
                },
            )
            .as_union_value()
        };
        let frame = call_on(connection, RequestBody::CommitOffsetsRequest, build, vec![]).await?;
        let response = frame.checked()?;
        let body = response
            .body_as_commit_offsets_response()
            .ok_or_else(|| ClientError::Invalid("no commit body".into()))?;
        for topic in body.topics().into_iter().flatten() {
            for p in topic.partitions().into_iter().flatten() {
                if p.error() != ErrorCode::None {
                    let message = format!("committing {}-{}", topic.name(), p.partition());
                    return Err(ClientError::broker(p.error(), Some(&message)));
                }
            }
        }
        Ok(())
    }

    /// Committed offsets of `group`, for `topics` (every committed one when `None`).
    async fn fetch_offsets_on(
        connection: &Connection,
        group: &str,
        topics: Option<&[String]>,
        require_stable: bool,
    ) -> ClientResult<Vec<CommittedOffset>> {
        let build = |b: &mut flatbuffers::FlatBufferBuilder<'static>| {
            let topics = topics.map(|names| {
                let entries: Vec<_> = names
                    .iter()
                    .map(|name| {
                        let name = b.create_string(name);
                        schema::FetchOffsetsTopic::create(
                            b,
                            &schema::FetchOffsetsTopicArgs {
                                name: Some(name),
                                partitions: None,
                            },
                        )
                    })
                    .collect();
                b.create_vector(&entries)
            });
            let group = b.create_string(group);
            schema::FetchOffsetsRequest::create(
                b,
                &schema::FetchOffsetsRequestArgs {
                    group: Some(group),
                    topics,
                    require_stable,
                },
            )
            .as_union_value()
        };
        let frame = call_on(connection, RequestBody::FetchOffsetsRequest, build, vec![]).await?;
        let response = frame.checked()?;
        let body = response
            .body_as_fetch_offsets_response()
            .ok_or_else(|| ClientError::Invalid("no fetch offsets body".into()))?;
        let partitions = body
            .topics()
            .into_iter()
            .flatten()
            .flat_map(|t| t.partitions().into_iter().flatten());
        for p in partitions {
            if p.error() != ErrorCode::None {
                return Err(ClientError::broker(p.error(), Some("fetching offsets")));
            }
        }
        Ok(body
            .topics()
            .into_iter()
            .flatten()
            .flat_map(|t| {
                t.partitions()
                    .into_iter()
                    .flatten()
                    .map(move |p| CommittedOffset {
                        topic: t.name().to_string(),
                        partition: p.partition(),
                        offset: p.offset(),
                        metadata: p.metadata().unwrap_or_default().to_string(),
                    })
            })
            .collect())
    }

    // ---- routing to leaders ----

    /// The connection to broker `node` (made and shaken hands with on first use; the
    /// bootstrap connection for the broker it reaches, or when the address is unknown).
    async fn connection_to(&self, node: i32) -> ClientResult<Rc<Connection>> {
        if node == self.routes.bootstrap_node.get() {
            return self.bootstrap().await;
        }
        let existing = self.routes.connections.borrow().get(&node).cloned();
        if let Some(connection) = existing.filter(|c| !c.is_broken()) {
            return Ok(connection);
        }
        let address = self.routes.brokers.borrow().get(&node).cloned();
        let Some(address) = address else {
            return self.bootstrap().await;
        };
        let (connection, _, _) = self.open(&address).await?;
        self.routes
            .connections
            .borrow_mut()
            .insert(node, connection.clone());
        Ok(connection)
    }

    /// A new connection to `address`, secured as the client is (TLS, then a SASL login
    /// after the handshake): it, and the node id and starting flag of its handshake.
    async fn open(&self, address: &str) -> ClientResult<(Rc<Connection>, i32, bool)> {
        let security = &self.routes.security;
        let connection = Connection::open(address, security.tls.as_deref()).await?;
        let (node, starting) = handshake(&connection, "weir-client").await?;
        if let Some(credentials) = &security.sasl {
            authenticate(&connection, credentials).await?;
        }
        Ok((connection, node, starting))
    }

    /// Learns brokers and leaders from `metadata`.
    fn learn(&self, metadata: &Metadata) {
        let mut brokers = self.routes.brokers.borrow_mut();
        for (node, host, port) in &metadata.brokers {
            brokers.insert(*node, format!("{host}:{port}"));
        }
        let mut leaders = self.routes.leaders.borrow_mut();
        for topic in &metadata.topics {
            if topic.name == OFFSETS_TOPIC || topic.name == TXN_TOPIC {
                self.routes
                    .internal_partitions
                    .borrow_mut()
                    .insert(topic.name.clone(), topic.partitions.len() as i32);
            }
            for p in &topic.partitions {
                if p.leader >= 0 {
                    leaders.insert((topic.name.clone(), p.partition), p.leader);
                } else {
                    leaders.remove(&(topic.name.clone(), p.partition));
                }
            }
        }
    }

    /// Forgets what it knew of partitions whose broker answered that it does not lead.
    fn forget(&self, partitions: impl IntoIterator<Item = (String, i32)>) {
        let mut leaders = self.routes.leaders.borrow_mut();
        for partition in partitions {
            leaders.remove(&partition);
        }
    }

    /// The leader of each partition (refreshing the metadata for those not known);
    /// `None` for a partition without a leader at the moment.
    async fn leaders(&self, partitions: &[(String, i32)]) -> Vec<Option<i32>> {
        let known = |p: &(String, i32)| self.routes.leaders.borrow().get(p).copied();
        if partitions.iter().any(|p| known(p).is_none()) {
            let mut topics: Vec<String> = partitions.iter().map(|(t, _)| t.clone()).collect();
            topics.sort();
            topics.dedup();
            if let Ok(metadata) = self.metadata(Some(&topics)).await {
                self.learn(&metadata);
            }
        }
        partitions.iter().map(known).collect()
    }

    /// Groups partitions (by index into `partitions`) by their leader.
    async fn by_leader(&self, partitions: &[(String, i32)]) -> Vec<(Option<i32>, Vec<usize>)> {
        let mut groups: Vec<(Option<i32>, Vec<usize>)> = Vec::new();
        for (index, leader) in self.leaders(partitions).await.into_iter().enumerate() {
            match groups.iter_mut().find(|(l, _)| *l == leader) {
                Some((_, indexes)) => indexes.push(index),
                None => groups.push((leader, vec![index])),
            }
        }
        groups
    }

    /// Sends record batches (each `Bytes` one or more whole batches) for partitions, each
    /// to its leader. With `Acks::None` nothing comes back and the result is empty. A
    /// partition whose leader is unknown or unreachable gets a `NotLeader` or
    /// `LeaderNotAvailable` result, which producers retry.
    pub async fn produce(
        &self,
        acks: Acks,
        timeout_ms: i32,
        records: Vec<(String, i32, Bytes)>,
    ) -> ClientResult<Vec<ProduceResult>> {
        self.produce_as(acks, timeout_ms, records, None).await
    }

    /// `produce` for a transactional producer, which names its transactional id (with the
    /// broker's authorizer on, its transactional batches need WRITE on it).
    pub async fn produce_as(
        &self,
        acks: Acks,
        timeout_ms: i32,
        records: Vec<(String, i32, Bytes)>,
        transactional_id: Option<&str>,
    ) -> ClientResult<Vec<ProduceResult>> {
        // Routing (which may await metadata or a new connection) and writing happen in
        // the order of the calls: a producer's batches for a partition must reach its
        // leader in the order they were made.
        let turn = self.routes.send_gate.take_ticket();
        turn.wait_turn().await;
        let partitions: Vec<(String, i32)> =
            records.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
        let groups = self.by_leader(&partitions).await;
        let mut results = Vec::new();
        let mut sent = Vec::with_capacity(groups.len());
        for (leader, indexes) in &groups {
            let subset: Vec<(String, i32, Bytes)> =
                indexes.iter().map(|i| records[*i].clone()).collect();
            match leader {
                None => results.extend(subset.into_iter().map(|(t, p, _)| {
                    unrouted(
                        t,
                        p,
                        ErrorCode::LeaderNotAvailable,
                        "no leader at the moment",
                    )
                })),
                Some(node) => {
                    let pending = match self.connection_to(*node).await {
                        Ok(connection) => {
                            let id = transactional_id;
                            Self::send_produce(&connection, acks, timeout_ms, &subset, id).await
                        }
                        Err(error) => Err(error),
                    };
                    sent.push((subset, pending));
                }
            }
        }
        drop(turn);
        for (subset, pending) in sent {
            let answered = match pending {
                Ok(pending) => pending.wait().await.and_then(Self::produce_results),
                Err(error) => Err(error),
            };
            match answered {
                Ok(answered) => results.extend(answered),
                Err(error) => results.extend(
                    subset
                        .into_iter()
                        .map(|(t, p, _)| unrouted(t, p, ErrorCode::NotLeader, &error.to_string())),
                ),
            }
        }
        self.forget(
            results
                .iter()
                .filter(|r| moved(r.error))
                .map(|r| (r.topic.clone(), r.partition)),
        );
        if acks == Acks::None {
            // Nothing is answered with acks none, failures included.
            return Ok(Vec::new());
        }
        Ok(results)
    }

    /// Fetches each partition from its leader. A partition whose leader is unknown or
    /// unreachable comes back with a `NotLeader` or `LeaderNotAvailable` error and no
    /// records.
    pub async fn fetch(&self, spec: &FetchSpec) -> ClientResult<Vec<FetchedPartition>> {
        let partitions: Vec<(String, i32)> = spec
            .partitions
            .iter()
            .map(|(t, p, _, _)| (t.clone(), *p))
            .collect();
        let groups = self.by_leader(&partitions).await;
        let mut results = Vec::new();
        // Every leader's fetch is written before any answer is awaited: long polls wait
        // side by side.
        let mut sent = Vec::with_capacity(groups.len());
        for (leader, indexes) in &groups {
            let subset = FetchSpec {
                partitions: indexes
                    .iter()
                    .map(|i| spec.partitions[*i].clone())
                    .collect(),
                ..spec.clone()
            };
            match leader {
                None => results.extend(subset.partitions.iter().map(|(t, p, _, _)| {
                    unfetched(
                        t,
                        *p,
                        ErrorCode::LeaderNotAvailable,
                        "no leader at the moment",
                    )
                })),
                Some(node) => {
                    let pending = match self.connection_to(*node).await {
                        Ok(connection) => Self::send_fetch(&connection, &subset).await,
                        Err(error) => Err(error),
                    };
                    sent.push((subset, pending));
                }
            }
        }
        for (subset, pending) in sent {
            let fetched = match pending {
                Ok(pending) => pending.wait().await.and_then(Self::fetch_results),
                Err(error) => Err(error),
            };
            match fetched {
                Ok(fetched) => results.extend(fetched),
                Err(error) if error.is_retriable() => {
                    results.extend(subset.partitions.iter().map(|(t, p, _, _)| {
                        unfetched(t, *p, ErrorCode::NotLeader, &error.to_string())
                    }))
                }
                Err(error) => return Err(error),
            }
        }
        self.forget(
            results
                .iter()
                .filter(|r| moved(r.error))
                .map(|r| (r.topic.clone(), r.partition)),
        );
        Ok(results)
    }

    /// Offsets of `partitions` by `query`, each from its leader: `(topic, partition,
    /// offset, timestamp)`, offset -1 when no record is at or after a queried timestamp.
    /// Retries through leader changes for a few seconds.
    pub async fn list_offsets(
        &self,
        partitions: &[(String, i32)],
        query: OffsetQuery,
    ) -> ClientResult<Vec<(String, i32, i64, i64)>> {
        self.list_offsets_isolated(partitions, query, false).await
    }

    /// `list_offsets` as a read_committed reader sees them: `Latest` is each partition's
    /// last stable offset.
    pub async fn list_stable_offsets(
        &self,
        partitions: &[(String, i32)],
        query: OffsetQuery,
    ) -> ClientResult<Vec<(String, i32, i64, i64)>> {
        self.list_offsets_isolated(partitions, query, true).await
    }

    pub(crate) async fn list_offsets_isolated(
        &self,
        partitions: &[(String, i32)],
        query: OffsetQuery,
        read_committed: bool,
    ) -> ClientResult<Vec<(String, i32, i64, i64)>> {
        let deadline = std::time::Instant::now() + ROUTING_RETRY;
        loop {
            let mut results = Vec::new();
            let mut retry = None;
            for (leader, indexes) in self.by_leader(partitions).await {
                let subset: Vec<(String, i32)> =
                    indexes.iter().map(|i| partitions[*i].clone()).collect();
                let answer = match leader {
                    None => Err(ClientError::broker(ErrorCode::LeaderNotAvailable, None)),
                    Some(node) => match self.connection_to(node).await {
                        Ok(connection) => {
                            Self::list_offsets_on(&connection, &subset, query, read_committed).await
                        }
                        Err(error) => Err(error),
                    },
                };
                match answer {
                    Ok(found) => results.extend(found),
                    Err(error) => {
                        self.forget(subset);
                        retry = Some(error);
                    }
                }
            }
            match retry {
                None => return Ok(results),
                Some(error) if error.is_retriable() && std::time::Instant::now() < deadline => {
                    glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
                }
                Some(error) => return Err(error),
            }
        }
    }

    /// The connection to the coordinator of `key` (a group in the offsets topic, a
    /// transactional id in the transaction-state topic): the leader of its partition.
    async fn coordinator(&self, topic: &str, key: &str) -> ClientResult<Rc<Connection>> {
        let known = || self.routes.internal_partitions.borrow().get(topic).copied();
        if known().is_none() {
            let metadata = self.metadata(Some(&[topic.to_string()])).await?;
            self.learn(&metadata);
        }
        let partitions = known().unwrap_or(1).max(1);
        let partition = (crc32c::crc32c(key.as_bytes()) % partitions as u32) as i32;
        match self.leaders(&[(topic.to_string(), partition)]).await[0] {
            Some(node) => self.connection_to(node).await,
            None => Err(ClientError::broker(
                ErrorCode::LeaderNotAvailable,
                Some("no coordinator at the moment"),
            )),
        }
    }

    /// Runs `call` against `group`'s coordinator, finding it again after a move.
    pub(crate) async fn with_coordinator<T, F>(
        &self,
        group: &str,
        call: impl Fn(Rc<Connection>) -> F,
    ) -> ClientResult<T>
    where
        F: std::future::Future<Output = ClientResult<T>>,
    {
        self.with_coordinator_of(OFFSETS_TOPIC, group, call).await
    }

    /// Runs `call` against the coordinator of `key` in `topic`, finding it again after a
    /// move and retrying what is retriable for a few seconds.
    pub(crate) async fn with_coordinator_of<T, F>(
        &self,
        topic: &str,
        key: &str,
        call: impl Fn(Rc<Connection>) -> F,
    ) -> ClientResult<T>
    where
        F: std::future::Future<Output = ClientResult<T>>,
    {
        let forget = || {
            self.routes.internal_partitions.borrow_mut().remove(topic);
            self.routes
                .leaders
                .borrow_mut()
                .retain(|(t, _), _| t != topic);
        };
        self.with_retries(|| self.coordinator(topic, key), call, forget)
            .await
    }

    /// Runs `call` on the bootstrap connection, connected again when lost, retrying
    /// what is retriable for a few seconds.
    pub(crate) async fn with_any_broker<T, F>(
        &self,
        call: impl Fn(Rc<Connection>) -> F,
    ) -> ClientResult<T>
    where
        F: std::future::Future<Output = ClientResult<T>>,
    {
        self.with_retries(|| self.bootstrap(), call, || {}).await
    }

    /// Runs `call` on the connection `route` finds, again while it fails retriably and
    /// `ROUTING_RETRY` lasts; `forget` drops what routed it after an error that says
    /// the request went to the wrong broker.
    async fn with_retries<T, F, R>(
        &self,
        route: impl Fn() -> R,
        call: impl Fn(Rc<Connection>) -> F,
        forget: impl Fn(),
    ) -> ClientResult<T>
    where
        R: std::future::Future<Output = ClientResult<Rc<Connection>>>,
        F: std::future::Future<Output = ClientResult<T>>,
    {
        let deadline = std::time::Instant::now() + ROUTING_RETRY;
        loop {
            let result = match route().await {
                Ok(connection) => call(connection).await,
                Err(error) => Err(error),
            };
            match result {
                Err(error) if error.is_retriable() && std::time::Instant::now() < deadline => {
                    if error.is_moved() {
                        forget();
                    }
                    glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    pub async fn commit_offsets(
        &self,
        group: &str,
        offsets: &[(String, i32, i64)],
    ) -> ClientResult<()> {
        self.with_coordinator(group, |connection| async move {
            Self::commit_offsets_on(&connection, group, offsets).await
        })
        .await
    }

    /// Committed offsets of `group`, for `topics` (every committed one when `None`).
    pub async fn fetch_offsets(
        &self,
        group: &str,
        topics: Option<&[String]>,
    ) -> ClientResult<Vec<CommittedOffset>> {
        self.with_coordinator(group, |connection| async move {
            Self::fetch_offsets_on(&connection, group, topics, false).await
        })
        .await
    }

    /// `fetch_offsets`, waiting (while `ROUTING_RETRY` lasts) until no open transaction
    /// may still change them (KIP-447): what a transactional consumer starts from.
    pub async fn fetch_stable_offsets(
        &self,
        group: &str,
        topics: Option<&[String]>,
    ) -> ClientResult<Vec<CommittedOffset>> {
        self.with_coordinator(group, |connection| async move {
            Self::fetch_offsets_on(&connection, group, topics, true).await
        })
        .await
    }

    pub async fn list_groups(&self) -> ClientResult<Vec<String>> {
        let frame = self
            .call(
                RequestBody::ListGroupsRequest,
                |b| {
                    schema::ListGroupsRequest::create(b, &schema::ListGroupsRequestArgs {})
                        .as_union_value()
                },
                vec![],
            )
            .await?;
        let response = frame.checked()?;
        let body = response
            .body_as_list_groups_response()
            .ok_or_else(|| ClientError::Invalid("no list groups body".into()))?;
        Ok(body
            .groups()
            .into_iter()
            .flatten()
            .map(str::to_string)
            .collect())
    }
}

/// Whom a client quota applies to: a user, a client id or both, each a name or the
/// default (`*_default`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuotaTarget {
    pub user: Option<String>,
    pub user_default: bool,
    pub client_id: Option<String>,
    pub client_id_default: bool,
}

/// Quotas to set (key, value) and keys whose quota goes, for one entity.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuotaAlteration {
    pub entity: QuotaTarget,
    pub set: Vec<(String, f64)>,
    pub remove: Vec<String>,
}

fn quota_entity<'a>(
    b: &mut flatbuffers::FlatBufferBuilder<'a>,
    target: &QuotaTarget,
) -> flatbuffers::WIPOffset<schema::QuotaEntity<'a>> {
    let args = schema::QuotaEntityArgs {
        user: target.user.as_deref().map(|u| b.create_string(u)),
        user_default: target.user_default,
        client_id: target.client_id.as_deref().map(|c| b.create_string(c)),
        client_id_default: target.client_id_default,
    };
    schema::QuotaEntity::create(b, &args)
}

/// An ACL, with Kafka's ids for its resource type, pattern, operation and permission
/// (`docs/PROTOCOL.md`, AclBinding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    pub resource_type: i8,
    pub resource_name: String,
    pub pattern: i8,
    pub principal: String,
    pub host: String,
    pub operation: i8,
    pub permission: i8,
}

/// Which ACLs to describe or delete: Kafka's ids, 1 (ANY) for any (pattern 2: MATCH);
/// `None` strings match any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclFilter {
    pub resource_type: i8,
    pub resource_name: Option<String>,
    pub pattern: i8,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: i8,
    pub permission: i8,
}

impl Default for AclFilter {
    /// Every ACL.
    fn default() -> AclFilter {
        AclFilter {
            resource_type: 1,
            resource_name: None,
            pattern: 1,
            principal: None,
            host: None,
            operation: 1,
            permission: 1,
        }
    }
}

fn acl_binding<'a>(
    b: &mut flatbuffers::FlatBufferBuilder<'a>,
    acl: &Acl,
) -> flatbuffers::WIPOffset<schema::AclBinding<'a>> {
    let args = schema::AclBindingArgs {
        resource_type: acl.resource_type,
        resource_name: Some(b.create_string(&acl.resource_name)),
        pattern: acl.pattern,
        principal: Some(b.create_string(&acl.principal)),
        host: Some(b.create_string(&acl.host)),
        operation: acl.operation,
        permission: acl.permission,
    };
    schema::AclBinding::create(b, &args)
}

fn acl_filter<'a>(
    b: &mut flatbuffers::FlatBufferBuilder<'a>,
    filter: &AclFilter,
) -> flatbuffers::WIPOffset<schema::AclFilter<'a>> {
    let args = schema::AclFilterArgs {
        resource_type: filter.resource_type,
        resource_name: filter.resource_name.as_deref().map(|s| b.create_string(s)),
        pattern: filter.pattern,
        principal: filter.principal.as_deref().map(|s| b.create_string(s)),
        host: filter.host.as_deref().map(|s| b.create_string(s)),
        operation: filter.operation,
        permission: filter.permission,
    };
    schema::AclFilter::create(b, &args)
}

fn acl_of(acl: &schema::AclBinding<'_>) -> Acl {
    Acl {
        resource_type: acl.resource_type(),
        resource_name: acl.resource_name().to_string(),
        pattern: acl.pattern(),
        principal: acl.principal().to_string(),
        host: acl.host().to_string(),
        operation: acl.operation(),
        permission: acl.permission(),
    }
}

/// A SCRAM credential to set: the salt and the password salted and hashed by the
/// caller (RFC 5802's SaltedPassword), with Kafka's mechanism id (1: SCRAM-SHA-256, 2:
/// SCRAM-SHA-512).
#[derive(Debug, Clone)]
pub struct ScramUpsertion {
    pub user: String,
    pub mechanism: i8,
    pub iterations: i32,
    pub salt: Vec<u8>,
    pub salted_password: Vec<u8>,
}
