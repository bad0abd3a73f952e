//! causalkv: a replicated, fault-tolerant, causally consistent key-value store.
//!
//! The crate is layered so that the causal core never touches a socket:
//!
//! * [`causal`]: write identities, vector clocks, the opaque client metadata;
//! * [`store`], [`delivery`], [`replica`]: the state machine of one replica;
//! * [`membership`]: the view and the failure detector, with time passed in;
//! * [`node`], [`peer`], [`api`], [`wire`]: the server that moves messages between the
//!   core, clients and peers;
//! * [`config`], [`server`], [`cluster`]: the command line's `serve` and `cluster`;
//! * [`client`], [`cli`]: a client for the contract and the `put`/`get`/`delete`/`view`
//!   commands;
//! * [`check`], [`bench`]: the causal checker and the load generator.
//!
//! See `docs/ARCHITECTURE.md` for the data flow and the invariants.

pub mod alloc;
pub mod api;
pub mod auth;
pub mod bench;
pub mod causal;
pub mod check;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod delivery;
pub mod listener;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod replica;
pub mod server;
pub mod status;
pub mod store;
pub mod tls;
pub mod trust;
pub mod varint;
pub mod wallclock;
pub mod wire;

/// An error and its causes, in one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
