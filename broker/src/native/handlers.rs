//! What each native request does. Dispatch runs in the connection's arrival order and
//! starts whatever must keep that order (a produce request's appends); the returned
//! future finishes the request and builds its response.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use flatbuffers::{FlatBufferBuilder, ForwardsUOffset, Vector, WIPOffset};
use weir_wire::native::PROTOCOL_VERSION;
use weir_wire::native::schema::{self, Acks, ErrorCode, OffsetSpec};

use super::codec::{self, NativeRequest, ResponseWriter, error_fields};
use crate::error::{BrokerError, BrokerResult};
use crate::net::MemoryPermit;
use crate::ops::{self, Appended, FetchPartition, FetchResults, StartedProduce};
use crate::router::{MemberClaim, PartitionStatus, ShardCall, TopicPartition};
use std::cell::RefCell;

use crate::security::quotas::QuotaKind;
use crate::security::sasl::{Exchange, Step};
use crate::security::{Caller, Listener};
use crate::shard::Shard;
use crate::topic::{ConfigChange, ConfigSource};
use weir_replication::AclOperation;

/// A response frame, and whether it reports a failure (for metrics).
pub struct Reply {
    pub parts: Vec<Bytes>,
    pub failed: bool,
    /// What a fetch read, held until the response is written.
    pub memory: Option<MemoryPermit>,
}

/// Finishes a request: its API name and its response (none for acks=none produce).
pub type ReplyFuture = Pin<Box<dyn Future<Output = (&'static str, Option<Reply>)>>>;

/// The response to a frame whose header could not be decoded: request id 0.
pub fn fatal_response(message: &str) -> Vec<Bytes> {
    let error = BrokerError::InvalidRequest(message.to_string());
    ResponseWriter::new().finish(0, Some(&error), None)
}

fn error_reply(api: &'static str, request_id: u64, error: &BrokerError) -> ReplyFuture {
    let parts = ResponseWriter::new().finish(request_id, Some(error), None);
    Box::pin(std::future::ready((
        api,
        Some(Reply {
            parts,
            failed: true,
            memory: None,
        }),
    )))
}

/// Who a native connection is, the client id its handshake named, and its quota
/// throttle.
#[derive(Debug)]
pub struct Session {
    caller: RefCell<Rc<Caller>>,
    pub listener: Rc<Listener>,
    pub client_id: RefCell<String>,
    pub mute: crate::net::Mute,
    auth: RefCell<Auth>,
}

/// Where a connection to a SASL listener is in authenticating.
#[derive(Debug)]
enum Auth {
    Waiting,
    Exchanging(Box<Exchange>),
    Done,
}

impl Session {
    pub fn new(caller: Caller, listener: Rc<Listener>) -> Session {
        let auth = if listener.protocol.sasl() {
            Auth::Waiting
        } else {
            Auth::Done
        };
        Session {
            caller: RefCell::new(Rc::new(caller)),
            listener,
            client_id: Default::default(),
            mute: Default::default(),
            auth: RefCell::new(auth),
        }
    }

    pub fn caller(&self) -> Rc<Caller> {
        self.caller.borrow().clone()
    }

    pub fn authenticated(&self) -> bool {
        matches!(*self.auth.borrow(), Auth::Done)
    }

    /// Counts usage against the connection's client quota, holding it off if over.
    fn throttle(&self, shard: &Shard, kind: QuotaKind, amount: u64) {
        let client_id = self.client_id.borrow();
        self.mute
            .hold(shard.throttle(kind, &self.caller(), &client_id, amount));
    }
}

/// What a connection may send before it has authenticated: anything else closes it.
pub fn allowed_before_authentication(body: schema::RequestBody) -> bool {
    use schema::RequestBody as B;
    matches!(
        body,
        B::HandshakeRequest | B::SaslHandshakeRequest | B::SaslAuthenticateRequest
    )
}

/// A SaslHandshake or SaslAuthenticate request, answered in line (the next frame is read
/// only after it): the response, and whether the connection must then close (a refused
/// mechanism or credentials, after `sasl_failed_authentication_delay_ms`).
pub async fn sasl(
    shard: &Rc<Shard>,
    session: &Session,
    request: schema::Request<'_>,
) -> (Vec<Bytes>, bool) {
    let request_id = request.request_id();
    let refused = |error: BrokerError, close: bool| {
        (
            ResponseWriter::new().finish(request_id, Some(&error), None),
            close,
        )
    };
    if let Some(handshake) = request.body_as_sasl_handshake_request() {
        if !matches!(*session.auth.borrow(), Auth::Waiting) {
            let why = "SaslHandshake: not a SASL listener, or past the handshake";
            return refused(BrokerError::InvalidRequest(why.into()), true);
        }
        let enabled = &shard.config.sasl_enabled_mechanisms;
        let mechanism = handshake.mechanism();
        let mut w = ResponseWriter::new();
        let offered: Vec<_> = enabled.iter().map(|m| w.string(m)).collect();
        let offered = w.builder.create_vector(&offered);
        let error = match Exchange::start(mechanism, enabled, shard.image()) {
            Some(exchange) => {
                *session.auth.borrow_mut() = Auth::Exchanging(Box::new(exchange));
                None
            }
            None => Some(BrokerError::AuthenticationFailed(format!(
                "mechanism {mechanism} is not offered"
            ))),
        };
        let args = schema::SaslHandshakeResponseArgs {
            mechanisms: Some(offered),
        };
        let body = schema::SaslHandshakeResponse::create(&mut w.builder, &args).as_union_value();
        let close = error.is_some();
        let parts = w.finish(
            request_id,
            error.as_ref(),
            Some((schema::ResponseBody::SaslHandshakeResponse, body)),
        );
        return (parts, close);
    }
    let Some(authenticate) = request.body_as_sasl_authenticate_request() else {
        return refused(
            BrokerError::InvalidRequest("not a SASL request".into()),
            true,
        );
    };
    let exchange = match std::mem::replace(&mut *session.auth.borrow_mut(), Auth::Waiting) {
        Auth::Exchanging(exchange) => exchange,
        other => {
            *session.auth.borrow_mut() = other;
            let why = "SaslAuthenticate outside a SASL exchange";
            return refused(BrokerError::InvalidRequest(why.into()), true);
        }
    };
    let input = authenticate
        .auth_bytes()
        .map(|b| b.bytes().to_vec())
        .unwrap_or_default();
    let mechanism = exchange.mechanism();
    let (exchange, step) = exchange.step_off_shard(input).await;
    let (out, done) = match step {
        Step::Continue(out) => {
            *session.auth.borrow_mut() = Auth::Exchanging(exchange);
            (out, false)
        }
        Step::Done(out, principal) => {
            tracing::debug!(%principal, mechanism, "authenticated (native)");
            let host = session.caller().host.clone();
            *session.caller.borrow_mut() = Rc::new(Caller::new(principal, host));
            *session.auth.borrow_mut() = Auth::Done;
            (out, true)
        }
        Step::Failed(reason) => {
            let client = session.caller().host.clone();
            crate::security::sasl::authentication_failed(
                shard,
                &session.listener,
                &client,
                mechanism,
                &reason,
            );
            let delay = shard.config.sasl_failed_authentication_delay_ms;
            glommio::timer::sleep(Duration::from_millis(delay)).await;
            let error = BrokerError::AuthenticationFailed(format!(
                "authentication with SASL mechanism {mechanism} failed: invalid credentials"
            ));
            return refused(error, true);
        }
    };
    let mut w = ResponseWriter::new();
    let auth_bytes = w.builder.create_vector(&out);
    let args = schema::SaslAuthenticateResponseArgs {
        auth_bytes: Some(auth_bytes),
        done,
    };
    let body = schema::SaslAuthenticateResponse::create(&mut w.builder, &args).as_union_value();
    let parts = w.finish(
        request_id,
        None,
        Some((schema::ResponseBody::SaslAuthenticateResponse, body)),
    );
    (parts, false)
}

pub async fn dispatch(
    shard: &Rc<Shard>,
    request: schema::Request<'_>,
    payload: BytesMut,
    session: &Rc<Session>,
) -> ReplyFuture {
    let caller = session.caller();
    let caller = &*caller;
    let payload_bytes = payload.len() as u64;
    let request_id = request.request_id();
    let request = match codec::decode(&request, payload) {
        Ok(request) => request,
        Err(error) => return error_reply("handshake", request_id, &error),
    };
    let api = request.api();
    if shard.shutting_down() {
        return error_reply(api, request_id, &BrokerError::ShuttingDown);
    }
    // The native listener opens before the metadata is in (other brokers need it to
    // form the quorum); until then a client's request would find no topic at all.
    if !request.between_brokers() && !shard.is_ready() {
        return error_reply(api, request_id, &BrokerError::Starting);
    }
    if let NativeRequest::Handshake { client_id, .. } = &request {
        session.client_id.borrow_mut().clone_from(client_id);
    }
    // Client quotas, as on Kafka connections: the connection is held off (the native
    // protocol has no throttle field; the broker's hold is the whole of it).
    if !request.between_brokers() {
        session.throttle(shard, QuotaKind::Request, 1);
    }
    if matches!(request, NativeRequest::Produce { .. }) {
        session.throttle(shard, QuotaKind::Produce, payload_bytes);
    }
    if let NativeRequest::Produce {
        acks,
        partitions,
        transactional_id,
    } = request
    {
        let partitions = partitions
            .into_iter()
            .map(|(tp, records)| (tp, ops::split_batches(shard, records)))
            .collect();
        let producer = ops::Producing {
            caller,
            transactional_id: transactional_id.as_deref(),
        };
        let started = ops::start_produce(shard, producer, partitions, acks).await;
        return Box::pin(async move { (api, finish_produce(request_id, acks, started).await) });
    }
    let shard = shard.clone();
    let session = session.clone();
    Box::pin(async move {
        let caller = session.caller();
        let result = match request {
            // A fetch's response holds the memory of what it read until it is written.
            NativeRequest::Fetch {
                max_wait_ms,
                min_bytes,
                max_bytes,
                partitions,
                read_committed,
            } => {
                let limits = (max_wait_ms, min_bytes, max_bytes);
                let read = fetch(
                    &shard,
                    &caller,
                    request_id,
                    limits,
                    partitions,
                    read_committed,
                );
                let read = read.await;
                if let Ok((parts, _)) = &read {
                    let bytes = parts.iter().map(Bytes::len).sum::<usize>() as u64;
                    session.throttle(&shard, QuotaKind::Fetch, bytes);
                }
                read
            }
            NativeRequest::ReplicaFetch {
                replica,
                max_wait_ms,
                min_bytes,
                max_bytes,
                partitions,
            } => {
                let wait = Duration::from_millis(max_wait_ms.max(0) as u64);
                let limits = (min_bytes, max_bytes);
                let request = (request_id, replica, wait, limits);
                replica_fetch(&shard, &caller, request, &partitions).await
            }
            request => handle(&shard, request_id, request, &caller)
                .await
                .map(|parts| (parts, None)),
        };
        let reply = match result {
            Ok((parts, memory)) => Reply {
                parts,
                failed: false,
                memory,
            },
            Err(error) => Reply {
                parts: ResponseWriter::new().finish(request_id, Some(&error), None),
                failed: true,
                memory: None,
            },
        };
        (api, Some(reply))
    })
}

async fn handle(
    shard: &Rc<Shard>,
    request_id: u64,
    request: NativeRequest,
    caller: &Caller,
) -> BrokerResult<Vec<Bytes>> {
    // Brokers' own requests (the handshake, which brokers send too, is anyone's; a
    // follower's fetch is checked where `dispatch` answers it).
    if matches!(
        request,
        NativeRequest::RaftMessages { .. } | NativeRequest::ControllerCall { .. }
    ) {
        shard
            .authorizer
            .check_cluster(caller, AclOperation::ClusterAction)?;
    }
    match request {
        NativeRequest::Handshake {
            client_id,
            min_version,
            max_version,
        } => handshake(shard, request_id, &client_id, min_version, max_version),
        NativeRequest::Metadata { topics } => metadata(shard, caller, request_id, topics).await,
        NativeRequest::CreateTopic {
            name,
            partitions,
            configs,
            replication_factor,
        } => {
            ops::may_create_topic(shard, caller, &name)?;
            let partitions = if partitions <= 0 {
                shard.config.default_partitions
            } else {
                partitions
            };
            admin(
                shard,
                request_id,
                ShardCall::CreateTopic {
                    name,
                    partitions,
                    configs,
                    replication_factor,
                },
                schema::ResponseBody::CreateTopicResponse,
            )
            .await
        }
        NativeRequest::DeleteTopic { name } => {
            ops::may_topic(shard, caller, AclOperation::Delete, &name)?;
            admin(
                shard,
                request_id,
                ShardCall::DeleteTopic { name },
                schema::ResponseBody::DeleteTopicResponse,
            )
            .await
        }
        // Answered by `dispatch`, which keeps the memory of what they read.
        NativeRequest::Fetch { .. } | NativeRequest::ReplicaFetch { .. } => Err(
            BrokerError::Internal("a fetch reached the handler of other requests".into()),
        ),
        NativeRequest::ListOffsets {
            partitions,
            read_committed,
        } => list_offsets(shard, caller, request_id, partitions, read_committed).await,
        NativeRequest::CommitOffsets { group, offsets } => {
            commit_offsets(shard, caller, request_id, group, offsets).await
        }
        NativeRequest::FetchOffsets {
            group,
            topics,
            require_stable,
        } => {
            ops::may_group(shard, caller, AclOperation::Describe, &group)?;
            fetch_offsets(shard, caller, request_id, group, topics, require_stable).await
        }
        NativeRequest::ListGroups => list_groups(shard, caller, request_id).await,
        NativeRequest::DescribeTopicConfigs { name } => {
            ops::may_topic(shard, caller, AclOperation::DescribeConfigs, &name)?;
            describe_topic_configs(shard, request_id, &name)
        }
        NativeRequest::AlterTopicConfigs {
            name,
            set,
            delete,
            validate_only,
        } => {
            ops::may_topic(shard, caller, AclOperation::AlterConfigs, &name)?;
            alter_topic_configs(shard, request_id, &name, &set, &delete, validate_only).await
        }
        NativeRequest::DescribeCluster => describe_cluster(shard, request_id),
        NativeRequest::MovePartition {
            partition,
            replicas,
        } => {
            shard
                .authorizer
                .check_cluster(caller, AclOperation::Alter)?;
            ops::admin(
                shard,
                ShardCall::MovePartition {
                    partition,
                    replicas,
                },
            )
            .await?;
            empty_response(request_id, schema::ResponseBody::MovePartitionResponse)
        }
        NativeRequest::RaftMessages { messages } => {
            let _ = shard
                .router
                .call(shard, 0, ShardCall::RaftMessages { messages })
                .await?;
            empty_response(request_id, schema::ResponseBody::RaftMessagesResponse)
        }
        NativeRequest::ControllerCall { request } => {
            controller_call(shard, request_id, request).await
        }
        NativeRequest::InitProducer {
            transactional_id,
            timeout_ms,
            current,
        } => {
            let (producer_id, producer_epoch) =
                ops::init_producer(shard, caller, transactional_id, timeout_ms, current).await?;
            let mut w = ResponseWriter::new();
            let args = schema::InitProducerResponseArgs {
                producer_id,
                producer_epoch,
            };
            let body = schema::InitProducerResponse::create(&mut w.builder, &args);
            let body = (
                schema::ResponseBody::InitProducerResponse,
                body.as_union_value(),
            );
            Ok(w.finish(request_id, None, Some(body)))
        }
        NativeRequest::AddPartitionsToTxn {
            transactional_id,
            producer,
            partitions,
        } => {
            let results =
                ops::add_partitions_to_txn(shard, caller, transactional_id, producer, partitions)
                    .await;
            Ok(txn_partition_results(
                request_id,
                results,
                schema::ResponseBody::AddPartitionsToTxnResponse,
            ))
        }
        NativeRequest::AddOffsetsToTxn {
            transactional_id,
            producer,
            group,
        } => {
            ops::add_offsets_to_txn(shard, caller, transactional_id, producer, group).await?;
            empty_response(request_id, schema::ResponseBody::AddOffsetsToTxnResponse)
        }
        NativeRequest::EndTxn {
            transactional_id,
            producer,
            commit,
        } => {
            ops::end_txn(shard, caller, transactional_id, producer, commit).await?;
            empty_response(request_id, schema::ResponseBody::EndTxnResponse)
        }
        NativeRequest::TxnCommitOffsets {
            producer,
            group,
            offsets,
            transactional_id,
        } => {
            if shard.authorizer.enabled() {
                let id = transactional_id.as_deref().ok_or_else(|| {
                    BrokerError::InvalidRequest(
                        "with the authorizer on, TxnCommitOffsets names its transactional id"
                            .into(),
                    )
                })?;
                ops::may_txn(shard, caller, id)?;
            }
            let results =
                ops::txn_commit_offsets(shard, caller, group, producer, None, offsets).await?;
            Ok(txn_partition_results(
                request_id,
                results,
                schema::ResponseBody::TxnCommitOffsetsResponse,
            ))
        }
        NativeRequest::AlterScramCredentials {
            upsertions,
            deletions,
        } => {
            let results = crate::security::users::alter(shard, caller, upsertions, deletions).await;
            Ok(alter_scram_credentials_response(request_id, results))
        }
        NativeRequest::DescribeScramCredentials { users } => {
            shard
                .authorizer
                .check_cluster(caller, AclOperation::Describe)?;
            let results = crate::security::users::describe(shard, users);
            Ok(describe_scram_credentials_response(request_id, results))
        }
        NativeRequest::CreateAcls { acls } => {
            let results = crate::security::acl::create(shard, caller, acls).await;
            Ok(acl_results(request_id, &results))
        }
        NativeRequest::DescribeAcls { filter } => {
            shard
                .authorizer
                .check_cluster(caller, AclOperation::Describe)?;
            let acls = crate::security::acl::describe(shard, &filter?);
            Ok(describe_acls_response(request_id, &acls))
        }
        NativeRequest::DeleteAcls { filters } => {
            let results = crate::security::acl::delete(shard, caller, filters).await;
            Ok(delete_acls_response(request_id, results))
        }
        NativeRequest::AlterClientQuotas {
            entries,
            validate_only,
        } => {
            let results =
                crate::security::quotas::alter(shard, caller, entries, validate_only).await;
            Ok(quota_results(request_id, &results))
        }
        NativeRequest::DescribeClientQuotas { filter } => {
            let found = crate::security::quotas::describe(shard, caller, &filter?)?;
            Ok(describe_client_quotas_response(request_id, &found))
        }
        NativeRequest::Produce { .. } => {
            Err(BrokerError::Internal("produce is dispatched apart".into()))
        }
    }
}

fn quota_results(request_id: u64, results: &[BrokerResult<()>]) -> Vec<Bytes> {
    let mut w = ResponseWriter::new();
    let results = item_results(&mut w, results);
    let args = schema::AlterClientQuotasResponseArgs {
        results: Some(results),
    };
    let body = schema::AlterClientQuotasResponse::create(&mut w.builder, &args).as_union_value();
    w.finish(
        request_id,
        None,
        Some((schema::ResponseBody::AlterClientQuotasResponse, body)),
    )
}

/// Each item's outcome, in order (`ItemResult`).
fn item_results(
    w: &mut ResponseWriter,
    results: &[BrokerResult<()>],
) -> WIPOffset<Vector<'static, ForwardsUOffset<schema::ItemResult<'static>>>> {
    let results: Vec<_> = results
        .iter()
        .map(|result| {
            let (error, error_message) = error_fields(w, result.as_ref().err());
            let args = schema::ItemResultArgs {
                error,
                error_message,
            };
            schema::ItemResult::create(&mut w.builder, &args)
        })
        .collect();
    w.builder.create_vector(&results)
}

fn describe_client_quotas_response(
    request_id: u64,
    found: &[(
        weir_replication::QuotaEntity,
        std::collections::BTreeMap<String, u64>,
    )],
) -> Vec<Bytes> {
    use weir_replication::QuotaName;
    let mut w = ResponseWriter::new();
    let entries: Vec<_> = found
        .iter()
        .map(|(entity, keys)| {
            let b = &mut w.builder;
            let part = |b: &mut FlatBufferBuilder<'static>, part: &Option<QuotaName>| match part {
                Some(QuotaName::Named(name)) => (Some(b.create_string(name)), false),
                Some(QuotaName::Default) => (None, true),
                None => (None, false),
            };
            let (user, user_default) = part(b, &entity.user);
            let (client_id, client_id_default) = part(b, &entity.client_id);
            let args = schema::QuotaEntityArgs {
                user,
                user_default,
                client_id,
                client_id_default,
            };
            let entity = schema::QuotaEntity::create(b, &args);
            let values: Vec<_> = keys
                .iter()
                .map(|(key, value)| {
                    let args = schema::QuotaValueArgs {
                        key: Some(b.create_string(key)),
                        value: *value as f64,
                    };
                    schema::QuotaValue::create(b, &args)
                })
                .collect();
            let values = b.create_vector(&values);
            let args = schema::QuotaEntryArgs {
                entity: Some(entity),
                values: Some(values),
            };
            schema::QuotaEntry::create(b, &args)
        })
        .collect();
    let entries = w.builder.create_vector(&entries);
    let args = schema::DescribeClientQuotasResponseArgs {
        entries: Some(entries),
    };
    let body = schema::DescribeClientQuotasResponse::create(&mut w.builder, &args).as_union_value();
    w.finish(
        request_id,
        None,
        Some((schema::ResponseBody::DescribeClientQuotasResponse, body)),
    )
}

fn acl_binding<'a>(
    b: &mut FlatBufferBuilder<'a>,
    acl: &weir_replication::AclBinding,
) -> WIPOffset<schema::AclBinding<'a>> {
    let args = schema::AclBindingArgs {
        resource_type: acl.resource_type.id(),
        resource_name: Some(b.create_string(&acl.resource_name)),
        pattern: acl.pattern.id(),
        principal: Some(b.create_string(&acl.principal)),
        host: Some(b.create_string(&acl.host)),
        operation: acl.operation.id(),
        permission: acl.permission.id(),
    };
    schema::AclBinding::create(b, &args)
}

fn acl_results(request_id: u64, results: &[BrokerResult<()>]) -> Vec<Bytes> {
    let mut w = ResponseWriter::new();
    let results = item_results(&mut w, results);
    let args = schema::CreateAclsResponseArgs {
        results: Some(results),
    };
    let body = schema::CreateAclsResponse::create(&mut w.builder, &args).as_union_value();
    w.finish(
        request_id,
        None,
        Some((schema::ResponseBody::CreateAclsResponse, body)),
    )
}

fn describe_acls_response(request_id: u64, acls: &[weir_replication::AclBinding]) -> Vec<Bytes> {
    let mut w = ResponseWriter::new();
    let acls: Vec<_> = acls
        .iter()
        .map(|a| acl_binding(&mut w.builder, a))
        .collect();
    let acls = w.builder.create_vector(&acls);
    let args = schema::DescribeAclsResponseArgs { acls: Some(acls) };
    let body = schema::DescribeAclsResponse::create(&mut w.builder, &args).as_union_value();
    w.finish(
        request_id,
        None,
        Some((schema::ResponseBody::DescribeAclsResponse, body)),
    )
}

fn delete_acls_response(
    request_id: u64,
    results: Vec<BrokerResult<Vec<weir_replication::AclBinding>>>,
) -> Vec<Bytes> {
    let mut w = ResponseWriter::new();
    let results: Vec<_> = results
        .iter()
        .map(|result| {
            let (error, error_message) = error_fields(&mut w, result.as_ref().err());
            let acls: Vec<_> = result
                .iter()
                .flatten()
                .map(|a| acl_binding(&mut w.builder, a))
                .collect();
            let acls = w.builder.create_vector(&acls);
            let args = schema::DeleteAclsFilterResultArgs {
                error,
                error_message,
                acls: Some(acls),
            };
            schema::DeleteAclsFilterResult::create(&mut w.builder, &args)
        })
        .collect();
    let results = w.builder.create_vector(&results);
    let args = schema::DeleteAclsResponseArgs {
        results: Some(results),
    };
    let body = schema::DeleteAclsResponse::create(&mut w.builder, &args).as_union_value();
    w.finish(
        request_id,
        None,
        Some((schema::ResponseBody::DeleteAclsResponse, body)),
    )
}

fn alter_scram_credentials_response(
    request_id: u64,
    results: Vec<(String, BrokerResult<()>)>,
) -> Vec<Bytes> {
    let mut w = ResponseWriter::new();
    let results: Vec<_> = results
        .into_iter()
        .map(|(user, result)| {
            let user = w.builder.create_string(&user);
            let (error, message) = match result {
                Ok(()) => (ErrorCode::None, None),
                Err(e) => (e.code(), Some(w.builder.create_string(&e.to_string()))),
            };
            let args = schema::UserResultArgs {
                user: Some(user),
                error,
                error_message: message,
            };
            schema::UserResult::create(&mut w.builder, &args)
        })
        .collect();
    let results = w.builder.create_vector(&results);
    let args = schema::AlterScramCredentialsResponseArgs {
        results: Some(results),
    };
    let body =
        schema::AlterScramCredentialsResponse::create(&mut w.builder, &args).as_union_value();
    w.finish(
        request_id,
        None,
        Some((schema::ResponseBody::AlterScramCredentialsResponse, body)),
    )
}

fn describe_scram_credentials_response(
    request_id: u64,
    results: Vec<crate::security::users::Described>,
) -> Vec<Bytes> {
    let mut w = ResponseWriter::new();
    let users: Vec<_> = results
        .into_iter()
        .map(|(user, result)| {
            let user = w.builder.create_string(&user);
            let (error, message, credentials) = match result {
                Ok(credentials) => {
                    let credentials: Vec<_> = credentials
                        .into_iter()
                        .map(|(mechanism, iterations)| {
                            let args = schema::ScramCredentialInfoArgs {
                                mechanism: mechanism.id(),
                                iterations: iterations as i32,
                            };
                            schema::ScramCredentialInfo::create(&mut w.builder, &args)
                        })
                        .collect();
                    (
                        ErrorCode::None,
                        None,
                        Some(w.builder.create_vector(&credentials)),
                    )
                }
                Err(e) => (
                    e.code(),
                    Some(w.builder.create_string(&e.to_string())),
                    None,
                ),
            };
            let args = schema::UserCredentialsArgs {
                user: Some(user),
                error,
                error_message: message,
                credentials,
            };
            schema::UserCredentials::create(&mut w.builder, &args)
        })
        .collect();
    let users = w.builder.create_vector(&users);
    let args = schema::DescribeScramCredentialsResponseArgs { users: Some(users) };
    let body =
        schema::DescribeScramCredentialsResponse::create(&mut w.builder, &args).as_union_value();
    w.finish(
        request_id,
        None,
        Some((schema::ResponseBody::DescribeScramCredentialsResponse, body)),
    )
}

/// The per-partition errors of AddPartitionsToTxn and TxnCommitOffsets.
fn txn_partition_results(
    request_id: u64,
    results: Vec<(TopicPartition, BrokerResult<()>)>,
    body_type: schema::ResponseBody,
) -> Vec<Bytes> {
    let mut w = ResponseWriter::new();
    let results = results
        .into_iter()
        .map(|(tp, r)| (tp, r.err().map_or(ErrorCode::None, |e| e.code())))
        .collect();
    let topics = per_topic(
        &mut w,
        results,
        |w, partition, error| {
            let args = schema::TxnPartitionResultArgs { partition, error };
            schema::TxnPartitionResult::create(&mut w.builder, &args)
        },
        |b, name, partitions| {
            let args = schema::TxnTopicResultArgs {
                name: Some(name),
                partitions: Some(partitions),
            };
            schema::TxnTopicResult::create(b, &args)
        },
    );
    let body = if body_type == schema::ResponseBody::TxnCommitOffsetsResponse {
        let args = schema::TxnCommitOffsetsResponseArgs {
            topics: Some(topics),
        };
        schema::TxnCommitOffsetsResponse::create(&mut w.builder, &args).as_union_value()
    } else {
        let args = schema::AddPartitionsToTxnResponseArgs {
            topics: Some(topics),
        };
        schema::AddPartitionsToTxnResponse::create(&mut w.builder, &args).as_union_value()
    };
    w.finish(request_id, None, Some((body_type, body)))
}

/// A response whose body has no fields.
fn empty_response(request_id: u64, body_type: schema::ResponseBody) -> BrokerResult<Vec<Bytes>> {
    let mut w = ResponseWriter::new();
    let body = match body_type {
        schema::ResponseBody::MovePartitionResponse => schema::MovePartitionResponse::create(
            &mut w.builder,
            &schema::MovePartitionResponseArgs {},
        )
        .as_union_value(),
        schema::ResponseBody::AddOffsetsToTxnResponse => schema::AddOffsetsToTxnResponse::create(
            &mut w.builder,
            &schema::AddOffsetsToTxnResponseArgs {},
        )
        .as_union_value(),
        schema::ResponseBody::EndTxnResponse => {
            schema::EndTxnResponse::create(&mut w.builder, &schema::EndTxnResponseArgs {})
                .as_union_value()
        }
        _ => schema::RaftMessagesResponse::create(
            &mut w.builder,
            &schema::RaftMessagesResponseArgs {},
        )
        .as_union_value(),
    };
    Ok(w.finish(request_id, None, Some((body_type, body))))
}

fn describe_cluster(shard: &Shard, request_id: u64) -> BrokerResult<Vec<Bytes>> {
    let image = shard.image();
    let controller = shard.controller_node();
    let mut w = ResponseWriter::new();
    let cluster_id = w.string(&image.cluster_id);
    let brokers: Vec<_> = image
        .brokers
        .values()
        .map(|broker| {
            let host = w.string(&broker.endpoint.host);
            schema::ClusterBroker::create(
                &mut w.builder,
                &schema::ClusterBrokerArgs {
                    node_id: broker.node,
                    host: Some(host),
                    native_port: i32::from(broker.endpoint.native_port),
                    kafka_port: i32::from(broker.endpoint.kafka_port),
                    shards: broker.shards as i32,
                    fenced: broker.fenced,
                },
            )
        })
        .collect();
    let brokers = w.builder.create_vector(&brokers);
    let body = schema::DescribeClusterResponse::create(
        &mut w.builder,
        &schema::DescribeClusterResponseArgs {
            cluster_id: Some(cluster_id),
            controller: controller.unwrap_or(-1),
            brokers: Some(brokers),
        },
    );
    Ok(w.finish(
        request_id,
        None,
        Some((
            schema::ResponseBody::DescribeClusterResponse,
            body.as_union_value(),
        )),
    ))
}

/// Another broker's request for this one as the active controller.
async fn controller_call(
    shard: &Rc<Shard>,
    request_id: u64,
    request: weir_replication::ControllerRequest,
) -> BrokerResult<Vec<Bytes>> {
    let reply = match shard
        .router
        .call(shard, 0, ShardCall::ControllerCall { request })
        .await?
    {
        crate::router::ShardAnswer::ControllerReply(reply) => reply,
        other => return Err(ops::unexpected(other)),
    };
    let mut w = ResponseWriter::new();
    let encoded = crate::cluster::peers::encode_reply(&reply);
    let slice = w.add_records(vec![Bytes::from(encoded)]);
    let body = schema::ControllerCallResponse::create(
        &mut w.builder,
        &schema::ControllerCallResponseArgs { body: Some(&slice) },
    );
    Ok(w.finish(
        request_id,
        None,
        Some((
            schema::ResponseBody::ControllerCallResponse,
            body.as_union_value(),
        )),
    ))
}

/// A follower's fetch (brokers only): `request` is the request id, the follower, the
/// longest wait, min and max bytes. Answers with what it read and the memory that holds.
async fn replica_fetch(
    shard: &Rc<Shard>,
    caller: &Caller,
    (request_id, replica, wait, (min_bytes, max_bytes)): (u64, i32, Duration, (i32, i32)),
    partitions: &[(TopicPartition, weir_replication::FetchPosition, i32)],
) -> BrokerResult<(Vec<Bytes>, Option<MemoryPermit>)> {
    shard
        .authorizer
        .check_cluster(caller, AclOperation::ClusterAction)?;
    let read = ops::replica_fetch(shard, replica, wait, min_bytes, max_bytes, partitions).await;
    Ok((
        replica_fetch_response(request_id, read.results),
        read.memory,
    ))
}

fn replica_fetch_response(request_id: u64, results: ops::ReplicaFetchResults) -> Vec<Bytes> {
    let mut w = ResponseWriter::new();
    let mut partitions = Vec::with_capacity(results.len());
    for (tp, result) in results {
        let topic = w.string(&tp.topic);
        let mut args = schema::ReplicaFetchResultArgs {
            topic: Some(topic),
            partition: tp.partition,
            ..Default::default()
        };
        let records;
        match result {
            Ok(fetched) => {
                args.high_watermark = fetched.high_watermark;
                args.log_start_offset = fetched.log_start_offset;
                args.log_end_offset = fetched.log_end_offset;
                if let Some((epoch, end_offset)) = fetched.diverging {
                    args.diverging_epoch = epoch;
                    args.diverging_end_offset = end_offset;
                }
                records = w.add_records(fetched.batches);
                args.records = Some(&records);
            }
            Err(error) => {
                if let BrokerError::FetchRefused(weir_replication::FetchRefusal::OutOfRange {
                    log_start_offset,
                    log_end_offset,
                }) = &error
                {
                    args.log_start_offset = *log_start_offset;
                    args.log_end_offset = *log_end_offset;
                }
                let (code, message) = error_fields(&mut w, Some(&error));
                args.error = code;
                args.error_message = message;
            }
        }
        partitions.push(schema::ReplicaFetchResult::create(&mut w.builder, &args));
    }
    let partitions = w.builder.create_vector(&partitions);
    let body = schema::ReplicaFetchResponse::create(
        &mut w.builder,
        &schema::ReplicaFetchResponseArgs {
            partitions: Some(partitions),
        },
    );
    w.finish(
        request_id,
        None,
        Some((
            schema::ResponseBody::ReplicaFetchResponse,
            body.as_union_value(),
        )),
    )
}

fn handshake(
    shard: &Shard,
    request_id: u64,
    client_id: &str,
    min: u16,
    max: u16,
) -> BrokerResult<Vec<Bytes>> {
    if !(min..=max).contains(&PROTOCOL_VERSION) {
        return Err(BrokerError::InvalidRequest(format!(
            "client {client_id:?} speaks versions {min}..={max}; this broker speaks {PROTOCOL_VERSION}"
        )));
    }
    let mut w = ResponseWriter::new();
    let broker_version = w.string(env!("CARGO_PKG_VERSION"));
    let body = schema::HandshakeResponse::create(
        &mut w.builder,
        &schema::HandshakeResponseArgs {
            version: PROTOCOL_VERSION,
            broker_version: Some(broker_version),
            max_frame_bytes: shard.config.frame_bytes_max as u32,
            node_id: shard.config.node_id,
            starting: !shard.is_ready(),
        },
    );
    Ok(w.finish(
        request_id,
        None,
        Some((
            schema::ResponseBody::HandshakeResponse,
            body.as_union_value(),
        )),
    ))
}

async fn finish_produce(request_id: u64, acks: Acks, started: StartedProduce) -> Option<Reply> {
    let results = ops::finish_produce(started).await;
    if acks == Acks::None {
        return None;
    }
    let failed = results.iter().any(|(_, r)| r.is_err());
    let mut w = ResponseWriter::new();
    let topics = per_topic(
        &mut w,
        results,
        |w, partition, result: BrokerResult<Appended>| {
            let (error, error_message) = error_fields(w, result.as_ref().err());
            let (base_offset, log_start_offset) = result
                .as_ref()
                .map_or((-1, -1), |a| (a.base_offset, a.log_start_offset));
            let args = schema::ProducePartitionResultArgs {
                partition,
                error,
                error_message,
                base_offset,
                log_start_offset,
            };
            schema::ProducePartitionResult::create(&mut w.builder, &args)
        },
        |b, name, partitions| {
            let args = schema::ProduceTopicResultArgs {
                name: Some(name),
                partitions: Some(partitions),
            };
            schema::ProduceTopicResult::create(b, &args)
        },
    );
    let body = schema::ProduceResponse::create(
        &mut w.builder,
        &schema::ProduceResponseArgs {
            topics: Some(topics),
        },
    );
    Some(Reply {
        parts: w.finish(
            request_id,
            None,
            Some((schema::ResponseBody::ProduceResponse, body.as_union_value())),
        ),
        failed,
        memory: None,
    })
}

type TableVector<T> = WIPOffset<Vector<'static, ForwardsUOffset<T>>>;

/// One table per topic, each holding one table per partition, topics in first-seen order:
/// the shape of every per-partition response.
fn per_topic<V, P: 'static, T: 'static>(
    w: &mut ResponseWriter,
    results: Vec<(TopicPartition, V)>,
    mut partition: impl FnMut(&mut ResponseWriter, i32, V) -> WIPOffset<P>,
    topic: impl Fn(
        &mut FlatBufferBuilder<'static>,
        WIPOffset<&'static str>,
        TableVector<P>,
    ) -> WIPOffset<T>,
) -> TableVector<T> {
    let mut topics = Vec::new();
    for (name, group) in ops::group_by_topic(results) {
        let partitions: Vec<_> = group
            .into_iter()
            .map(|(p, value)| partition(w, p, value))
            .collect();
        let name = w.string(&name);
        let partitions = w.builder.create_vector(&partitions);
        topics.push(topic(&mut w.builder, name, partitions));
    }
    w.builder.create_vector(&topics)
}

async fn admin(
    shard: &Rc<Shard>,
    request_id: u64,
    call: ShardCall,
    body_type: schema::ResponseBody,
) -> BrokerResult<Vec<Bytes>> {
    ops::admin(shard, call).await?;
    let mut w = ResponseWriter::new();
    let body = match body_type {
        schema::ResponseBody::CreateTopicResponse => {
            schema::CreateTopicResponse::create(&mut w.builder, &schema::CreateTopicResponseArgs {})
                .as_union_value()
        }
        _ => {
            schema::DeleteTopicResponse::create(&mut w.builder, &schema::DeleteTopicResponseArgs {})
                .as_union_value()
        }
    };
    Ok(w.finish(request_id, None, Some((body_type, body))))
}

async fn metadata(
    shard: &Rc<Shard>,
    caller: &Caller,
    request_id: u64,
    topics: Option<Vec<String>>,
) -> BrokerResult<Vec<Bytes>> {
    let image = shard.image();
    // Topics the caller may not describe: left out of "every topic"; a named one is
    // answered AuthorizationFailed whether it exists or not.
    let described = |name: &String| ops::may_topic(shard, caller, AclOperation::Describe, name);
    let (names, refused): (Vec<String>, Vec<String>) = match topics {
        None => (
            image
                .topics
                .keys()
                .filter(|name| described(name).is_ok())
                .cloned()
                .collect(),
            Vec::new(),
        ),
        Some(names) => names.into_iter().partition(|name| described(name).is_ok()),
    };
    let statuses = ops::partition_statuses(shard, ops::partitions_of(shard, &names)).await;
    let mut w = ResponseWriter::new();
    let brokers: Vec<_> = image
        .live_brokers()
        .map(|broker| {
            let host = w.string(&broker.endpoint.host);
            schema::BrokerInfo::create(
                &mut w.builder,
                &schema::BrokerInfoArgs {
                    node_id: broker.node,
                    host: Some(host),
                    native_port: i32::from(broker.endpoint.native_port),
                    kafka_port: i32::from(broker.endpoint.kafka_port),
                },
            )
        })
        .collect();
    let brokers = w.builder.create_vector(&brokers);
    let mut topic_infos = Vec::with_capacity(names.len());
    for name in &names {
        let info = topic_info(&mut w, shard, &image, name, &statuses);
        topic_infos.push(info);
    }
    for name in &refused {
        let args = schema::TopicInfoArgs {
            name: Some(w.string(name)),
            error: ErrorCode::AuthorizationFailed,
            ..Default::default()
        };
        topic_infos.push(schema::TopicInfo::create(&mut w.builder, &args));
    }
    let topics = w.builder.create_vector(&topic_infos);
    let body = schema::MetadataResponse::create(
        &mut w.builder,
        &schema::MetadataResponseArgs {
            brokers: Some(brokers),
            topics: Some(topics),
        },
    );
    Ok(w.finish(
        request_id,
        None,
        Some((
            schema::ResponseBody::MetadataResponse,
            body.as_union_value(),
        )),
    ))
}

fn topic_info<'a>(
    w: &mut ResponseWriter,
    shard: &Shard,
    image: &crate::metadata::MetadataImage,
    name: &str,
    statuses: &[(TopicPartition, BrokerResult<PartitionStatus>)],
) -> flatbuffers::WIPOffset<schema::TopicInfo<'a>> {
    let name_offset = w.string(name);
    let Some(topic) = image.topic(name) else {
        let args = schema::TopicInfoArgs {
            name: Some(name_offset),
            error: ErrorCode::UnknownTopicOrPartition,
            ..Default::default()
        };
        return schema::TopicInfo::create(&mut w.builder, &args);
    };
    let partitions: Vec<_> = statuses
        .iter()
        .filter(|(tp, _)| tp.topic == name)
        .filter_map(|(tp, status)| {
            let state = topic.partition(tp.partition)?;
            // Offsets and sizes are the leader's: this broker knows them when it leads.
            let status = status.as_ref().ok().filter(|_| state.leader == shard.node);
            let replicas: Vec<i32> = state.nodes().collect();
            let replicas = w.builder.create_vector(&replicas);
            let isr = w.builder.create_vector(&state.isr);
            Some(schema::PartitionInfo::create(
                &mut w.builder,
                &schema::PartitionInfoArgs {
                    partition: tp.partition,
                    leader: state.leader,
                    shard: state.replica(state.leader).map_or(-1, |r| r.shard as i32),
                    log_start_offset: status.map_or(-1, |s| s.log_start_offset),
                    high_watermark: status.map_or(-1, |s| s.high_watermark),
                    size_bytes: status.map_or(-1, |s| s.size_bytes as i64),
                    leader_epoch: state.leader_epoch,
                    replicas: Some(replicas),
                    isr: Some(isr),
                },
            ))
        })
        .collect();
    // The topic's overrides, with the values DescribeConfigs reports for them.
    let overrides = crate::topic::described_overrides(&shard.topic_defaults, &topic.configs)
        .unwrap_or_else(|_| {
            let raw = topic.configs.iter();
            raw.map(|(key, value)| (key.as_str(), value.clone()))
                .collect()
        });
    let configs: Vec<_> = overrides
        .iter()
        .map(|(key, value)| {
            let (key, value) = (w.string(key), w.string(value));
            schema::ConfigEntry::create(
                &mut w.builder,
                &schema::ConfigEntryArgs {
                    key: Some(key),
                    value: Some(value),
                    source: schema::ConfigSource::Topic,
                },
            )
        })
        .collect();
    let partitions = w.builder.create_vector(&partitions);
    let configs = w.builder.create_vector(&configs);
    schema::TopicInfo::create(
        &mut w.builder,
        &schema::TopicInfoArgs {
            name: Some(name_offset),
            error: ErrorCode::None,
            internal: topic.internal,
            partitions: Some(partitions),
            configs: Some(configs),
        },
    )
}

/// Reads the partitions (waiting as `ops::fetch` does) and answers with their batches.
/// `limits`: max wait (ms), min bytes, max bytes.
async fn fetch(
    shard: &Rc<Shard>,
    caller: &Caller,
    request_id: u64,
    (max_wait_ms, min_bytes, max_bytes): (i32, i32, i32),
    partitions: Vec<(TopicPartition, i64, i32)>,
    read_committed: bool,
) -> BrokerResult<(Vec<Bytes>, Option<MemoryPermit>)> {
    let wait = Duration::from_millis(u64::try_from(max_wait_ms).unwrap_or(0));
    let partitions: Vec<FetchPartition> = partitions
        .into_iter()
        .map(|(partition, offset, max_bytes)| FetchPartition {
            partition,
            offset,
            max_bytes,
        })
        .collect();
    let limits = (min_bytes, max_bytes);
    let read = ops::fetch(shard, caller, wait, limits, &partitions, read_committed).await;
    Ok((fetch_response(request_id, read.results), read.memory))
}

fn fetch_response(request_id: u64, results: FetchResults) -> Vec<Bytes> {
    let mut w = ResponseWriter::new();
    let topics = per_topic(
        &mut w,
        results,
        |w, partition, result| {
            let (error, error_message) = error_fields(w, result.as_ref().err());
            let (batches, status, aborted) = match result {
                Ok(fetched) => (fetched.batches, Some(fetched.status), fetched.aborted),
                Err(_) => (Vec::new(), None, Vec::new()),
            };
            let records = w.add_records(batches);
            let aborted: Vec<_> = aborted
                .iter()
                .map(|a| schema::AbortedTransaction::new(a.producer_id, a.first_offset))
                .collect();
            let aborted = w.builder.create_vector(&aborted);
            let args = schema::FetchPartitionResultArgs {
                partition,
                error,
                error_message,
                high_watermark: status.map_or(-1, |s| s.high_watermark),
                log_start_offset: status.map_or(-1, |s| s.log_start_offset),
                records: Some(&records),
                last_stable_offset: status.map_or(-1, |s| s.last_stable_offset),
                aborted: Some(aborted),
            };
            schema::FetchPartitionResult::create(&mut w.builder, &args)
        },
        |b, name, partitions| {
            let args = schema::FetchTopicResultArgs {
                name: Some(name),
                partitions: Some(partitions),
            };
            schema::FetchTopicResult::create(b, &args)
        },
    );
    let body = schema::FetchResponse::create(
        &mut w.builder,
        &schema::FetchResponseArgs {
            topics: Some(topics),
        },
    );
    w.finish(
        request_id,
        None,
        Some((schema::ResponseBody::FetchResponse, body.as_union_value())),
    )
}

async fn list_offsets(
    shard: &Rc<Shard>,
    caller: &Caller,
    request_id: u64,
    partitions: Vec<(TopicPartition, OffsetSpec, i64)>,
    read_committed: bool,
) -> BrokerResult<Vec<Bytes>> {
    let results = ops::list_offsets(shard, caller, partitions, read_committed).await;
    let mut w = ResponseWriter::new();
    let topics = per_topic(
        &mut w,
        results,
        |w, partition, result| {
            let (error, error_message) = error_fields(w, result.as_ref().err());
            let (offset, timestamp) = result.as_ref().map_or((-1, -1), |r| *r);
            let args = schema::ListOffsetsPartitionResultArgs {
                partition,
                error,
                error_message,
                offset,
                timestamp,
            };
            schema::ListOffsetsPartitionResult::create(&mut w.builder, &args)
        },
        |b, name, partitions| {
            let args = schema::ListOffsetsTopicResultArgs {
                name: Some(name),
                partitions: Some(partitions),
            };
            schema::ListOffsetsTopicResult::create(b, &args)
        },
    );
    let body = schema::ListOffsetsResponse::create(
        &mut w.builder,
        &schema::ListOffsetsResponseArgs {
            topics: Some(topics),
        },
    );
    Ok(w.finish(
        request_id,
        None,
        Some((
            schema::ResponseBody::ListOffsetsResponse,
            body.as_union_value(),
        )),
    ))
}

async fn commit_offsets(
    shard: &Rc<Shard>,
    caller: &Caller,
    request_id: u64,
    group: String,
    offsets: Vec<crate::router::OffsetCommit>,
) -> BrokerResult<Vec<Bytes>> {
    let results: Vec<(TopicPartition, ErrorCode)> =
        ops::commit_offsets(shard, caller, group, MemberClaim::none(), offsets)
            .await?
            .into_iter()
            .map(|(tp, result)| (tp, result.map_or_else(|e| e.code(), |()| ErrorCode::None)))
            .collect();
    let mut w = ResponseWriter::new();
    let topics = per_topic(
        &mut w,
        results,
        |w, partition, error| {
            schema::CommitPartitionResult::create(
                &mut w.builder,
                &schema::CommitPartitionResultArgs { partition, error },
            )
        },
        |b, name, partitions| {
            let args = schema::CommitTopicResultArgs {
                name: Some(name),
                partitions: Some(partitions),
            };
            schema::CommitTopicResult::create(b, &args)
        },
    );
    let body = schema::CommitOffsetsResponse::create(
        &mut w.builder,
        &schema::CommitOffsetsResponseArgs {
            topics: Some(topics),
        },
    );
    Ok(w.finish(
        request_id,
        None,
        Some((
            schema::ResponseBody::CommitOffsetsResponse,
            body.as_union_value(),
        )),
    ))
}

async fn fetch_offsets(
    shard: &Rc<Shard>,
    caller: &Caller,
    request_id: u64,
    group: String,
    topics: Option<Vec<(String, Option<Vec<i32>>)>>,
    require_stable: bool,
) -> BrokerResult<Vec<Bytes>> {
    let unstable = if require_stable {
        ops::unstable_offsets(shard, group.clone()).await?
    } else {
        Vec::new()
    };
    let committed = ops::committed_offsets(shard, group).await?;
    let lookup = |tp: &TopicPartition| {
        committed
            .iter()
            .find(|c| c.partition == *tp)
            .map(|c| (c.offset, c.metadata.clone()))
    };
    let described = |topic: &str| ops::may_topic(shard, caller, AclOperation::Describe, topic);
    let wanted: Vec<(TopicPartition, Option<(i64, String)>)> = match topics {
        // All of the group's offsets: those of topics the caller may not describe are
        // left out; a topic named in the request is answered with the refusal.
        None => committed
            .iter()
            .filter(|c| described(&c.partition.topic).is_ok())
            .map(|c| (c.partition.clone(), Some((c.offset, c.metadata.clone()))))
            .collect(),
        Some(topics) => {
            let image = shard.image();
            topics
                .into_iter()
                .flat_map(|(topic, partitions)| {
                    let partitions = partitions.unwrap_or_else(|| match image.topic(&topic) {
                        Some(t) => (0..t.partition_count()).collect(),
                        None => committed
                            .iter()
                            .filter(|c| c.partition.topic == topic)
                            .map(|c| c.partition.partition)
                            .collect(),
                    });
                    partitions.into_iter().map(move |partition| TopicPartition {
                        topic: topic.clone(),
                        partition,
                    })
                })
                .map(|tp| {
                    let found = lookup(&tp);
                    (tp, found)
                })
                .collect()
        }
    };
    let wanted: Vec<_> = wanted
        .into_iter()
        .map(|(tp, found)| {
            let error = if described(&tp.topic).is_err() {
                ErrorCode::AuthorizationFailed
            } else if unstable.contains(&tp) {
                ErrorCode::UnstableOffsetCommit
            } else {
                ErrorCode::None
            };
            (tp, (found, error))
        })
        .collect();
    let mut w = ResponseWriter::new();
    let topics = per_topic(
        &mut w,
        wanted,
        |w, partition, (found, error): (Option<(i64, String)>, ErrorCode)| {
            let (found, offset) = match error {
                ErrorCode::None => {
                    let offset = found.as_ref().map_or(-1, |(o, _)| *o);
                    (found, offset)
                }
                _ => (None, -1),
            };
            let metadata = found.as_ref().map(|(_, m)| w.string(m));
            let args = schema::CommittedPartitionArgs {
                partition,
                offset,
                metadata,
                error,
            };
            schema::CommittedPartition::create(&mut w.builder, &args)
        },
        |b, name, partitions| {
            let args = schema::CommittedTopicArgs {
                name: Some(name),
                partitions: Some(partitions),
            };
            schema::CommittedTopic::create(b, &args)
        },
    );
    let body = schema::FetchOffsetsResponse::create(
        &mut w.builder,
        &schema::FetchOffsetsResponseArgs {
            topics: Some(topics),
        },
    );
    Ok(w.finish(
        request_id,
        None,
        Some((
            schema::ResponseBody::FetchOffsetsResponse,
            body.as_union_value(),
        )),
    ))
}

async fn list_groups(
    shard: &Rc<Shard>,
    caller: &Caller,
    request_id: u64,
) -> BrokerResult<Vec<Bytes>> {
    let groups = ops::list_groups_described(shard, caller).await?;
    let mut w = ResponseWriter::new();
    let names: Vec<_> = groups.iter().map(|(g, _, _)| w.string(g)).collect();
    let groups = w.builder.create_vector(&names);
    let body = schema::ListGroupsResponse::create(
        &mut w.builder,
        &schema::ListGroupsResponseArgs {
            groups: Some(groups),
        },
    );
    Ok(w.finish(
        request_id,
        None,
        Some((
            schema::ResponseBody::ListGroupsResponse,
            body.as_union_value(),
        )),
    ))
}

fn config_source(source: ConfigSource) -> schema::ConfigSource {
    match source {
        ConfigSource::Topic => schema::ConfigSource::Topic,
        ConfigSource::Broker => schema::ConfigSource::Broker,
        ConfigSource::Default => schema::ConfigSource::Default,
    }
}

fn describe_topic_configs(shard: &Shard, request_id: u64, name: &str) -> BrokerResult<Vec<Bytes>> {
    let described = ops::describe_topic_configs(shard, name)?;
    let mut w = ResponseWriter::new();
    let configs: Vec<_> = described
        .iter()
        .map(|config| {
            let (key, value) = (w.string(config.key.name), w.string(&config.value));
            schema::ConfigEntry::create(
                &mut w.builder,
                &schema::ConfigEntryArgs {
                    key: Some(key),
                    value: Some(value),
                    source: config_source(config.source),
                },
            )
        })
        .collect();
    let configs = w.builder.create_vector(&configs);
    let body = schema::DescribeTopicConfigsResponse::create(
        &mut w.builder,
        &schema::DescribeTopicConfigsResponseArgs {
            configs: Some(configs),
        },
    );
    Ok(w.finish(
        request_id,
        None,
        Some((
            schema::ResponseBody::DescribeTopicConfigsResponse,
            body.as_union_value(),
        )),
    ))
}

/// `set` overrides keys, `delete` removes overrides: IncrementalAlterConfigs' SET and
/// DELETE, through the same operation.
async fn alter_topic_configs(
    shard: &Rc<Shard>,
    request_id: u64,
    name: &str,
    set: &[(String, String)],
    delete: &[String],
    validate_only: bool,
) -> BrokerResult<Vec<Bytes>> {
    let changes: Vec<(&str, ConfigChange<'_>)> = set
        .iter()
        .map(|(key, value)| (key.as_str(), ConfigChange::Set(value)))
        .chain(
            delete
                .iter()
                .map(|key| (key.as_str(), ConfigChange::Delete)),
        )
        .collect();
    ops::alter_topic_configs(shard, name, &changes, validate_only).await?;
    let mut w = ResponseWriter::new();
    let body = schema::AlterTopicConfigsResponse::create(
        &mut w.builder,
        &schema::AlterTopicConfigsResponseArgs {},
    );
    Ok(w.finish(
        request_id,
        None,
        Some((
            schema::ResponseBody::AlterTopicConfigsResponse,
            body.as_union_value(),
        )),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The native protocol's sources carry Kafka's codes, as `topic::ConfigSource` does.
    #[test]
    fn config_sources_keep_kafka_codes() {
        for source in [
            ConfigSource::Topic,
            ConfigSource::Broker,
            ConfigSource::Default,
        ] {
            assert_eq!(config_source(source).0, source as i8, "{source:?}");
        }
    }
}
