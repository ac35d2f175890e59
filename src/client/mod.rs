//! Clients the CLI uses: the local daemon over its control socket.

pub mod local;
pub mod peer;
