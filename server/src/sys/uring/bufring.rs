//! `BufRing`: one provided-buffer ring per worker (IORING_REGISTER_PBUF_RING),
//! the only receive memory of the io_uring backend. Sessions own no buffer:
//! a multishot recv takes a buffer from this ring only when data arrives,
//! the completion names it (`bid`), the worker serves the bytes and gives
//! the buffer back in the same loop turn.
//!
//! # Ownership
//! A buffer is either the kernel's (in the ring, free to be picked) or the
//! worker's (named by a completion, not yet given back). [`BufLedger`]
//! tracks which, so a completion naming a buffer the worker already holds,
//! or a double give-back, is caught as the bug it is instead of handing the
//! kernel memory that is still being read. The mapping itself is freed only
//! when no request that may pick a buffer is in flight (the worker drains
//! its ring first, and leaks the memory rather than free it otherwise).
//!
//! # Layout
//! Two anonymous mappings: the ring of `count` 16-byte entries (the kernel
//! reads `addr, len, bid`; the tail is the `resv` field of entry 0, written
//! with release ordering), and `count × size` bytes of buffers. Buffers are
//! pre-faulted (MAP_POPULATE) so their pages are part of the worker's
//! start-up RSS, not charged to the sessions that happen to use them.

use io_uring::types::BufRingEntry;
use io_uring::Submitter;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

/// Which side holds each buffer, and where the next give-back goes.
#[derive(Debug)]
pub struct BufLedger {
    with_kernel: Vec<bool>,
    /// Our producer index into the ring (wraps at 2^16, as the kernel's does).
    tail: u16,
    mask: u16,
    out: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("buffer {0} is not in the ring (count {1})")]
    OutOfRange(u16, usize),
    #[error("a completion named buffer {0}, which the worker already holds")]
    NotWithKernel(u16),
    #[error("buffer {0} was given back twice")]
    NotOut(u16),
}

impl BufLedger {
    /// All `count` buffers start in the ring. `count`: a power of two up to
    /// 32768 (the kernel's limit).
    pub fn new(count: u16) -> BufLedger {
        assert!(
            count.is_power_of_two() && count <= 1 << 15,
            "bad ring size {count}"
        );
        BufLedger {
            with_kernel: vec![true; usize::from(count)],
            tail: count,
            mask: count - 1,
            out: 0,
        }
    }

    /// A completion handed buffer `bid` to the worker.
    pub fn take(&mut self, bid: u16) -> Result<(), LedgerError> {
        let slot = self.slot(bid)?;
        if !std::mem::replace(slot, false) {
            return Err(LedgerError::NotWithKernel(bid));
        }
        self.out += 1;
        Ok(())
    }

    /// The worker gives `bid` back; returns the ring index to write it at.
    /// The caller publishes [`Self::tail`] afterwards.
    pub fn give_back(&mut self, bid: u16) -> Result<u16, LedgerError> {
        let slot = self.slot(bid)?;
        if std::mem::replace(slot, true) {
            return Err(LedgerError::NotOut(bid));
        }
        self.out -= 1;
        let index = self.tail & self.mask;
        self.tail = self.tail.wrapping_add(1);
        Ok(index)
    }

    fn slot(&mut self, bid: u16) -> Result<&mut bool, LedgerError> {
        let count = self.with_kernel.len();
        self.with_kernel
            .get_mut(usize::from(bid))
            .ok_or(LedgerError::OutOfRange(bid, count))
    }

    pub fn tail(&self) -> u16 {
        self.tail
    }

    /// Buffers the worker holds now.
    pub fn out(&self) -> usize {
        self.out
    }
}

/// An anonymous private mapping, unmapped on drop.
#[derive(Debug)]
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize, populate: bool) -> io::Result<Mapping> {
        let flags =
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | if populate { libc::MAP_POPULATE } else { 0 };
        // SAFETY: a fresh anonymous mapping at an address of the kernel's
        // choosing; it aliases nothing and is unmapped only by our Drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr, len` is exactly the mapping made in `new`, unmapped
        // once; the owner guarantees the kernel no longer uses it.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A registered provided-buffer ring.
#[derive(Debug)]
pub struct BufRing {
    ring: Mapping,
    bufs: Mapping,
    ledger: BufLedger,
    size: u32,
    bgid: u16,
}

impl BufRing {
    /// Maps `count` buffers of `size` bytes and registers them with the
    /// ring as buffer group `bgid`.
    pub fn new(submitter: &Submitter<'_>, bgid: u16, count: u16, size: u32) -> io::Result<BufRing> {
        let ledger = BufLedger::new(count);
        let ring = Mapping::new(
            usize::from(count) * std::mem::size_of::<BufRingEntry>(),
            false,
        )?;
        let bufs = Mapping::new(usize::from(count) * size as usize, true)?;
        let entries: *mut BufRingEntry = ring.ptr.as_ptr().cast();
        for bid in 0..count {
            // SAFETY: `bid < count` entries fit the ring mapping, which is
            // page-aligned (so aligned for BufRingEntry) and not yet shared
            // with the kernel.
            let entry = unsafe { &mut *entries.add(usize::from(bid)) };
            // SAFETY: buffer `bid` starts inside the buffer mapping.
            let addr = unsafe { bufs.ptr.as_ptr().add(usize::from(bid) * size as usize) };
            entry.set_addr(addr as u64);
            entry.set_len(size);
            entry.set_bid(bid);
        }
        let this = BufRing {
            ring,
            bufs,
            ledger,
            size,
            bgid,
        };
        this.publish_tail();
        // SAFETY: the ring mapping holds `count` initialised entries and
        // lives as long as `this`; the worker keeps `this` alive until the
        // io_uring instance is closed with no request in flight (or leaks
        // it), so the kernel never reads an unmapped ring.
        unsafe {
            submitter.register_buf_ring_with_flags(
                this.ring.ptr.as_ptr() as u64,
                count,
                bgid,
                0,
            )?;
        }
        Ok(this)
    }

    pub fn bgid(&self) -> u16 {
        self.bgid
    }

    /// Bytes this ring costs: buffers plus ring entries (a whole page).
    #[cfg(test)]
    pub fn memory_bytes(&self) -> usize {
        self.bufs.len + self.ring.len.next_multiple_of(4096)
    }

    /// Buffers the worker holds now.
    pub fn out(&self) -> usize {
        self.ledger.out()
    }

    /// Takes buffer `bid`, which a completion says holds `len` received
    /// bytes. Give it back with [`Self::give_back`] once they are served.
    pub fn take(&mut self, bid: u16, len: usize) -> Result<&[u8], LedgerError> {
        self.ledger.take(bid)?;
        let len = len.min(self.size as usize);
        // SAFETY: the completion handed buffer `bid` (inside the mapping:
        // the ledger checked the range) to us with `len ≤ size` bytes
        // written; the kernel will not pick it again before we give it back.
        Ok(unsafe {
            std::slice::from_raw_parts(
                self.bufs
                    .ptr
                    .as_ptr()
                    .add(usize::from(bid) * self.size as usize),
                len,
            )
        })
    }

    /// Returns buffer `bid` to the kernel.
    pub fn give_back(&mut self, bid: u16) -> Result<(), LedgerError> {
        let index = self.ledger.give_back(bid)?;
        let entries: *mut BufRingEntry = self.ring.ptr.as_ptr().cast();
        // SAFETY: `index` is masked to the ring size; the entry at the tail
        // is not one the kernel reads until the tail moves past it.
        let entry = unsafe { &mut *entries.add(usize::from(index)) };
        // SAFETY: buffer `bid` is in range (checked by the ledger).
        let addr = unsafe {
            self.bufs
                .ptr
                .as_ptr()
                .add(usize::from(bid) * self.size as usize)
        };
        entry.set_addr(addr as u64);
        entry.set_len(self.size);
        entry.set_bid(bid);
        self.publish_tail();
        Ok(())
    }

    /// Stores the tail with release ordering so the kernel sees the entries
    /// before it sees the tail move.
    fn publish_tail(&self) {
        let base: *const BufRingEntry = self.ring.ptr.as_ptr().cast();
        // SAFETY: entry 0 is initialised and its `resv` field is the ring's
        // u16 tail, which the kernel only reads: an aligned u16 we may
        // access atomically for the mapping's lifetime.
        let tail = unsafe { AtomicU16::from_ptr(BufRingEntry::tail(base).cast_mut()) };
        tail.store(self.ledger.tail(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_move_between_kernel_and_worker_exactly_once() {
        let mut l = BufLedger::new(4);
        assert_eq!((l.tail(), l.out()), (4, 0));
        l.take(2).unwrap();
        l.take(0).unwrap();
        assert_eq!(l.out(), 2);
        assert_eq!(
            l.take(2),
            Err(LedgerError::NotWithKernel(2)),
            "a bid handed out twice"
        );
        assert_eq!(l.give_back(1), Err(LedgerError::NotOut(1)), "never taken");
        assert_eq!(l.give_back(2), Ok(0), "written at tail & mask");
        assert_eq!(
            l.give_back(2),
            Err(LedgerError::NotOut(2)),
            "double give-back"
        );
        assert_eq!(l.give_back(0), Ok(1));
        assert_eq!((l.tail(), l.out()), (6, 0));
        assert_eq!(l.take(4), Err(LedgerError::OutOfRange(4, 4)));
    }

    #[test]
    fn the_tail_wraps_like_the_kernels_u16_and_the_index_stays_in_the_ring() {
        let mut l = BufLedger::new(8);
        for round in 0..20_000u32 {
            let bid = (round % 8) as u16;
            l.take(bid).unwrap();
            let index = l.give_back(bid).unwrap();
            assert!(index < 8);
            assert_eq!(index, (8 + round as u16 % 8) & 7);
        }
        assert_eq!(l.tail(), 8u16.wrapping_add(20_000));
    }

    #[test]
    #[should_panic(expected = "bad ring size")]
    fn ring_sizes_must_be_powers_of_two() {
        BufLedger::new(6);
    }

    #[test]
    fn a_registered_ring_hands_out_what_the_kernel_wrote() {
        use std::io::Write;
        if let Err(why) = super::super::kernel_offers_io_uring() {
            eprintln!("SKIPPED: no usable io_uring here: {why}");
            return;
        }
        // The host offers io_uring: from here on, anything refused fails.
        let mut ring = io_uring::IoUring::new(8).unwrap();
        let mut bufs = BufRing::new(&ring.submitter(), 3, 4, 64).unwrap();
        assert_eq!(bufs.memory_bytes(), 4 * 64 + 4096);
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = io_uring::types::Fd(std::os::fd::AsRawFd::as_raw_fd(&b));
        let recv = io_uring::opcode::RecvMulti::new(fd, bufs.bgid())
            .build()
            .user_data(1);
        // SAFETY: the recv writes only into ring buffers, which outlive it:
        // it is cancelled and its last completion reaped before `bufs` drops.
        unsafe { ring.submission().push(&recv).unwrap() };
        a.write_all(b"hello").unwrap();
        ring.submit_and_wait(1).unwrap();
        let cqe = ring.completion().next().unwrap();
        let bid = io_uring::cqueue::buffer_select(cqe.flags()).expect("a buffer");
        assert_eq!(bufs.take(bid, cqe.result() as usize).unwrap(), b"hello");
        assert_eq!(bufs.out(), 1);
        bufs.give_back(bid).unwrap();
        assert_eq!(bufs.out(), 0);
        drop(a); // EOF ends the multishot: nothing is left in flight
        ring.submit_and_wait(1).unwrap();
        let last = ring.completion().next().unwrap();
        assert_eq!(last.result(), 0);
        assert!(!io_uring::cqueue::more(last.flags()));
    }
}
