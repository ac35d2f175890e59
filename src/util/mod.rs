//! The bottom layer: small pure helpers every other layer may use (addresses, hex, Go
//! durations, error text, secrets). Imports nothing from the crate.

pub mod addr;
pub mod errtext;
pub mod goduration;
pub mod hex;
pub mod secret;
