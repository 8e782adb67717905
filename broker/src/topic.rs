//! Topic names and per-topic configuration, with Kafka's names and rules.

use std::collections::BTreeMap;

use weir_storage::{FlushPolicy, LogConfig};

/// Kafka's limit: 249 characters, so that `<topic>-<partition>` fits a file name.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// Partitions one topic may have.
pub const TOPIC_PARTITIONS_MAX: i32 = 10_000;

/// Checks a topic name as Kafka does: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > TOPIC_NAME_BYTES_MAX {
        return Err(format!(
            "topic name must be 1 to {TOPIC_NAME_BYTES_MAX} characters"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("topic name {name:?} is not allowed"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name {name:?} has {bad:?}; allowed are ASCII letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// The topic configuration keys weir understands, with what each sets.
pub const TOPIC_CONFIG_KEYS: &[(&str, &str)] = &[
    (
        "retention.ms",
        "delete sealed segments older than this; -1 keeps them",
    ),
    (
        "retention.bytes",
        "delete oldest sealed segments beyond this size; -1 is no limit",
    ),
    ("segment.bytes", "roll a segment before it grows past this"),
    ("segment.ms", "roll a segment older than this"),
    ("flush.policy", "every-batch, interval(MS) or never"),
    ("max.message.bytes", "the largest record batch accepted"),
    ("index.interval.bytes", "bytes between sparse index entries"),
    ("cleanup.policy", "delete (compaction is not built yet)"),
];

/// The value of each topic config key under `config`, in `TOPIC_CONFIG_KEYS` order, as
/// DescribeConfigs reports it.
pub fn config_values(config: &LogConfig) -> Vec<(&'static str, String)> {
    let or_minus_one = |value: Option<u64>| value.map_or(-1, |v| v as i64).to_string();
    TOPIC_CONFIG_KEYS
        .iter()
        .map(|(key, _)| {
            let value = match *key {
                "retention.ms" => or_minus_one(config.retention_ms),
                "retention.bytes" => or_minus_one(config.retention_bytes),
                "segment.bytes" => config.segment_bytes.to_string(),
                "segment.ms" => config.segment_ms.to_string(),
                "flush.policy" => config.flush.to_string(),
                "max.message.bytes" => config.batch_bytes_max.to_string(),
                "index.interval.bytes" => config.index_interval_bytes.to_string(),
                _ => "delete".to_string(),
            };
            (*key, value)
        })
        .collect()
}

/// The log settings of a topic: the broker's defaults with the topic's overrides.
pub fn log_config(
    defaults: &LogConfig,
    overrides: &BTreeMap<String, String>,
) -> Result<LogConfig, String> {
    let mut config = *defaults;
    for (key, value) in overrides {
        let number = || {
            value
                .trim()
                .parse::<i64>()
                .map_err(|_| format!("{key} = {value:?} is not a number"))
        };
        let positive = || {
            number().and_then(|n| {
                u64::try_from(n)
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or(format!("{key} must be positive"))
            })
        };
        match key.as_str() {
            "retention.ms" => config.retention_ms = u64::try_from(number()?).ok(),
            "retention.bytes" => config.retention_bytes = u64::try_from(number()?).ok(),
            "segment.bytes" => config.segment_bytes = positive()?,
            "segment.ms" => config.segment_ms = positive()?,
            "flush.policy" => {
                config.flush = value.parse::<FlushPolicy>().map_err(|e| e.to_string())?
            }
            "max.message.bytes" => {
                config.batch_bytes_max =
                    u32::try_from(positive()?).map_err(|_| format!("{key} is too large"))?
            }
            "index.interval.bytes" => {
                config.index_interval_bytes =
                    u32::try_from(positive()?).map_err(|_| format!("{key} is too large"))?
            }
            "cleanup.policy" if value == "delete" => {}
            "cleanup.policy" => {
                return Err(format!(
                    "cleanup.policy {value:?} is not supported yet (only delete)"
                ));
            }
            _ => return Err(format!("unknown topic config {key:?}")),
        }
    }
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What DescribeConfigs reports can be set back unchanged.
    #[test]
    fn described_values_are_valid_overrides() {
        let defaults = LogConfig::default();
        let values: BTreeMap<String, String> = config_values(&defaults)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(values.len(), TOPIC_CONFIG_KEYS.len());
        assert_eq!(log_config(&defaults, &values), Ok(defaults));
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        for good in ["orders", "a.b_c-D9", &"x".repeat(249)] {
            assert!(validate_topic_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "has space",
            "slash/name",
            "ünïcode",
            &"x".repeat(250),
        ] {
            assert!(validate_topic_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn overrides_apply_and_bad_ones_are_refused() {
        let defaults = LogConfig::default();
        let set = |pairs: &[(&str, &str)]| {
            let map = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            log_config(&defaults, &map)
        };
        let config = set(&[
            ("retention.ms", "-1"),
            ("flush.policy", "never"),
            ("segment.bytes", "2097152"),
        ])
        .unwrap();
        assert_eq!(
            (config.retention_ms, config.flush, config.segment_bytes),
            (None, FlushPolicy::Never, 2 << 20)
        );
        for bad in [
            ("segment.bytes", "0"),
            ("flush.policy", "always"),
            ("no.such", "1"),
            ("cleanup.policy", "compact"),
            ("segment.bytes", "12"),
        ] {
            assert!(set(&[bad]).is_err(), "{bad:?}");
        }
    }
}
