//! c10m server library: the wire protocol, the sans-IO session core, and the
//! OS backends that drive it. The binary `c10m-server` is a thin CLI over
//! [`server::run`].

pub mod core;
pub mod spill;
pub mod table;
pub mod wheel;
pub mod wire;
