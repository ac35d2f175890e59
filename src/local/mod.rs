//! What the CLI asks of its own node, through the control socket: `add-node`, `status`,
//! `join` (the joining side), `leave`, `remove-node`. No HTTP here: plain request structs
//! in, response structs or a typed error out (`AddNodeError`, `JoinError`, `LeaveError`,
//! `RemoveError`), each variant with a stable [`error::ErrorKind`].
//!
//! Invariants: checks run before changes; a multi-step change restores what it changed when
//! a step fails; blocking work runs in `sys::blocking`.

pub mod add_node;
pub mod error;
pub mod join;
pub mod launch;
pub mod leave;
pub mod recover;
pub mod remove_node;
pub mod reset;
pub mod settle;
pub mod status;
pub mod tokens;
