//! Reading a whole per-CPU hash map in a few system calls (`BPF_MAP_LOOKUP_BATCH`, Linux 5.6),
//! which aya does not offer. The counters of 1,000 instances are about 40,000 entries: one
//! lookup each took 60 ms of every status and scrape, a batch read takes a few.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd as _, BorrowedFd};

/// `BPF_MAP_LOOKUP_BATCH` of `enum bpf_cmd`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries asked for per call. A hash map's batch never splits a bucket, and refuses with
/// ENOSPC when a bucket holds more than this; no bucket of ours comes near.
const CHUNK: u32 = 4096;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every entry of the per-CPU hash map `map` whose keys are `K` and whose values are one
/// `u64` per possible CPU (`cpus` of them), each entry's values summed.
///
/// # Safety
///
/// `map` must be a per-CPU hash map with keys of exactly `size_of::<K>()` bytes, any bit
/// pattern of which is a valid `K`, and values of 8 bytes.
pub(super) unsafe fn sum_per_cpu<K: Copy>(
    map: BorrowedFd<'_>,
    cpus: usize,
) -> io::Result<Vec<(K, u64)>> {
    let key_size = size_of::<K>();
    let chunk = CHUNK as usize;
    let mut keys = vec![0u8; chunk * key_size];
    let mut values = vec![0u64; chunk * cpus];
    // The hash map's batch position is a bucket number (u32).
    let mut position_in = 0u32;
    let mut position_out = 0u32;
    let mut entries = Vec::new();
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                (&raw const position_in) as u64
            },
            out_batch: (&raw mut position_out) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK,
            map_fd: u32::try_from(map.as_raw_fd()).map_err(io::Error::other)?,
            ..BatchAttr::default()
        };
        // SAFETY: the buffers hold CHUNK keys and CHUNK values of `cpus` u64s each, as the
        // kernel writes them for such a map (the caller vouches for its types); `attr` lives
        // across the call, which writes back how many entries it copied into `count`.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        let error = (ret < 0).then(io::Error::last_os_error);
        let copied = (attr.count as usize).min(chunk);
        for (index, per_cpu) in values.chunks_exact(cpus).take(copied).enumerate() {
            // SAFETY: the kernel wrote `copied` keys of `key_size` bytes; any bit pattern is
            // a valid K (the caller's promise).
            let key = unsafe {
                keys.as_ptr()
                    .add(index * key_size)
                    .cast::<K>()
                    .read_unaligned()
            };
            entries.push((key, per_cpu.iter().sum()));
        }
        match error {
            // ENOENT: the end of the map, after the entries of this last call.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(entries),
            Some(e) => return Err(e),
            None => {}
        }
        position_in = position_out;
        first = false;
    }
}
