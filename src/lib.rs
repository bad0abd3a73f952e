//! causalkv: a replicated, fault-tolerant, causally consistent key-value store.
//!
//! The crate has three layers, each a folder; a layer uses only the ones above it:
//!
//! * [`protocol`]: the protocol core, with no I/O: write identities and clocks, the
//!   store, causal delivery, the replica, membership, the wire messages;
//! * [`server`]: the driver that moves client requests and peer messages into the core
//!   and its outputs onto sockets (`causalkv serve`);
//! * [`tools`]: the client library, the CLI, `check`, `bench`, `status` and the local
//!   cluster launcher.
//!
//! See `docs/ARCHITECTURE.md` for the data flow and the invariants.

pub mod protocol;
pub mod server;
pub mod tools;

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
