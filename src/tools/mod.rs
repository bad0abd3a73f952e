//! The tools layer: the client library and everything built on it (the CLI, `check`,
//! `bench`, `status`, `cluster`), and the launcher of local replica processes that
//! `cluster`, `bench --scale` and the integration tests share. Tools depend on the
//! protocol and server layers; nothing there depends on them.

pub mod bench;
pub mod check;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod launcher;
pub mod sim;
pub mod status;
