//! The control socket between the CLI and its node's daemon: the server ([`server`]), the
//! CLI's client ([`client`]) and the wire format both speak ([`wire`]).

pub mod client;
pub mod server;
pub mod wire;
