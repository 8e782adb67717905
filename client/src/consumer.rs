//! A consumer of assigned partitions, or of a whole topic, optionally in a group whose
//! committed offsets it starts from and commits to. (Group membership and rebalancing
//! arrive with the Kafka gateway's group coordinator.)

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;
use weir_wire::{BatchHeader, ControlType, RecordIter};

use crate::ErrorCode;
use crate::client::{Client, FetchSpec, FetchedPartition, OffsetQuery};
use crate::error::{ClientError, ClientResult};

/// Where to start a partition that has no committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    Earliest,
    Latest,
    Offset(i64),
    /// The first record at or after this timestamp (ms).
    Timestamp(i64),
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub group: Option<String>,
    pub start: StartFrom,
    pub max_wait_ms: i32,
    pub min_bytes: i32,
    pub max_bytes: i32,
    pub partition_max_bytes: i32,
    /// Kafka's `isolation.level=read_committed`: only records of committed transactions
    /// (and non-transactional ones), up to the last stable offset; a group's committed
    /// offsets are read once no open transaction may change them.
    pub read_committed: bool,
}

impl Default for ConsumerConfig {
    fn default() -> ConsumerConfig {
        ConsumerConfig {
            group: None,
            start: StartFrom::Latest,
            max_wait_ms: 500,
            min_bytes: 1,
            max_bytes: 50 << 20,
            partition_max_bytes: 1 << 20,
            read_committed: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

#[derive(Debug)]
pub struct Consumer {
    client: Client,
    config: ConsumerConfig,
    /// The next offset to read, per partition.
    positions: BTreeMap<(String, i32), i64>,
}

impl Consumer {
    /// Consumes every partition of `topic`.
    pub async fn subscribe(
        client: Client,
        topic: &str,
        config: ConsumerConfig,
    ) -> ClientResult<Consumer> {
        let partitions = client.partition_count(topic).await?;
        let assigned: Vec<(String, i32)> =
            (0..partitions).map(|p| (topic.to_string(), p)).collect();
        Consumer::assign(client, &assigned, config).await
    }

    /// Consumes the given partitions, each from its committed offset (with a group) or
    /// from `config.start`.
    pub async fn assign(
        client: Client,
        partitions: &[(String, i32)],
        config: ConsumerConfig,
    ) -> ClientResult<Consumer> {
        let mut positions = BTreeMap::new();
        if let Some(group) = &config.group {
            let topics: Vec<String> = partitions.iter().map(|(t, _)| t.clone()).collect();
            let committed = if config.read_committed {
                client.fetch_stable_offsets(group, Some(&topics)).await?
            } else {
                client.fetch_offsets(group, Some(&topics)).await?
            };
            for committed in committed {
                if committed.offset >= 0 {
                    positions.insert((committed.topic, committed.partition), committed.offset);
                }
            }
        }
        let missing: Vec<(String, i32)> = partitions
            .iter()
            .filter(|p| !positions.contains_key(*p))
            .cloned()
            .collect();
        if !missing.is_empty() {
            let query = match config.start {
                StartFrom::Earliest => Some(OffsetQuery::Earliest),
                StartFrom::Latest => Some(OffsetQuery::Latest),
                StartFrom::Timestamp(ts) => Some(OffsetQuery::Timestamp(ts)),
                StartFrom::Offset(offset) => {
                    positions.extend(missing.iter().map(|p| (p.clone(), offset)));
                    None
                }
            };
            if let Some(query) = query {
                let found = client
                    .list_offsets_isolated(&missing, query, config.read_committed)
                    .await?;
                for (topic, partition, offset, _) in found {
                    let offset = if offset >= 0 {
                        offset
                    } else {
                        latest(&client, &topic, partition, config.read_committed).await?
                    };
                    positions.insert((topic, partition), offset);
                }
            }
        }
        Ok(Consumer {
            client,
            config,
            positions,
        })
    }

    pub fn positions(&self) -> &BTreeMap<(String, i32), i64> {
        &self.positions
    }

    /// Fetches what is available (waiting up to `max_wait_ms` for something) and returns
    /// the records after each partition's position, advancing the positions.
    pub async fn poll(&mut self) -> ClientResult<Vec<ConsumedRecord>> {
        let spec = FetchSpec {
            max_wait_ms: self.config.max_wait_ms,
            min_bytes: self.config.min_bytes,
            max_bytes: self.config.max_bytes,
            partitions: self
                .positions
                .iter()
                .map(|((topic, partition), offset)| {
                    (
                        topic.clone(),
                        *partition,
                        *offset,
                        self.config.partition_max_bytes,
                    )
                })
                .collect(),
            read_committed: self.config.read_committed,
        };
        let mut records = Vec::new();
        for fetched in self.client.fetch(&spec).await? {
            let key = (fetched.topic.clone(), fetched.partition);
            if fetched.error == ErrorCode::OffsetOutOfRange {
                // Retention moved past the position: continue from the log start.
                self.positions.insert(key, fetched.log_start_offset);
                continue;
            }
            if fetched.error != ErrorCode::None
                && ClientError::broker(fetched.error, None).is_retriable()
            {
                // The leader moved (or is being elected): the client looks it up again
                // for the next poll.
                continue;
            }
            if fetched.error != ErrorCode::None {
                return Err(ClientError::broker(
                    fetched.error,
                    Some(&fetched.error_message),
                ));
            }
            let position = self.positions.get(&key).copied().unwrap_or(0);
            let next = decode_records(&fetched, position, &mut records)?;
            self.positions.insert(key, next.max(position));
        }
        Ok(records)
    }

    /// Commits the current positions for the consumer's group.
    pub async fn commit(&self) -> ClientResult<()> {
        let group = self
            .config
            .group
            .as_deref()
            .ok_or_else(|| ClientError::Invalid("commit needs a group".into()))?;
        let offsets: Vec<(String, i32, i64)> = self
            .positions
            .iter()
            .map(|((t, p), o)| (t.clone(), *p, *o))
            .collect();
        self.client.commit_offsets(group, &offsets).await
    }
}

async fn latest(
    client: &Client,
    topic: &str,
    partition: i32,
    read_committed: bool,
) -> ClientResult<i64> {
    let partitions = [(topic.to_string(), partition)];
    let found = client
        .list_offsets_isolated(&partitions, OffsetQuery::Latest, read_committed)
        .await?;
    Ok(found.first().map_or(0, |(_, _, offset, _)| *offset))
}

/// Appends the records of `fetched` at or after `position` to `out`; returns the offset
/// after the last batch. Control batches (transaction markers) are never records; the
/// batches of aborted transactions are skipped as Kafka's consumer skips them: a
/// producer's transactional batches are dropped from the first offset of an aborted
/// transaction of its (listed in the response) until its abort marker.
fn decode_records(
    fetched: &FetchedPartition,
    position: i64,
    out: &mut Vec<ConsumedRecord>,
) -> ClientResult<i64> {
    let (batches, topic, partition) = (&fetched.records, &fetched.topic, fetched.partition);
    let mut aborted = fetched.aborted.clone();
    aborted.sort_by_key(|(_, first_offset)| *first_offset);
    let mut aborted = aborted.into_iter().peekable();
    let mut aborting: HashSet<i64> = HashSet::new();
    let mut next = position;
    let mut at = 0;
    while at < batches.len() {
        let header = BatchHeader::parse(&batches[at..])?;
        let batch = batches.slice(at..at + header.total_bytes());
        next = header.next_offset();
        at += header.total_bytes();
        while let Some((producer_id, _)) =
            aborted.next_if(|(_, first_offset)| *first_offset <= header.last_offset())
        {
            aborting.insert(producer_id);
        }
        if header.attributes.is_control() {
            if weir_wire::control_type(&batch)? == Some(ControlType::Abort) {
                aborting.remove(&header.producer_id);
            }
            continue;
        }
        if header.attributes.is_transactional() && aborting.contains(&header.producer_id) {
            continue;
        }
        for record in RecordIter::new(&batch)? {
            let record = record?;
            if record.offset < position {
                continue;
            }
            out.push(ConsumedRecord {
                topic: topic.to_string(),
                partition,
                offset: record.offset,
                timestamp: record.timestamp,
                key: record.key.map(|k| batch.slice_ref(k)),
                value: record.value.map(|v| batch.slice_ref(v)),
                headers: record
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            String::from_utf8_lossy(h.key).into_owned(),
                            h.value.map(|v| batch.slice_ref(v)),
                        )
                    })
                    .collect(),
            });
        }
    }
    Ok(next)
}
