//! Cluster metadata on a Raft library and partition replication.
//!
//! Nothing is built here yet: the cluster issue builds it on top of `weir-storage`
//! (truncate-to-offset and the leader-epoch checkpoint already exist for it). The crate
//! exists now so that the dependency direction of the workspace is fixed from the start.
