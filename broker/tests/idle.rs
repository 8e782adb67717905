//! An idle broker stays up: its listeners wait for connections without re-polling them on
//! a timer. (Re-polling a pending glommio accept every background tick kept a waker per
//! poll and overflowed the task's i16 waker count after 32,767 ticks: with the 1 ms tick
//! used here, after 33 s of no new connections the shard panicked.)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use weir_tests::broker::BrokerProcess;

#[test]
fn a_broker_idle_for_40_000_ticks_still_serves_every_port() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start_with_env(
        env!("CARGO_BIN_EXE_weir"),
        dir.path(),
        1,
        &[],
        &[("WEIR_TICK_MS", "1")],
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(40));

    let mut http = TcpStream::connect(&broker.http).expect("HTTP port");
    http.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    http.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    http.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    for address in [&broker.kafka, &broker.native] {
        let mut stream = TcpStream::connect(address).expect("port accepts");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // A size prefix both protocols refuse: the broker answers with an error or closes
        // the connection; either proves a live shard served it.
        stream.write_all(&[0xff; 16]).unwrap();
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("{address}: no answer and no close: {e}"),
        }
    }
    let status = broker.terminate().unwrap();
    assert!(status.success(), "the broker exited with {status}");
}
