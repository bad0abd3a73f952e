//! The tools layer: the client library and everything built on it (the CLI, `check`,
//! `bench`, `status`, the local-cluster launcher). Tools depend on the protocol and server
//! layers; nothing there depends on them.

pub mod bench;
pub mod check;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod status;
