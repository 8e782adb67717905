//! Users and their SCRAM credentials, as Kafka's DescribeUserScramCredentials and
//! AlterUserScramCredentials (KIP-554) manage them, for both protocols. A credential
//! arrives as Kafka's admin clients send it: salt, salted password and iterations,
//! computed by the client, so the password itself never crosses the network.

use std::rc::Rc;

use kafka_protocol::ResponseError;
use weir_replication::{ScramCredential, ScramMechanism};

use super::{Caller, scram};
use crate::error::{BrokerError, BrokerResult};
use crate::ops;
use crate::router::ShardCall;
use crate::shard::Shard;

/// A credential to set.
#[derive(Debug, Clone)]
pub struct Upsertion {
    pub user: String,
    /// Kafka's mechanism id (1: SCRAM-SHA-256, 2: SCRAM-SHA-512).
    pub mechanism: i8,
    pub iterations: i32,
    pub salt: Vec<u8>,
    pub salted_password: Vec<u8>,
}

/// A credential to remove.
#[derive(Debug, Clone)]
pub struct Deletion {
    pub user: String,
    pub mechanism: i8,
}

/// The longest user name accepted.
const USER_NAME_BYTES_MAX: usize = 1024;

fn kafka_error(error: ResponseError, message: String) -> BrokerError {
    BrokerError::Kafka {
        code: error.code(),
        message,
    }
}

fn mechanism(id: i8) -> BrokerResult<ScramMechanism> {
    ScramMechanism::from_id(id).ok_or_else(|| {
        kafka_error(
            ResponseError::UnsupportedSaslMechanism,
            format!("unknown SCRAM mechanism {id}"),
        )
    })
}

/// Applies the changes, Kafka's way: per user, all of its changes or (if one of them is
/// wrong) none; the result of each user, in the order users first appear. Every user is
/// refused unless `caller` may manage security (`super::may_manage_security`).
pub async fn alter(
    shard: &Rc<Shard>,
    caller: &Caller,
    upsertions: Vec<Upsertion>,
    deletions: Vec<Deletion>,
) -> Vec<(String, BrokerResult<()>)> {
    let allowed = super::may_manage_security(shard, caller);
    let image = shard.image();
    type Change = (String, ScramMechanism, Option<ScramCredential>);
    let mut users: Vec<(String, BrokerResult<Vec<Change>>)> = Vec::new();
    let mut record = |user: &str, change: BrokerResult<Change>| {
        let at = users
            .iter()
            .position(|(u, _)| u == user)
            .unwrap_or_else(|| {
                users.push((user.to_string(), Ok(Vec::new())));
                users.len() - 1
            });
        let entry = &mut users[at].1;
        let change = match &allowed {
            Ok(()) => change,
            Err(refused) => Err(refused.same()),
        };
        match (entry.as_mut(), change) {
            (Ok(changes), Ok(change)) => {
                if changes.iter().any(|(_, m, _)| *m == change.1) {
                    *entry = Err(kafka_error(
                        ResponseError::DuplicateResource,
                        format!("{user}'s {} credential is changed twice", change.1.name()),
                    ));
                } else {
                    changes.push(change);
                }
            }
            (Ok(_), Err(error)) => *entry = Err(error),
            (Err(_), _) => {}
        }
    };
    for deletion in deletions {
        let change = check_user(&deletion.user)
            .and_then(|()| mechanism(deletion.mechanism))
            .and_then(|m| {
                if image.scram_credential(&deletion.user, m).is_none() {
                    return Err(kafka_error(
                        ResponseError::ResourceNotFound,
                        format!("{} has no {} credential", deletion.user, m.name()),
                    ));
                }
                Ok((deletion.user.clone(), m, None))
            });
        record(&deletion.user, change);
    }
    for upsertion in upsertions {
        let change = check_user(&upsertion.user)
            .and_then(|()| mechanism(upsertion.mechanism))
            .and_then(|m| {
                let iterations = u32::try_from(upsertion.iterations).unwrap_or(0);
                scram::check_iterations(iterations)
                    .map_err(|e| kafka_error(ResponseError::UnacceptableCredential, e))?;
                if upsertion.salt.is_empty() || upsertion.salted_password.is_empty() {
                    return Err(kafka_error(
                        ResponseError::UnacceptableCredential,
                        "the salt and the salted password must not be empty".into(),
                    ));
                }
                let credential = scram::from_salted_password(
                    m,
                    upsertion.salt.clone(),
                    &upsertion.salted_password,
                    iterations,
                );
                Ok((upsertion.user.clone(), m, Some(credential)))
            });
        record(&upsertion.user, change);
    }
    let changes: Vec<Change> = users
        .iter()
        .filter_map(|(_, changes)| changes.as_ref().ok())
        .flatten()
        .cloned()
        .collect();
    let applied = if changes.is_empty() {
        Ok(())
    } else {
        ops::admin(shard, ShardCall::AlterScramCredentials { changes }).await
    };
    users
        .into_iter()
        .map(|(user, changes)| {
            let result = match (changes, &applied) {
                (Err(error), _) => Err(error),
                (Ok(_), Ok(())) => Ok(()),
                (Ok(_), Err(error)) => Err(error.same()),
            };
            (user, result)
        })
        .collect()
}

fn check_user(user: &str) -> BrokerResult<()> {
    if user.is_empty() || user.len() > USER_NAME_BYTES_MAX {
        return Err(kafka_error(
            ResponseError::UnacceptableCredential,
            format!("a user name must have 1 to {USER_NAME_BYTES_MAX} bytes"),
        ));
    }
    Ok(())
}

/// A user's credentials as described: each mechanism and its iterations.
pub type Described = (String, BrokerResult<Vec<(ScramMechanism, u32)>>);

/// Each user's mechanisms and iterations (never the keys): of `users`, or of every user
/// with a credential when `None`. A named user without credentials is RESOURCE_NOT_FOUND,
/// a user named twice DUPLICATE_RESOURCE.
pub fn describe(shard: &Shard, users: Option<Vec<String>>) -> Vec<Described> {
    let image = shard.image();
    let of = |user: &str| -> Vec<(ScramMechanism, u32)> {
        ScramMechanism::ALL
            .into_iter()
            .filter_map(|m| image.scram_credential(user, m).map(|c| (m, c.iterations)))
            .collect()
    };
    match users {
        None => {
            let mut names: Vec<String> = image
                .scram_credentials
                .keys()
                .map(|(user, _)| user.clone())
                .collect();
            names.dedup();
            names
                .into_iter()
                .map(|user| {
                    let credentials = of(&user);
                    (user, Ok(credentials))
                })
                .collect()
        }
        Some(users) => {
            // One entry per user, as Kafka answers; a user named twice is an error.
            let mut unique: Vec<&String> = Vec::new();
            for user in &users {
                if !unique.contains(&user) {
                    unique.push(user);
                }
            }
            unique
                .into_iter()
                .map(|user| {
                    let result = if users.iter().filter(|u| *u == user).count() > 1 {
                        Err(kafka_error(
                            ResponseError::DuplicateResource,
                            format!("{user} is named twice"),
                        ))
                    } else {
                        let credentials = of(user);
                        if credentials.is_empty() {
                            Err(kafka_error(
                                ResponseError::ResourceNotFound,
                                format!("{user} has no credentials"),
                            ))
                        } else {
                            Ok(credentials)
                        }
                    };
                    (user.clone(), result)
                })
                .collect()
        }
    }
}
