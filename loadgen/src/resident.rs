//! Buffers whose pages are resident as soon as they are made.
//!
//! `vec![0; n]` is `calloc`: the kernel maps zero pages lazily, so the
//! memory would become resident (and be counted in RSS) only when first
//! written — during the run, where the per-session figure would absorb it.
//! Fixed buffers are made with [`resident`] instead, before the baseline.
#![forbid(unsafe_code)]

/// `len` copies of `value`, with every page written once.
pub fn resident<T: Copy>(len: usize, value: T) -> Vec<T> {
    let mut v = vec![value; len];
    let per_page = (4096 / std::mem::size_of::<T>().max(1)).max(1);
    for i in (0..len).step_by(per_page) {
        // black_box: the compiler may not drop a store of a known zero.
        v[i] = std::hint::black_box(value);
    }
    v
}
