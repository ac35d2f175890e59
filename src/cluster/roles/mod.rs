//! dqlite roles: the pure policy (which members vote, stand by or are spares) and the driver
//! that applies it from the raft leader, including the graceful handover of a stopping voter.

pub mod driver;
pub mod policy;
