//! Transactions (KIP-98): the coordinator's state (`coordinator.rs`) and what a
//! partition's leader knows of the transactions in its log (`partition.rs`). The shard
//! side, which writes entries and markers, is `shard/txn.rs`.

pub mod coordinator;
pub mod partition;

use crate::error::BrokerResult;
use crate::router::TopicPartition;

/// A request for the transaction coordinator: the shard leading the transactional id's
/// `__transaction_state` partition.
#[derive(Debug)]
pub enum TxnCall {
    InitProducerId {
        transactional_id: String,
        timeout_ms: i32,
        /// The id and epoch a producer that had one says it had (KIP-360).
        expected: Option<(i64, i16)>,
    },
    AddPartitions {
        transactional_id: String,
        producer_id: i64,
        producer_epoch: i16,
        partitions: Vec<TopicPartition>,
    },
    /// AddOffsetsToTxn: the group's offsets partition joins the transaction.
    AddOffsets {
        transactional_id: String,
        producer_id: i64,
        producer_epoch: i16,
        group: String,
    },
    End {
        transactional_id: String,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
    },
}

#[derive(Debug)]
pub enum TxnAnswer {
    /// InitProducerId: the producer id and epoch.
    Producer(BrokerResult<(i64, i16)>),
    Done(BrokerResult<()>),
}
