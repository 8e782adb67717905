//! The Kafka APIs and versions the gateway serves: exactly what ApiVersions advertises.
//!
//! Each range starts at the oldest version the `kafka-protocol` crate decodes and ends at
//! the newest one whose every field the gateway honours; every version in every range is
//! exercised by `broker/tests/kafka_versions.rs`.

use kafka_protocol::messages::ApiKey;

/// `(api, min version, max version)`, in api-key order.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 11),
    (ApiKey::Fetch, 4, 16),
    (ApiKey::ListOffsets, 1, 9),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::AddPartitionsToTxn, 0, 3),
    (ApiKey::AddOffsetsToTxn, 0, 3),
    (ApiKey::EndTxn, 0, 3),
    (ApiKey::WriteTxnMarkers, 1, 1),
    (ApiKey::TxnOffsetCommit, 0, 3),
    (ApiKey::DescribeAcls, 1, 3),
    (ApiKey::CreateAcls, 1, 3),
    (ApiKey::DeleteAcls, 1, 3),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::DescribeClientQuotas, 0, 1),
    (ApiKey::AlterClientQuotas, 0, 1),
    (ApiKey::DescribeUserScramCredentials, 0, 0),
    (ApiKey::AlterUserScramCredentials, 0, 0),
    (ApiKey::DescribeCluster, 0, 2),
];

pub fn range(api: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(a, _, _)| *a == api)
        .map(|(_, min, max)| (*min, *max))
}

pub fn supports(api: ApiKey, version: i16) -> bool {
    range(api).is_some_and(|(min, max)| (min..=max).contains(&version))
}

/// "3..=10", or "none" for an API the gateway does not serve.
pub fn describe(api: ApiKey) -> String {
    range(api).map_or_else(|| "none".into(), |(min, max)| format!("{min}..={max}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An advertised version the crate cannot decode would fail every client that picks
    /// it.
    #[test]
    fn advertised_ranges_lie_within_what_the_codec_decodes() {
        for (api, min, max) in SUPPORTED {
            let codec = api.valid_versions();
            assert!(
                codec.min <= *min && *max <= codec.max && min <= max,
                "{api:?} {min}..={max} vs codec {codec:?}"
            );
        }
        let mut keys: Vec<i16> = SUPPORTED.iter().map(|(a, _, _)| *a as i16).collect();
        keys.dedup();
        assert!(keys.is_sorted() && keys.len() == SUPPORTED.len());
    }

    /// docs/COMPATIBILITY.md lists exactly what is served.
    #[test]
    fn the_compatibility_page_lists_the_served_versions() {
        let page = include_str!("../../../docs/COMPATIBILITY.md");
        let listed: Vec<(i16, String)> = page
            .lines()
            .filter_map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                let key = cells.get(2)?.parse::<i16>().ok()?;
                Some((key, cells.get(3)?.to_string()))
            })
            .collect();
        let served: Vec<(i16, String)> = SUPPORTED
            .iter()
            .map(|(api, min, max)| {
                let range = if min == max {
                    min.to_string()
                } else {
                    format!("{min}–{max}")
                };
                (*api as i16, range)
            })
            .collect();
        assert_eq!(listed, served);
    }
}
