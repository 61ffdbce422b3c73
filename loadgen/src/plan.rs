//! `AddressPlan`: which source address and target each session uses, and
//! whether the run fits in the 4-tuple space at all.
//!
//! A TCP connection is identified by (source ip, source port, target ip,
//! target port). With `IP_BIND_ADDRESS_NO_PORT` the kernel picks the source
//! port at `connect()`, per destination, so each (source address, target)
//! pair has the whole ephemeral range to itself: capacity = sources ×
//! targets × ephemeral ports. The plan spreads sessions round-robin over
//! the pairs and refuses, before anything is opened, a run whose busiest
//! pair would need more ports than the range holds, counting the tuples
//! that closed connections keep in TIME_WAIT for 60 s (churn, outages).
//!
//! Only loopback targets are accepted unless the caller allows others: a
//! load generator should never be pointed at someone else's host by
//! accident. For a loopback target the default source range is
//! `127.1.0.0/16`: 65 536 addresses × 28 232 ports.
#![forbid(unsafe_code)]

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::str::FromStr;

/// Default source range for loopback targets.
pub const DEFAULT_LOOPBACK_SOURCE: &str = "127.1.0.0/16";

/// An IPv4 CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    base: u32,
    prefix: u8,
}

impl Cidr {
    pub fn len(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn nth(&self, i: u64) -> Ipv4Addr {
        Ipv4Addr::from(self.base.wrapping_add((i % self.len()) as u32))
    }

    pub fn is_loopback(&self) -> bool {
        Ipv4Addr::from(self.base).is_loopback() && self.prefix >= 8
    }

    /// Block `k` of this one cut into `n` (rounded up to a power of two)
    /// equal blocks: shard `k` of `n`'s own source addresses, disjoint from
    /// every other shard's.
    pub fn block(&self, k: u64, n: u64) -> Result<Cidr, PlanError> {
        let bits = n.max(1).next_power_of_two().trailing_zeros() as u8;
        let prefix = self.prefix + bits;
        if prefix > 32 || k >= n {
            return Err(PlanError::SourceTooSmallForShards {
                range: *self,
                shards: n,
            });
        }
        Ok(Cidr {
            base: self.base | (k as u32).checked_shl(32 - u32::from(prefix)).unwrap_or(0),
            prefix,
        })
    }
}

impl FromStr for Cidr {
    type Err = PlanError;

    fn from_str(s: &str) -> Result<Self, PlanError> {
        let bad = || PlanError::BadCidr(s.to_string());
        let (addr, prefix) = s.split_once('/').unwrap_or((s, "32"));
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        Ok(Cidr {
            base: u32::from(addr) & mask,
            prefix,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

/// Why a plan was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    #[error("no --target given")]
    NoTargets,
    #[error("invalid source CIDR {0:?} (expected e.g. 127.1.0.0/16)")]
    BadCidr(String),
    #[error("target {0} is not IPv4; only IPv4 targets are supported")]
    NotIpv4(SocketAddr),
    #[error(
        "target {0} is not a loopback address; this loadgen only sends load to \
         127.0.0.0/8 unless --allow-remote is given"
    )]
    NotLoopback(SocketAddr),
    #[error(
        "source {range} cannot give {shards} shards a block each; widen --source (a /16 gives \
         up to 65 536)"
    )]
    SourceTooSmallForShards { range: Cidr, shards: u64 },
    #[error(
        "{sessions} sessions (+{headroom} TIME_WAIT tuples) cannot fit: {sources} source \
         address(es) x {targets} target(s) x {ports} ephemeral ports ({lo}-{hi}) = {capacity} \
         4-tuples; widen --source (e.g. {DEFAULT_LOOPBACK_SOURCE}), add --target ports, or \
         widen net.ipv4.ip_local_port_range"
    )]
    TooManySessions {
        sessions: u64,
        headroom: u64,
        sources: u64,
        targets: u64,
        ports: u64,
        lo: u16,
        hi: u16,
        capacity: u64,
    },
}

/// The source/target assignment of a run; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressPlan {
    /// `None`: let the kernel pick the source address.
    pub source: Option<Cidr>,
    pub targets: Vec<SocketAddrV4>,
    pub port_range: (u16, u16),
    /// Shards of the run (1 unsharded): session ids are global, `local ×
    /// shards + shard`, and addresses are spread by the local number.
    pub shards: u64,
}

impl AddressPlan {
    /// Builds and checks a plan for `sessions` open at once plus `headroom`
    /// tuples held in TIME_WAIT by closed connections.
    pub fn new(
        targets: &[SocketAddr],
        source: Option<Cidr>,
        port_range: (u16, u16),
        sessions: u64,
        headroom: u64,
        allow_remote: bool,
    ) -> Result<Self, PlanError> {
        if targets.is_empty() {
            return Err(PlanError::NoTargets);
        }
        let mut v4 = Vec::with_capacity(targets.len());
        for t in targets {
            let SocketAddr::V4(a) = t else {
                return Err(PlanError::NotIpv4(*t));
            };
            if !allow_remote && !a.ip().is_loopback() {
                return Err(PlanError::NotLoopback(*t));
            }
            v4.push(*a);
        }
        let all_loopback = v4.iter().all(|a| a.ip().is_loopback());
        let default_source = || DEFAULT_LOOPBACK_SOURCE.parse().ok();
        let source = source.or_else(|| if all_loopback { default_source() } else { None });
        let plan = AddressPlan {
            source,
            targets: v4,
            port_range,
            shards: 1,
        };
        let (lo, hi) = port_range;
        let ports = u64::from(hi.saturating_sub(lo)) + 1;
        let pairs = plan.pairs();
        let busiest = (sessions + headroom).div_ceil(pairs);
        if busiest > ports {
            return Err(PlanError::TooManySessions {
                sessions,
                headroom,
                sources: plan.source.map_or(1, |c| c.len()),
                targets: plan.targets.len() as u64,
                ports,
                lo,
                hi,
                capacity: pairs.saturating_mul(ports),
            });
        }
        Ok(plan)
    }

    /// Number of (source address, target) pairs.
    pub fn pairs(&self) -> u64 {
        self.source.map_or(1, |c| c.len()) * self.targets.len() as u64
    }

    /// Source address (port 0: chosen at connect) and target of session `sid`.
    pub fn endpoints(&self, sid: u64) -> (Option<SocketAddrV4>, SocketAddrV4) {
        let n = self.targets.len() as u64;
        let local = sid / self.shards;
        let target = self.targets[(local % n) as usize];
        let source = self.source.map(|c| SocketAddrV4::new(c.nth(local / n), 0));
        (source, target)
    }
}

/// Tuples held in TIME_WAIT at the worst moment: every connection the
/// client closes stays there 60 s (TCP_TIMEWAIT_LEN).
pub fn time_wait_headroom(
    sessions: u64,
    churn_mean_ms: Option<f64>,
    outage_fraction: f64,
    time_wait_ms: f64,
) -> u64 {
    let churn = churn_mean_ms.map_or(0.0, |m| sessions as f64 * (time_wait_ms / m).min(1.0));
    (churn + sessions as f64 * outage_fraction.min(1.0)).ceil() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_parses_and_masks() {
        let c: Cidr = "127.1.2.3/16".parse().unwrap();
        assert_eq!(c.to_string(), "127.1.0.0/16");
        assert_eq!(c.len(), 65_536);
        assert_eq!(c.nth(65_537), Ipv4Addr::new(127, 1, 0, 1));
        assert!("127.0.0.1/33".parse::<Cidr>().is_err());
        assert!("nope".parse::<Cidr>().is_err());
        assert_eq!("10.0.0.1".parse::<Cidr>().unwrap().len(), 1);
    }

    #[test]
    fn refuses_an_impossible_run_naming_the_numbers() {
        let one: Cidr = "127.0.0.1/32".parse().unwrap();
        let err = AddressPlan::new(
            &[addr("127.0.0.1:7000")],
            Some(one),
            (32_768, 60_999),
            30_000,
            0,
            false,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("30000 sessions"), "{text}");
        assert!(text.contains("28232 ephemeral ports"), "{text}");
        assert!(text.contains("= 28232 4-tuples"), "{text}");
        // Two target ports double the space.
        let two = [addr("127.0.0.1:7000"), addr("127.0.0.1:7001")];
        AddressPlan::new(&two, Some(one), (32_768, 60_999), 30_000, 0, false).unwrap();
    }

    #[test]
    fn shards_get_disjoint_source_blocks_and_spread_over_targets() {
        let c: Cidr = "127.1.0.0/16".parse().unwrap();
        assert_eq!(c.block(0, 1).unwrap(), c);
        assert_eq!(c.block(0, 3).unwrap().to_string(), "127.1.0.0/18");
        assert_eq!(c.block(2, 3).unwrap().to_string(), "127.1.128.0/18");
        let one: Cidr = "10.0.0.7/32".parse().unwrap();
        assert_eq!(one.block(0, 1).unwrap(), one);
        assert!(matches!(
            one.block(0, 2),
            Err(PlanError::SourceTooSmallForShards { shards: 2, .. })
        ));
        let two = [addr("127.0.0.1:7000"), addr("127.0.0.1:7001")];
        let mut plan =
            AddressPlan::new(&two, c.block(1, 2).ok(), (32_768, 60_999), 100, 0, false).unwrap();
        plan.shards = 2;
        // Shard 1 of 2 owns the odd ids: both targets, consecutive sources.
        let ends: Vec<_> = [1, 3, 5, 7]
            .iter()
            .map(|&sid| plan.endpoints(sid))
            .collect();
        let ports: Vec<u16> = ends.iter().map(|(_, t)| t.port()).collect();
        assert_eq!(ports, [7000, 7001, 7000, 7001]);
        let sources: Vec<String> = ends
            .iter()
            .map(|(s, _)| s.unwrap().ip().to_string())
            .collect();
        assert_eq!(
            sources,
            ["127.1.128.0", "127.1.128.0", "127.1.128.1", "127.1.128.1"]
        );
    }

    #[test]
    fn time_wait_headroom_can_tip_a_plan_over() {
        let one: Cidr = "127.0.0.1/32".parse().unwrap();
        let t = [addr("127.0.0.1:7000")];
        AddressPlan::new(&t, Some(one), (32_768, 60_999), 20_000, 0, false).unwrap();
        let tw = time_wait_headroom(20_000, Some(60_000.0), 0.0, 60_000.0);
        assert_eq!(tw, 20_000);
        assert!(AddressPlan::new(&t, Some(one), (32_768, 60_999), 20_000, tw, false).is_err());
    }

    #[test]
    fn default_loopback_source_is_a_slash_16_and_spreads_sessions() {
        let t = [addr("127.0.0.1:7000"), addr("127.0.0.1:7001")];
        let p = AddressPlan::new(&t, None, (32_768, 60_999), 10_000_000, 0, false).unwrap();
        assert_eq!(p.source.unwrap().to_string(), DEFAULT_LOOPBACK_SOURCE);
        let (s0, t0) = p.endpoints(0);
        let (s1, t1) = p.endpoints(1);
        let (s2, _) = p.endpoints(2);
        assert_eq!(s0, s1);
        assert_ne!(t0, t1);
        assert_ne!(s0, s2);
        assert_eq!(s0.unwrap().port(), 0);
    }

    #[test]
    fn remote_targets_need_an_explicit_allowance() {
        let t = [addr("192.0.2.1:80")];
        assert_eq!(
            AddressPlan::new(&t, None, (32_768, 60_999), 1, 0, false),
            Err(PlanError::NotLoopback(t[0]))
        );
        let p = AddressPlan::new(&t, None, (32_768, 60_999), 1, 0, true).unwrap();
        assert_eq!(p.source, None);
        assert!(AddressPlan::new(&[], None, (1, 2), 1, 0, false).is_err());
        assert!(AddressPlan::new(&[addr("[::1]:1")], None, (1, 2), 1, 0, false).is_err());
    }
}
