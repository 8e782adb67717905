//! What each Kafka request does. `dispatch` runs in the connection's arrival order and
//! starts whatever must keep that order (a produce request's appends); the returned
//! future finishes the request and encodes its response.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, RequestHeader, RequestKind, ResponseKind,
};
use kafka_protocol::protocol::StrBytes;

use super::codec::{self, Request};
use super::sasl::Session;
use super::{admin, fetch, groups, produce, topics, txn, versions};
use crate::net::MemoryPermit;
use crate::security::quotas::QuotaKind;
use crate::shard::Shard;

/// A response frame, and whether it reports a failure (for metrics).
pub struct Reply {
    pub parts: Vec<Bytes>,
    pub failed: bool,
    pub close_after: bool,
    /// What a fetch read, held until the response is written.
    pub memory: Option<MemoryPermit>,
}

/// Finishes a request: its API name and its response (none for acks=0 produce).
pub type ReplyFuture = Pin<Box<dyn Future<Output = (&'static str, Option<Reply>)>>>;

/// What a handler hands back: the response body and whether it reports a failure.
pub type Answer = (ResponseKind, bool);

/// The metrics name of each API.
fn api_name(api: ApiKey) -> &'static str {
    match api {
        ApiKey::Produce => "kafka_produce",
        ApiKey::Fetch => "kafka_fetch",
        ApiKey::ListOffsets => "kafka_list_offsets",
        ApiKey::Metadata => "kafka_metadata",
        ApiKey::ApiVersions => "kafka_api_versions",
        ApiKey::CreateTopics => "kafka_create_topics",
        ApiKey::DeleteTopics => "kafka_delete_topics",
        ApiKey::FindCoordinator => "kafka_find_coordinator",
        ApiKey::JoinGroup => "kafka_join_group",
        ApiKey::SyncGroup => "kafka_sync_group",
        ApiKey::Heartbeat => "kafka_heartbeat",
        ApiKey::LeaveGroup => "kafka_leave_group",
        ApiKey::OffsetCommit => "kafka_offset_commit",
        ApiKey::OffsetFetch => "kafka_offset_fetch",
        ApiKey::ListGroups => "kafka_list_groups",
        ApiKey::DescribeGroups => "kafka_describe_groups",
        ApiKey::DeleteGroups => "kafka_delete_groups",
        ApiKey::OffsetDelete => "kafka_offset_delete",
        ApiKey::InitProducerId => "kafka_init_producer_id",
        ApiKey::DescribeConfigs => "kafka_describe_configs",
        ApiKey::AlterConfigs => "kafka_alter_configs",
        ApiKey::IncrementalAlterConfigs => "kafka_incremental_alter_configs",
        ApiKey::CreatePartitions => "kafka_create_partitions",
        ApiKey::DeleteRecords => "kafka_delete_records",
        ApiKey::DescribeCluster => "kafka_describe_cluster",
        ApiKey::AddPartitionsToTxn => "kafka_add_partitions_to_txn",
        ApiKey::AddOffsetsToTxn => "kafka_add_offsets_to_txn",
        ApiKey::EndTxn => "kafka_end_txn",
        ApiKey::WriteTxnMarkers => "kafka_write_txn_markers",
        ApiKey::TxnOffsetCommit => "kafka_txn_offset_commit",
        ApiKey::SaslHandshake | ApiKey::SaslAuthenticate => "kafka_sasl",
        ApiKey::CreateAcls => "kafka_create_acls",
        ApiKey::DescribeAcls => "kafka_describe_acls",
        ApiKey::DeleteAcls => "kafka_delete_acls",
        ApiKey::DescribeUserScramCredentials => "kafka_describe_user_scram_credentials",
        ApiKey::AlterUserScramCredentials => "kafka_alter_user_scram_credentials",
        ApiKey::DescribeClientQuotas => "kafka_describe_client_quotas",
        ApiKey::AlterClientQuotas => "kafka_alter_client_quotas",
        _ => "kafka_other",
    }
}

pub fn str_bytes(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
}

/// Encodes `body` as the response to `header`; an encoding failure (a bug: a field set
/// that the version lacks) closes the connection rather than sending garbage.
pub fn reply(header: &RequestHeader, api: ApiKey, body: &ResponseKind, failed: bool) -> Reply {
    match codec::encode(header.correlation_id, api, header.request_api_version, body) {
        Ok(frame) => Reply {
            parts: vec![frame.freeze()],
            failed,
            close_after: false,
            memory: None,
        },
        Err(error) => {
            tracing::error!(?api, version = header.request_api_version, %error, "encoding a Kafka response failed");
            Reply {
                parts: Vec::new(),
                failed: true,
                close_after: true,
                memory: None,
            }
        }
    }
}

pub async fn dispatch(shard: &Rc<Shard>, request: Request, session: &Rc<Session>) -> ReplyFuture {
    let api = request.api;
    let name = api_name(api);
    let header = request.header.clone();
    let caller = session.caller();
    let client_id = request.header.client_id.as_ref().map_or("", |c| c.as_str());
    // The request quota holds the connection off at once; the byte quotas once the
    // bytes are known (a produce's now, a fetch's when it is read).
    let requests_throttle = shard.throttle(QuotaKind::Request, &caller, client_id, 1);
    session.mute.hold(requests_throttle);
    if let RequestKind::Produce(_) = request.body {
        let bytes = request.frame.len() as u64;
        let bytes_throttle = shard.throttle(QuotaKind::Produce, &caller, client_id, bytes);
        session.mute.hold(bytes_throttle);
        let throttle = bytes_throttle.max(requests_throttle);
        let finish = produce::start(shard, &caller, request, throttle).await;
        return Box::pin(async move { (name, finish.await) });
    }
    let shard = shard.clone();
    let session = session.clone();
    Box::pin(async move {
        let client_host = &*session.client_host;
        let listener = &*session.listener;
        let caller = &*caller;
        let version = header.request_api_version;
        let (mut body, failed) = match request.body {
            RequestKind::FindCoordinator(body) => {
                groups::find_coordinator(&shard, caller, listener, version, body)
            }
            RequestKind::JoinGroup(body) => {
                groups::join_group(&shard, caller, &header, client_host, body).await
            }
            RequestKind::SyncGroup(body) => groups::sync_group(&shard, caller, version, body).await,
            RequestKind::Heartbeat(body) => groups::heartbeat(&shard, caller, body).await,
            RequestKind::LeaveGroup(body) => {
                groups::leave_group(&shard, caller, version, body).await
            }
            RequestKind::OffsetCommit(body) => groups::offset_commit(&shard, caller, body).await,
            RequestKind::OffsetFetch(body) => {
                groups::offset_fetch(&shard, caller, version, body).await
            }
            RequestKind::ListGroups(body) => {
                groups::list_groups(&shard, caller, version, body).await
            }
            RequestKind::DescribeGroups(body) => {
                groups::describe_groups(&shard, caller, version, body).await
            }
            RequestKind::DeleteGroups(body) => groups::delete_groups(&shard, caller, body).await,
            RequestKind::OffsetDelete(body) => groups::offset_delete(&shard, caller, body).await,
            RequestKind::InitProducerId(body) => {
                txn::init_producer_id(&shard, caller, version, body).await
            }
            RequestKind::AddPartitionsToTxn(body) => {
                txn::add_partitions_to_txn(&shard, caller, version, body).await
            }
            RequestKind::AddOffsetsToTxn(body) => {
                txn::add_offsets_to_txn(&shard, caller, version, body).await
            }
            RequestKind::EndTxn(body) => txn::end_txn(&shard, caller, version, body).await,
            RequestKind::TxnOffsetCommit(body) => {
                txn::txn_offset_commit(&shard, caller, version, body).await
            }
            RequestKind::WriteTxnMarkers(body) => {
                txn::write_txn_markers(&shard, caller, body).await
            }
            RequestKind::DescribeConfigs(body) => {
                admin::describe_configs(&shard, caller, version, body)
            }
            RequestKind::AlterConfigs(body) => admin::alter_configs(&shard, caller, body).await,
            RequestKind::IncrementalAlterConfigs(body) => {
                admin::incremental_alter_configs(&shard, caller, body).await
            }
            RequestKind::CreatePartitions(body) => {
                admin::create_partitions(&shard, caller, body).await
            }
            RequestKind::DeleteRecords(body) => admin::delete_records(&shard, caller, body).await,
            RequestKind::DescribeCluster(body) => {
                admin::describe_cluster(&shard, listener, version, body)
            }
            RequestKind::CreateAcls(body) => admin::create_acls(&shard, caller, body).await,
            RequestKind::DescribeAcls(body) => admin::describe_acls(&shard, caller, body),
            RequestKind::DeleteAcls(body) => admin::delete_acls(&shard, caller, body).await,
            RequestKind::DescribeUserScramCredentials(body) => {
                admin::describe_user_scram_credentials(&shard, caller, body)
            }
            RequestKind::AlterUserScramCredentials(body) => {
                admin::alter_user_scram_credentials(&shard, caller, body).await
            }
            RequestKind::DescribeClientQuotas(body) => {
                admin::describe_client_quotas(&shard, caller, body)
            }
            RequestKind::AlterClientQuotas(body) => {
                admin::alter_client_quotas(&shard, caller, body).await
            }
            RequestKind::ApiVersions(_) => (ResponseKind::ApiVersions(api_versions(0)), false),
            RequestKind::Metadata(body) => {
                topics::metadata(&shard, caller, listener, version, body).await
            }
            RequestKind::CreateTopics(body) => {
                topics::create_topics(&shard, caller, version, body).await
            }
            RequestKind::DeleteTopics(body) => {
                topics::delete_topics(&shard, caller, version, body).await
            }
            RequestKind::ListOffsets(body) => {
                topics::list_offsets(&shard, caller, version, body).await
            }
            RequestKind::Fetch(body) => {
                let parts = fetch::fetch(&shard, &session, &header, body, requests_throttle).await;
                return (name, Some(parts));
            }
            other => {
                // Decoding only lets through what `versions::SUPPORTED` lists.
                tracing::error!(?api, "no handler for an advertised API");
                let _ = other;
                return (
                    name,
                    Some(Reply {
                        parts: Vec::new(),
                        failed: true,
                        close_after: true,
                        memory: None,
                    }),
                );
            }
        };
        set_throttle(&mut body, requests_throttle);
        (name, Some(reply(&header, api, &body, failed)))
    })
}

/// Tells the client how long its request quota holds it off (KIP-219: it sends this
/// broker nothing more until then), in every response that has `throttle_time_ms`
/// (versions without the field leave it out when encoding). Produce and Fetch add their
/// byte quotas' throttle themselves.
fn set_throttle(body: &mut ResponseKind, throttle: Duration) {
    let ms = i32::try_from(throttle.as_millis()).unwrap_or(i32::MAX);
    if ms == 0 {
        return;
    }
    macro_rules! throttled {
        ($($kind:ident),* $(,)?) => {
            match body {
                $(ResponseKind::$kind(response) => response.throttle_time_ms = ms,)*
                _ => {}
            }
        };
    }
    throttled!(
        FindCoordinator,
        JoinGroup,
        SyncGroup,
        Heartbeat,
        LeaveGroup,
        OffsetCommit,
        OffsetFetch,
        ListGroups,
        DescribeGroups,
        DeleteGroups,
        OffsetDelete,
        InitProducerId,
        AddPartitionsToTxn,
        AddOffsetsToTxn,
        EndTxn,
        TxnOffsetCommit,
        DescribeConfigs,
        AlterConfigs,
        IncrementalAlterConfigs,
        CreatePartitions,
        DeleteRecords,
        DescribeCluster,
        CreateAcls,
        DescribeAcls,
        DeleteAcls,
        DescribeUserScramCredentials,
        AlterUserScramCredentials,
        DescribeClientQuotas,
        AlterClientQuotas,
        ApiVersions,
        Metadata,
        CreateTopics,
        DeleteTopics,
        ListOffsets,
    );
}

fn api_versions(error: i16) -> ApiVersionsResponse {
    let api_keys = versions::SUPPORTED
        .iter()
        .map(|(api, min, max)| {
            ApiVersion::default()
                .with_api_key(*api as i16)
                .with_min_version(*min)
                .with_max_version(*max)
        })
        .collect();
    ApiVersionsResponse::default()
        .with_error_code(error)
        .with_api_keys(api_keys)
}

/// The answer to an ApiVersions request of a version this broker does not serve: version
/// 0 of the response, `UNSUPPORTED_VERSION` and the versions it does serve, so the client
/// can retry with one of them.
/// The answer to a request whose API or version is not served, when one can be given
/// (`None`: the connection is closed, as Kafka does): ApiVersions of an unknown version
/// gets the table, an unserved API its own response with UNSUPPORTED_VERSION.
pub fn unsupported(header: &RequestHeader, api: ApiKey) -> Option<Vec<Bytes>> {
    match api {
        ApiKey::ApiVersions => Some(api_versions_unsupported(header)),
        api => unserved_api(header, api),
    }
}

fn api_versions_unsupported(header: &RequestHeader) -> Vec<Bytes> {
    let body = ResponseKind::ApiVersions(api_versions(ResponseError::UnsupportedVersion.code()));
    match codec::encode(header.correlation_id, ApiKey::ApiVersions, 0, &body) {
        Ok(frame) => vec![frame.freeze()],
        Err(_) => Vec::new(),
    }
}

/// The answer to a request of an API this gateway does not serve (ApiVersions does not
/// advertise it): that API's own response at the requested version, its error code
/// UNSUPPORTED_VERSION, so that a client that sends it anyway learns why instead of
/// losing its connection. `None` for an API whose response has no request-wide error
/// field (only per-item ones), for a version the codec cannot write, and for the
/// served APIs: an unadvertised version of those is closed on, as Kafka does.
fn unserved_api(header: &RequestHeader, api: ApiKey) -> Option<Vec<Bytes>> {
    use kafka_protocol::messages::*;
    let version = header.request_api_version;
    let codec = api.valid_versions();
    if versions::range(api).is_some() || version < codec.min || version > codec.max {
        return None;
    }
    let code = ResponseError::UnsupportedVersion.code();
    macro_rules! with_error {
        ($($api:ident => $response:ident),* $(,)?) => {
            match api {
                $(ApiKey::$api => ResponseKind::$api($response::default().with_error_code(code)),)*
                _ => return None,
            }
        };
    }
    let body = with_error! {
        ListTransactions => ListTransactionsResponse,
        CreateDelegationToken => CreateDelegationTokenResponse,
        RenewDelegationToken => RenewDelegationTokenResponse,
        ExpireDelegationToken => ExpireDelegationTokenResponse,
        DescribeDelegationToken => DescribeDelegationTokenResponse,
        ListPartitionReassignments => ListPartitionReassignmentsResponse,
        AlterPartitionReassignments => AlterPartitionReassignmentsResponse,
        ElectLeaders => ElectLeadersResponse,
        ConsumerGroupHeartbeat => ConsumerGroupHeartbeatResponse,
        GetTelemetrySubscriptions => GetTelemetrySubscriptionsResponse,
        PushTelemetry => PushTelemetryResponse,
        DescribeLogDirs => DescribeLogDirsResponse,
        UpdateFeatures => UpdateFeaturesResponse,
        DescribeQuorum => DescribeQuorumResponse,
    };
    codec::encode(header.correlation_id, api, version, &body)
        .ok()
        .map(|frame| vec![frame.freeze()])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An unserved API answered at one version is answered at every later version the
    /// codec writes (older ones may lack the error field, as ElectLeaders v0 does), and
    /// served APIs never are.
    #[test]
    fn unserved_apis_are_answered_from_their_first_version_with_an_error_field() {
        let mut answered = 0;
        for key in 0..i16::MAX {
            let Ok(api) = ApiKey::try_from(key) else {
                continue;
            };
            let codec = api.valid_versions();
            let header = |v: i16| RequestHeader::default().with_request_api_version(v);
            let versions: Vec<bool> = (codec.min..=codec.max)
                .map(|v| unserved_api(&header(v), api).is_some())
                .collect();
            let Some(first) = versions.iter().position(|a| *a) else {
                continue;
            };
            assert!(
                versions[first..].iter().all(|a| *a),
                "{api:?}: {versions:?}"
            );
            assert!(versions::range(api).is_none(), "{api:?} is served");
            answered += 1;
        }
        assert!(answered >= 14, "{answered}");
    }

    /// Every served API has its own line in `/metrics`.
    #[test]
    fn every_served_api_has_a_metrics_name() {
        for (api, _, _) in versions::SUPPORTED {
            let name = api_name(*api);
            assert_ne!(name, "kafka_other", "{api:?}");
            assert!(crate::metrics::APIS.contains(&name), "{name}");
        }
    }
}
