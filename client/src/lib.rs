//! weir's native Rust client: a pipelined connection, a client for every request, a
//! batching producer and a consumer. Runs on glommio, like the broker.

mod client;
mod connection;
mod consumer;
mod error;
mod gate;
pub mod io;
mod partitioner;
mod producer;
pub mod tls;
mod txn;

pub use client::{
    Acl, AclFilter, Client, ClusterBroker, ClusterDescription, CommittedOffset, FetchSpec,
    FetchedPartition, Metadata, OffsetQuery, PartitionMeta, ProduceResult, QuotaAlteration,
    QuotaTarget, SaslCredentials, ScramUpsertion, Security, TopicConfigEntry, TopicMeta,
};
pub use connection::{Connection, PendingResponse, ResponseFrame};
pub use consumer::{ConsumedRecord, Consumer, ConsumerConfig, StartFrom};
pub use error::{ClientError, ClientResult};
pub use gate::{ArrivalGate, Ticket};
pub use partitioner::murmur2;
pub use producer::{Delivery, Producer, ProducerConfig, ProducerRecord};
pub use tls::TlsClient;
pub use txn::ProducerId;
pub use weir_wire::native::schema::{Acks, ConfigSource, ErrorCode, OffsetSpec};
