//! The process's allocator, and handing memory it no longer uses back to the system.
//!
//! The binary runs on jemalloc rather than glibc's malloc, for what an idle keep-alive
//! connection costs. tokio allocates each task and each socket's readiness record 128-byte
//! aligned; glibc serves such a request by over-allocating and splitting, leaving gaps that
//! little else fits, while jemalloc's size classes are aligned by construction. And jemalloc
//! keeps objects of one size class together in slabs of their own, so the buffers and request
//! blocks a burst of requests took do not pin the pages of the long-lived connection records
//! allocated between them. Measured with `bench/idle_conns.py` (5,000 connections): about
//! 950 bytes per idle connection on glibc, 550–780 on jemalloc. No request on the keep-alive
//! path allocates, so the allocator's speed does not show in the cost per request.

use std::ffi::CStr;

/// The global allocator the binary installs (`#[global_allocator]` in `main.rs`).
pub use tikv_jemallocator::Jemalloc as Allocator;

/// Returns every free page of every arena to the system now: after a burst, when the pools
/// freed a lot at once.
pub fn return_free_memory() {
    let _ = arenas_ctl(c"arena.4096.purge");
}

/// Returns free pages that have sat unused for a while (jemalloc's decay, ten seconds by
/// default). jemalloc does this as a side effect of allocating; an idle process allocates
/// nothing, so the workers call this periodically.
pub fn return_decayed_memory() {
    let _ = arenas_ctl(c"arena.4096.decay");
}

/// Runs a `mallctl` command that takes and returns nothing; 4096 in the name is jemalloc's
/// `MALLCTL_ARENAS_ALL`. Returns `mallctl`'s result; a failure only means memory stays with
/// the process.
fn arenas_ctl(name: &CStr) -> std::ffi::c_int {
    // SAFETY: `name` is a NUL-terminated command that reads and writes no arguments, so every
    // pointer passed is null and every length zero, as `mallctl(3)` requires for such commands.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    }
}

#[cfg(test)]
mod tests {
    /// The commands exist (a misspelt one returns ENOENT rather than failing loudly).
    #[test]
    fn purge_and_decay_are_known_commands() {
        for name in [c"arena.4096.purge", c"arena.4096.decay"] {
            assert_eq!(super::arenas_ctl(name), 0, "{name:?}");
        }
    }
}
