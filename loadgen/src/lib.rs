//! End-to-end load generation against a running broker. Not built yet: it arrives with the
//! measurement issue, after the broker serves a protocol to measure.
