//! The protocol layer: everything a replica decides, with no I/O. No module here opens a
//! socket, reads a clock or a file, or spawns a task; time and randomness come in as
//! arguments. The server drives it over the network; the simulator drives it under a seed.

pub mod causal;
pub mod delivery;
pub mod journal;
pub mod machine;
pub mod membership;
pub mod replica;
pub mod store;
pub mod time;
pub mod varint;
pub mod wire;
