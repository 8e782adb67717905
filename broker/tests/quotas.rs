//! Client quotas with real Kafka clients: `tests/kafka_clients/quotas.py` sets produce
//! and fetch quotas with `weir quota`, and librdkafka clients over them are throttled
//! (throttle_time_ms, the connection held off) while a client without one is not.

use std::process::Command;

use weir_tests::{python, repo};

#[test]
fn clients_over_their_quotas_are_throttled_and_others_are_not() {
    let work = tempfile::tempdir().unwrap();
    let status = Command::new(python())
        .arg(repo().join("tests/kafka_clients/quotas.py"))
        .args(["--weir", env!("CARGO_BIN_EXE_weir")])
        .arg("--work-dir")
        .arg(work.path())
        .status()
        .expect("running quotas.py");
    assert!(status.success(), "quotas.py failed");
}
