//! c10m-sysctl: kernel tuning for hosts holding millions of idle TCP
//! sessions.
//!
//! - [`profile`]: sysctl.d profiles, validated against the [`catalogue`];
//! - [`procfs`]: the seam to the kernel (`/proc/sys` or a stand-in tree);
//! - [`compare`]: `check` and `diff`;
//! - [`apply`], [`rollback`] and [`state`]: apply with saved old values, and
//!   undo it;
//! - [`facts`] and [`plan`]: how many sessions fit and what binds first;
//! - [`limits`]: the RLIMIT_NOFILE drop-in and limits.conf lines;
//! - [`explain`]: what a key does and why each profile sets it.
//!
//! Every operation takes its inputs (a [`procfs::SysctlStore`], a
//! [`facts::HostFacts`], a [`apply::Privilege`]) as arguments, so the tests
//! run all of it against temporary directories and fixed facts.
#![forbid(unsafe_code)]

pub mod apply;
pub mod catalogue;
pub mod compare;
pub mod explain;
pub mod facts;
pub mod limits;
#[cfg(test)]
mod mem_store;
pub mod plan;
pub mod procfs;
pub mod profile;
pub mod rollback;
pub mod state;
pub mod table;
pub mod units;
pub mod value;
