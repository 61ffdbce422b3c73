//! Listening sockets: one SO_REUSEPORT listener per worker, all on one port.
//!
//! With SO_REUSEPORT a second process of the same user could silently join
//! a port that is already serving, and a "port in use" would go unnoticed.
//! So before binding a fixed port we probe it with a plain socket (no
//! SO_REUSEPORT): if that bind fails, the port is in use and we say so.
//! Port 0 binds the first listener on an ephemeral port and the others on
//! the port it got. `join` skips the probe, for processes that share a
//! port on purpose (the multi-process supervisor).
#![forbid(unsafe_code)]

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{SocketAddr, TcpListener};

/// How the kernel spreads new connections over the workers' listeners
/// (`--steer`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Steer {
    /// By a hash of the connection's addresses: an even spread whatever
    /// the clients do.
    #[default]
    Hash,
    /// To the worker pinned on the CPU that handles the connection's
    /// packets (SO_INCOMING_CPU; on loopback, the connecting thread's CPU):
    /// a client thread pinned there and its server worker then wake each
    /// other without crossing CPUs.
    Cpu,
}

impl Steer {
    pub fn name(self) -> &'static str {
        match self {
            Steer::Hash => "hash",
            Steer::Cpu => "cpu",
        }
    }
}

/// The scheduling policy of the server's threads (`--sched`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Sched {
    /// SCHED_OTHER: a worker woken by a packet may preempt whatever runs
    /// on its CPU at once.
    #[default]
    Normal,
    /// SCHED_BATCH: a woken worker never preempts a running task; it runs
    /// when that task sleeps or its slice ends. For a host where the
    /// workers share their CPUs with other work, such as a load generator
    /// on the same host: its sends each wake a worker, which would
    /// otherwise preempt it mid-burst (two context switches per wake-up,
    /// costs no dedicated server pays).
    Batch,
}

impl Sched {
    pub fn name(self) -> &'static str {
        match self {
            Sched::Normal => "normal",
            Sched::Batch => "batch",
        }
    }

    /// Sets the calling thread's policy; threads it starts afterwards
    /// inherit it. `Normal` leaves the policy as it is (a server started
    /// under `chrt` keeps that policy; the start-up line says which is in
    /// effect).
    pub fn apply(self) -> std::io::Result<()> {
        let policy = match self {
            Sched::Normal => return Ok(()),
            Sched::Batch => libc::SCHED_BATCH,
        };
        crate::sys::set_thread_policy(policy)
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    #[error("{addr} is already in use (another server on that port? choose another with --listen, or port 0)")]
    InUse { addr: SocketAddr },
    #[error(
        "binding {addr} is not permitted (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    )]
    Denied { addr: SocketAddr },
    #[error("{addr} is not an address of this host")]
    NotLocal { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    Other {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

fn classify(addr: SocketAddr, e: io::Error) -> ListenError {
    match e.raw_os_error() {
        Some(libc::EADDRINUSE) => ListenError::InUse { addr },
        Some(libc::EACCES) | Some(libc::EPERM) => ListenError::Denied { addr },
        Some(libc::EADDRNOTAVAIL) => ListenError::NotLocal { addr },
        _ => ListenError::Other { addr, source: e },
    }
}

fn socket_for(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    Ok(socket)
}

fn listener(addr: SocketAddr, backlog: i32) -> Result<TcpListener, ListenError> {
    let socket = socket_for(addr).map_err(|e| classify(addr, e))?;
    socket.set_reuse_port(true).map_err(|e| classify(addr, e))?;
    // Replies are written once per batch of requests: Nagle would only add
    // delay (40 ms with a delayed ACK) when a client pipelines heartbeats.
    socket.set_nodelay(true).map_err(|e| classify(addr, e))?;
    socket.bind(&addr.into()).map_err(|e| classify(addr, e))?;
    socket.listen(backlog).map_err(|e| classify(addr, e))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| classify(addr, e))?;
    Ok(socket.into())
}

/// Binds `count` SO_REUSEPORT listeners on `addr` (port 0: an ephemeral
/// port, the same for all). Returns them with the address actually bound.
pub fn bind_listeners(
    addr: SocketAddr,
    count: usize,
    backlog: i32,
    join: bool,
) -> Result<(Vec<TcpListener>, SocketAddr), ListenError> {
    if addr.port() != 0 && !join {
        let probe = socket_for(addr).map_err(|e| classify(addr, e))?;
        probe.bind(&addr.into()).map_err(|e| classify(addr, e))?;
    }
    let first = listener(addr, backlog)?;
    let bound = first
        .local_addr()
        .map_err(|e| ListenError::Other { addr, source: e })?;
    let mut all = vec![first];
    for _ in 1..count {
        all.push(listener(bound, backlog)?);
    }
    Ok((all, bound))
}

/// Reserves `addr` for a group of processes that will each `join` it: a
/// bound, never-listening SO_REUSEPORT socket (it takes no connections,
/// since only listening sockets are in the reuseport group). For a fixed
/// port it first checks, like [`bind_listeners`], that no one else holds
/// it. Keep the socket open as long as the group lives.
pub fn reserve_port(addr: SocketAddr) -> Result<(Socket, SocketAddr), ListenError> {
    if addr.port() != 0 {
        let probe = socket_for(addr).map_err(|e| classify(addr, e))?;
        probe.bind(&addr.into()).map_err(|e| classify(addr, e))?;
    }
    // SO_REUSEPORT without SO_REUSEADDR: the group's members (both flags)
    // may join, while a plain SO_REUSEADDR bind, like the probe, conflicts.
    let socket = socket_for(addr).map_err(|e| classify(addr, e))?;
    socket
        .set_reuse_address(false)
        .map_err(|e| classify(addr, e))?;
    socket.set_reuse_port(true).map_err(|e| classify(addr, e))?;
    socket.bind(&addr.into()).map_err(|e| classify(addr, e))?;
    let bound = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or_else(|| ListenError::Other {
            addr,
            source: io::Error::other("bound address unknown"),
        })?;
    Ok((socket, bound))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_gives_every_worker_the_same_port() {
        let (ls, bound) = bind_listeners("127.0.0.1:0".parse().unwrap(), 3, 128, false).unwrap();
        assert_ne!(bound.port(), 0);
        for l in &ls {
            assert_eq!(l.local_addr().unwrap(), bound);
        }
    }

    #[test]
    fn a_port_in_use_is_refused_even_by_a_reuseport_holder() {
        let (_held, bound) = bind_listeners("127.0.0.1:0".parse().unwrap(), 1, 128, false).unwrap();
        let err = bind_listeners(bound, 1, 128, false).unwrap_err();
        assert!(matches!(err, ListenError::InUse { .. }), "{err}");
        assert!(err.to_string().contains("already in use"));
        // A process that joins on purpose shares the port.
        let (_joined, again) = bind_listeners(bound, 1, 128, true).unwrap();
        assert_eq!(again, bound);
    }

    #[test]
    fn a_reserved_port_is_joined_by_the_group_and_refused_to_others() {
        let (_reservation, bound) = reserve_port("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(bound.port(), 0);
        assert!(matches!(
            bind_listeners(bound, 1, 128, false),
            Err(ListenError::InUse { .. })
        ));
        let (_a, _) = bind_listeners(bound, 1, 128, true).unwrap();
        let (_b, _) = bind_listeners(bound, 1, 128, true).unwrap();
        // The reservation itself never takes a connection: both joiners do.
        for _ in 0..20 {
            std::net::TcpStream::connect(bound).unwrap();
        }
    }
}
