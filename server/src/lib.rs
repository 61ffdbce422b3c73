//! c10m server library: the wire protocol, the sans-IO session core, and the
//! OS backends that drive it. The binary `c10m-server` is a thin CLI over
//! [`server::run`](crate::server::run).

pub mod wire;
