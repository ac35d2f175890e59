//! What this node grants over :25000, without HTTP: v1/v2 joins, certificate signing, and
//! the callbacks between nodes (configure, upgrade, image import, dqlite remove). Inputs are
//! the wire types of `format::wire`, outputs are their responses or a [`GrantError`], which
//! `api::error` alone turns into a status code.
//!
//! Invariants: every check runs before any write, so a refused request changes nothing on
//! disk; a join token is consumed only once every check has passed; no secret is ever
//! logged; blocking work runs in `sys::blocking`.

pub mod callbacks;
pub mod error;
pub mod join;
pub mod recover;
pub mod sign_cert;

pub use error::GrantError;

#[cfg(test)]
mod tests;
