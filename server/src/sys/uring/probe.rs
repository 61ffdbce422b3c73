//! What the kernel offers: ring set-up flags, and a functional check of
//! every io_uring feature the backend relies on.
//!
//! Opcode probing alone cannot tell whether multishot recv or multishot
//! accept work (they are flags of RECV and ACCEPT, not opcodes), nor
//! whether a seccomp profile lets io_uring_setup through at all. So the
//! probe builds a small ring the way a worker will and runs the real
//! thing once: a multishot accept on a loopback listener and a multishot
//! recv over a provided-buffer ring on a socket pair, each checked for the
//! IORING_CQE_F_MORE flag, then cancelled and reaped. It costs well under
//! a millisecond at start-up.

use super::bufring::BufRing;
use super::userdata::IGNORE;
use io_uring::{cqueue, opcode, types, IoUring, Probe};
use std::io::{self, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// How a worker's ring is set up, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetupMode {
    /// SINGLE_ISSUER | DEFER_TASKRUN (Linux 6.1): completions are produced
    /// only inside the worker's own `io_uring_enter`, never by interrupting it.
    DeferTaskrun,
    /// SINGLE_ISSUER | COOP_TASKRUN (Linux 6.0).
    CoopTaskrun,
    /// No set-up flags.
    Plain,
}

impl SetupMode {
    pub const ALL: [SetupMode; 3] = [
        SetupMode::DeferTaskrun,
        SetupMode::CoopTaskrun,
        SetupMode::Plain,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SetupMode::DeferTaskrun => "defer-taskrun",
            SetupMode::CoopTaskrun => "coop-taskrun",
            SetupMode::Plain => "plain",
        }
    }

    /// Builds a ring with `entries` SQEs and `cq` CQEs in this mode;
    /// `taskrun_flag`: the SQ flags show IORING_SQ_TASKRUN while the ring
    /// has work to run (a worker with several rings checks it).
    pub fn build(self, entries: u32, cq: u32, taskrun_flag: bool) -> io::Result<IoUring> {
        let mut b = IoUring::builder();
        b.setup_cqsize(cq);
        match self {
            SetupMode::DeferTaskrun => {
                b.setup_single_issuer().setup_defer_taskrun();
            }
            SetupMode::CoopTaskrun => {
                b.setup_single_issuer().setup_coop_taskrun();
            }
            SetupMode::Plain => {}
        }
        if taskrun_flag && self != SetupMode::Plain {
            b.setup_taskrun_flag();
        }
        b.build(entries)
    }
}

/// What the probe found: everything needed, and the best set-up mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Support {
    pub mode: SetupMode,
}

/// The first thing the kernel does not offer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Missing {
    #[error(
        "the kernel refuses io_uring (io_uring_setup: {0}): disabled by sysctl \
         kernel.io_uring_disabled, not built in, or blocked by a seccomp profile"
    )]
    Refused(String),
    #[error(
        "io_uring_setup failed with ENOMEM: RLIMIT_MEMLOCK is {0} KiB and this process lacks \
         CAP_IPC_LOCK, so ring memory counts against it; raise it (ulimit -l, LimitMEMLOCK=)"
    )]
    Memlock(u64),
    #[error("io_uring lacks {0}")]
    Feature(&'static str),
    #[error("io_uring lacks the {0} operation")]
    Opcode(&'static str),
    #[error("io_uring lacks provided-buffer rings (IORING_REGISTER_PBUF_RING, Linux 5.19): {0}")]
    BufRing(String),
    #[error("io_uring lacks multishot accept (IORING_ACCEPT_MULTISHOT, Linux 5.19): {0}")]
    MultishotAccept(String),
    #[error("io_uring lacks multishot recv (IORING_RECV_MULTISHOT, Linux 6.0): {0}")]
    MultishotRecv(String),
}

impl Missing {
    /// A short token for the start-up line (`backend_why=auto:<token>`).
    pub fn token(&self) -> String {
        match self {
            Missing::Refused(_) => "io_uring-refused".into(),
            Missing::Memlock(_) => "memlock".into(),
            Missing::Feature(_) => "no-ext-arg".into(),
            Missing::Opcode(op) => format!("no-op-{}", op.to_ascii_lowercase()),
            Missing::BufRing(_) => "no-buffer-ring".into(),
            Missing::MultishotAccept(_) => "no-multishot-accept".into(),
            Missing::MultishotRecv(_) => "no-multishot-recv".into(),
        }
    }
}

/// Whether this host offers everything the backend uses without asking the
/// backend's own probe: Linux 6.1 or later (multishot accept 5.19, provided
/// buffer rings 5.19, multishot recv 6.0, DEFER_TASKRUN 6.1) and a plain
/// two-entry ring that io_uring_setup grants (not refused by
/// kernel.io_uring_disabled or a seccomp profile). Tests use it to tell
/// "this host has no usable io_uring" (skip, saying why) from "the backend
/// fails on a host that has one" (fail). `Err` says what is missing.
pub fn kernel_offers_io_uring() -> Result<(), String> {
    let uts = nix::sys::utsname::uname().map_err(|e| format!("uname: {e}"))?;
    let release = uts.release().to_string_lossy().into_owned();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    if (major, minor) < (6, 1) {
        return Err(format!("Linux {release} is older than 6.1"));
    }
    IoUring::new(2)
        .map(drop)
        .map_err(|e| format!("io_uring_setup refused: {e}"))
}

/// Probes the running kernel (and seccomp profile) for the backend's needs.
pub fn probe() -> Result<Support, Missing> {
    let (mut ring, mode) = first_ring()?;
    if !ring.params().is_feature_ext_arg() {
        return Err(Missing::Feature(
            "IORING_FEAT_EXT_ARG (waiting with a timeout, Linux 5.11)",
        ));
    }
    let mut ops = Probe::new();
    ring.submitter()
        .register_probe(&mut ops)
        .map_err(|e| Missing::Refused(format!("IORING_REGISTER_PROBE: {e}")))?;
    for (code, name) in [
        (opcode::Accept::CODE, "ACCEPT"),
        (opcode::Recv::CODE, "RECV"),
        (opcode::Send::CODE, "SEND"),
        (opcode::PollAdd::CODE, "POLL_ADD"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
        (opcode::Close::CODE, "CLOSE"),
    ] {
        if !ops.is_supported(code) {
            return Err(Missing::Opcode(name));
        }
    }
    let bufs =
        BufRing::new(&ring.submitter(), 0, 8, 64).map_err(|e| Missing::BufRing(e.to_string()))?;
    let mut armed = Vec::new();
    let accept = multishot_accept(&mut ring, &mut armed);
    let recv = accept.and_then(|()| multishot_recv(&mut ring, &bufs, &mut armed));
    // Whatever happened, nothing may be in flight when `bufs` is unmapped.
    let drained = cancel_all(&mut ring, armed);
    if !drained {
        std::mem::forget(bufs);
    }
    recv.map(|()| Support { mode })
}

/// The best ring set-up the kernel accepts.
fn first_ring() -> Result<(IoUring, SetupMode), Missing> {
    let mut refusal = None;
    for mode in SetupMode::ALL {
        match mode.build(8, 16, false) {
            Ok(ring) => return Ok((ring, mode)),
            // Refused outright (sysctl, seccomp, no io_uring): no mode helps.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EPERM | libc::ENOSYS | libc::EACCES)
                ) =>
            {
                return Err(Missing::Refused(e.to_string()))
            }
            // Ring memory charged to a too small RLIMIT_MEMLOCK.
            Err(e) if e.raw_os_error() == Some(libc::ENOMEM) => {
                let memlock = crate::limits::MemLock::raise();
                if !memlock.ipc_lock {
                    return Err(Missing::Memlock(memlock.soft / 1024));
                }
                refusal = Some(e);
            }
            Err(e) => refusal = Some(e),
        }
    }
    Err(Missing::Refused(
        refusal.map_or_else(String::new, |e| e.to_string()),
    ))
}

/// Submits and waits up to a second for one completion.
fn one_completion(ring: &mut IoUring) -> io::Result<cqueue::Entry> {
    let ts = types::Timespec::from(Duration::from_secs(1));
    let args = types::SubmitArgs::new().timespec(&ts);
    match ring.submitter().submit_with_args(1, &args) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
        Err(e) => return Err(e),
    }
    ring.completion()
        .next()
        .ok_or_else(|| io::Error::other("no completion within 1 s"))
}

/// Notes that a completion arrived for `ud`; the request is over unless
/// F_MORE is set.
fn reaped(armed: &mut Vec<u64>, cqe: &cqueue::Entry) {
    if !cqueue::more(cqe.flags()) {
        armed.retain(|ud| *ud != cqe.user_data());
    }
}

fn multishot_accept(ring: &mut IoUring, armed: &mut Vec<u64>) -> Result<(), Missing> {
    let fail = |e: io::Error| Missing::MultishotAccept(e.to_string());
    let listener = TcpListener::bind("127.0.0.1:0").map_err(fail)?;
    let accept = opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
        .flags(libc::SOCK_CLOEXEC)
        .build()
        .user_data(1);
    // SAFETY: a multishot accept passes no memory to the kernel.
    unsafe { ring.submission().push(&accept) }
        .map_err(|e| Missing::MultishotAccept(e.to_string()))?;
    armed.push(1);
    let _client = TcpStream::connect(listener.local_addr().map_err(fail)?).map_err(fail)?;
    let cqe = one_completion(ring).map_err(fail)?;
    reaped(armed, &cqe);
    if cqe.result() < 0 {
        return Err(fail(io::Error::from_raw_os_error(-cqe.result())));
    }
    // SAFETY: a non-negative accept result is a new descriptor that only
    // this completion names; we take ownership to close it.
    drop(unsafe { OwnedFd::from_raw_fd(cqe.result()) });
    if !cqueue::more(cqe.flags()) {
        return Err(Missing::MultishotAccept(
            "the accept ended after one connection".into(),
        ));
    }
    Ok(())
}

fn multishot_recv(ring: &mut IoUring, bufs: &BufRing, armed: &mut Vec<u64>) -> Result<(), Missing> {
    let fail = |e: io::Error| Missing::MultishotRecv(e.to_string());
    let (mut a, b) = std::os::unix::net::UnixStream::pair().map_err(fail)?;
    let recv = opcode::RecvMulti::new(types::Fd(b.as_raw_fd()), bufs.bgid())
        .build()
        .user_data(2);
    // SAFETY: the recv writes only into `bufs`' buffers; the caller cancels
    // and reaps it before `bufs` is unmapped (or leaks them).
    unsafe { ring.submission().push(&recv) }.map_err(|e| Missing::MultishotRecv(e.to_string()))?;
    armed.push(2);
    a.write_all(b"x").map_err(fail)?;
    let cqe = one_completion(ring).map_err(fail)?;
    reaped(armed, &cqe);
    if cqe.result() < 0 {
        return Err(fail(io::Error::from_raw_os_error(-cqe.result())));
    }
    match (
        cqe.result(),
        cqueue::buffer_select(cqe.flags()),
        cqueue::more(cqe.flags()),
    ) {
        (1, Some(_), true) => Ok(()),
        (n, bid, more) => Err(Missing::MultishotRecv(format!(
            "unexpected completion (result {n}, buffer {bid:?}, more {more})"
        ))),
    }
}

/// Cancels the requests still `armed` and reaps their last completions;
/// false if one is still in flight after a second.
fn cancel_all(ring: &mut IoUring, mut armed: Vec<u64>) -> bool {
    for &ud in &armed {
        let cancel = opcode::AsyncCancel::new(ud).build().user_data(IGNORE);
        // SAFETY: a cancel passes no memory to the kernel.
        if unsafe { ring.submission().push(&cancel) }.is_err() {
            return false;
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    while !armed.is_empty() && std::time::Instant::now() < deadline {
        if let Ok(cqe) = one_completion(ring) {
            reaped(&mut armed, &cqe);
        }
    }
    armed.is_empty()
}
