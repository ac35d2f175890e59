//! System seams: what the agent asks of the machine besides files. Each is a small trait
//! where tests need another answer (service manager, command runner, clock, resolver).

pub mod blocking;
pub mod clock;
pub mod host;
pub mod resolver;
pub mod runner;
pub mod services;
pub mod signal;
