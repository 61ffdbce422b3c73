//! c10m server library: the wire protocol, the sans-IO session core, and the
//! OS backends that drive it. The binary `c10m-server` is a thin CLI over
//! [`server::run`].
//!
//! Layout: [`wire`] (codec) → [`core`] ([`table`], [`wheel`], [`spill`]) are
//! sans-IO and free of `unsafe`; [`sys`] holds the backends; [`server`]
//! wires workers, stats and signals together.

pub mod admission;
pub mod core;
pub mod handoff;
pub mod lag;
pub mod limits;
pub mod listen;
pub mod metrics;
pub mod profile;
pub mod server;
pub mod shed;
pub mod spill;
pub mod stats;
pub mod supervisor;
pub mod sys;
pub mod table;
pub mod upgrade;
pub mod wheel;
pub mod wire;
