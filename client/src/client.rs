//! One call per native request, over a pipelined connection.

use std::rc::Rc;

use bytes::Bytes;
use weir_wire::native::PROTOCOL_VERSION;
use weir_wire::native::schema::{self, Acks, ConfigSource, ErrorCode, OffsetSpec, RequestBody};

use crate::connection::{Connection, ResponseFrame};
use crate::error::{ClientError, ClientResult};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMeta {
    pub partition: i32,
    pub leader: i32,
    pub shard: i32,
    pub log_start_offset: i64,
    pub high_watermark: i64,
    pub size_bytes: i64,
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
}

#[derive(Debug, Clone)]
pub struct FetchedPartition {
    pub topic: String,
    pub partition: i32,
    pub error: ErrorCode,
    pub error_message: String,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    /// Whole record batches, as the broker stored them.
    pub records: Bytes,
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

/// One table per topic holding its partitions' tables, topics in first-seen order: the
/// shape of every per-partition request.
fn per_topic<P: 'static, T: 'static>(
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

/// A client of one broker.
#[derive(Debug, Clone)]
pub struct Client {
    connection: Rc<Connection>,
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
        let mut last_error = ClientError::Invalid(format!("no broker address in {brokers:?}"));
        for address in brokers.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            match Connection::connect(address).await {
                Ok(connection) => {
                    let client = Client { connection };
                    client.handshake("weir-client").await?;
                    return Ok(client);
                }
                Err(error) => last_error = error,
            }
        }
        Err(last_error)
    }

    pub fn connection(&self) -> &Rc<Connection> {
        &self.connection
    }

    async fn call(
        &self,
        body_type: RequestBody,
        build: impl FnOnce(
            &mut flatbuffers::FlatBufferBuilder<'static>,
        ) -> flatbuffers::WIPOffset<flatbuffers::UnionWIPOffset>,
        payload: Vec<Bytes>,
    ) -> ClientResult<ResponseFrame> {
        self.connection
            .request(body_type, build, payload, true)
            .await?
            .ok_or_else(|| ClientError::ConnectionLost("no response".into()))
    }

    async fn handshake(&self, client_id: &str) -> ClientResult<()> {
        let frame = self
            .call(
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
        frame
            .checked()?
            .body_as_handshake_response()
            .ok_or_else(|| ClientError::Invalid("no handshake body".into()))?;
        Ok(())
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

    /// Sends record batches (each `Bytes` one or more whole batches) for partitions. With
    /// `Acks::None` nothing comes back and the result is empty.
    pub async fn produce(
        &self,
        acks: Acks,
        timeout_ms: i32,
        records: Vec<(String, i32, Bytes)>,
    ) -> ClientResult<Vec<ProduceResult>> {
        let mut offset = 0u32;
        let mut slices = Vec::with_capacity(records.len());
        for (_, _, bytes) in &records {
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
            schema::ProduceRequest::create(
                b,
                &schema::ProduceRequestArgs {
                    acks,
                    timeout_ms,
                    topics: Some(topics),
                },
            )
            .as_union_value()
        };
        let payload: Vec<Bytes> = records.iter().map(|(_, _, bytes)| bytes.clone()).collect();
        let frame = self
            .connection
            .request(
                RequestBody::ProduceRequest,
                build,
                payload,
                acks != Acks::None,
            )
            .await?;
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

    pub async fn fetch(&self, spec: &FetchSpec) -> ClientResult<Vec<FetchedPartition>> {
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
            };
            schema::FetchRequest::create(b, &args).as_union_value()
        };
        let frame = self.call(RequestBody::FetchRequest, build, vec![]).await?;
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
                    records: frame.slice(p.records())?,
                });
            }
        }
        Ok(fetched)
    }

    /// Offsets of `partitions` by `query`: `(topic, partition, offset, timestamp)`, offset
    /// -1 when no record is at or after a queried timestamp.
    pub async fn list_offsets(
        &self,
        partitions: &[(String, i32)],
        query: OffsetQuery,
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
                },
            )
            .as_union_value()
        };
        let frame = self
            .call(RequestBody::ListOffsetsRequest, build, vec![])
            .await?;
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

    pub async fn commit_offsets(
        &self,
        group: &str,
        offsets: &[(String, i32, i64)],
    ) -> ClientResult<()> {
        let build = |b: &mut flatbuffers::FlatBufferBuilder<'static>| {
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
            let topics = per_topic(b, entries, |b, name, list| {
                let args = schema::CommitTopicArgs {
                    name: Some(name),
                    partitions: Some(list),
                };
                schema::CommitTopic::create(b, &args)
            });
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
        let frame = self
            .call(RequestBody::CommitOffsetsRequest, build, vec![])
            .await?;
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
    pub async fn fetch_offsets(
        &self,
        group: &str,
        topics: Option<&[String]>,
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
                },
            )
            .as_union_value()
        };
        let frame = self
            .call(RequestBody::FetchOffsetsRequest, build, vec![])
            .await?;
        let response = frame.checked()?;
        let body = response
            .body_as_fetch_offsets_response()
            .ok_or_else(|| ClientError::Invalid("no fetch offsets body".into()))?;
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
