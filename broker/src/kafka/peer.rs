//! What this broker asks other brokers on Kafka's protocol, as Kafka brokers do:
//! WriteTxnMarkers, from a transaction coordinator to the leaders of its transaction's
//! partitions. One connection per call: markers are one round per transaction and
//! remote broker, and a connection kept open would need its own failure handling for a
//! gain of one connect on a local network.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::{
    ApiKey, ProducerId, RequestHeader, ResponseHeader, ResponseKind, WriteTxnMarkersRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use weir_client::TlsClient;

use crate::error::{BrokerError, BrokerResult};
use crate::router::TopicPartition;

const WRITE_TXN_MARKERS_VERSION: i16 = 1;
/// A marker waits for the leader's in-sync replicas; this bounds a call to a broker
/// that went away.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// No WriteTxnMarkers response comes near this.
const RESPONSE_BYTES_MAX: usize = 16 << 20;

/// One transaction's markers for partitions led by the broker at `address`: each
/// partition's Kafka error code (0: written).
pub async fn write_txn_markers(
    address: &str,
    tls: Option<&TlsClient>,
    producer: (i64, i16),
    commit: bool,
    coordinator_epoch: i32,
    partitions: &[TopicPartition],
) -> BrokerResult<Vec<(TopicPartition, i16)>> {
    let timeout = async {
        glommio::timer::sleep(CALL_TIMEOUT).await;
        Err(BrokerError::TimedOut(format!(
            "WriteTxnMarkers to {address}"
        )))
    };
    let call = async {
        let mut topics: Vec<WritableTxnMarkerTopic> = Vec::new();
        for tp in partitions {
            let name = kafka_protocol::messages::TopicName(StrBytes::from_string(tp.topic.clone()));
            match topics.iter_mut().find(|t| t.name == name) {
                Some(topic) => topic.partition_indexes.push(tp.partition),
                None => topics.push(
                    WritableTxnMarkerTopic::default()
                        .with_name(name)
                        .with_partition_indexes(vec![tp.partition]),
                ),
            }
        }
        let request = WriteTxnMarkersRequest::default().with_markers(vec![
            WritableTxnMarker::default()
                .with_producer_id(ProducerId(producer.0))
                .with_producer_epoch(producer.1)
                .with_transaction_result(commit)
                .with_coordinator_epoch(coordinator_epoch)
                .with_topics(topics),
        ]);
        let api = ApiKey::WriteTxnMarkers;
        let version = WRITE_TXN_MARKERS_VERSION;
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            BrokerError::Internal(format!("WriteTxnMarkers to {address}: {what}: {e}"))
        };
        let mut frame = BytesMut::new();
        frame.put_i32(0);
        RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(1)
            .with_client_id(Some(StrBytes::from_static_str("weir-coordinator")))
            .encode(&mut frame, api.request_header_version(version))
            .map_err(|e| failed("encoding", &e))?;
        request
            .encode(&mut frame, version)
            .map_err(|e| failed("encoding", &e))?;
        let size = (frame.len() - 4) as i32;
        frame[..4].copy_from_slice(&size.to_be_bytes());

        let mut stream = weir_client::tls::dial(address, tls)
            .await
            .map_err(|e| failed("connecting", &e))?;
        stream
            .write_all(&frame)
            .await
            .map_err(|e| failed("sending", &e))?;
        stream.flush().await.map_err(|e| failed("sending", &e))?;
        let mut size = [0u8; 4];
        stream
            .read_exact(&mut size)
            .await
            .map_err(|e| failed("reading", &e))?;
        let size = usize::try_from(i32::from_be_bytes(size)).unwrap_or(usize::MAX);
        if size > RESPONSE_BYTES_MAX {
            return Err(failed("response", &format!("{size} bytes")));
        }
        let mut body = vec![0u8; size];
        stream
            .read_exact(&mut body)
            .await
            .map_err(|e| failed("reading", &e))?;
        let mut body = Bytes::from(body);
        ResponseHeader::decode(&mut body, api.response_header_version(version))
            .map_err(|e| failed("decoding", &e))?;
        let response =
            ResponseKind::decode(api, &mut body, version).map_err(|e| failed("decoding", &e))?;
        if body.has_remaining() {
            return Err(failed("decoding", &"bytes after the response"));
        }
        // A TLS stream says it is closing (close_notify), or the broker takes the end
        // for a truncation.
        let _ = stream.close().await;
        let ResponseKind::WriteTxnMarkers(response) = response else {
            return Err(failed("decoding", &"another response"));
        };
        Ok(response
            .markers
            .into_iter()
            .flat_map(|m| m.topics)
            .flat_map(|t| {
                let topic = t.name.to_string();
                t.partitions.into_iter().map(move |p| {
                    (
                        TopicPartition {
                            topic: topic.clone(),
                            partition: p.partition_index,
                        },
                        p.error_code,
                    )
                })
            })
            .collect())
    };
    futures_lite::future::or(call, timeout).await
}
