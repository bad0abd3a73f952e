//! The process's allocator: mimalloc (installed by the binary, `src/main.rs`), and a way
//! to hand memory it has freed back to the operating system.
//!
//! mimalloc keeps freed pages for reuse. After the store packs a batch of writes (see
//! `store::table`), the batch's buffers and the segments it replaced are free, but stay
//! resident until the allocator is asked to purge them; [`release_free_memory`] asks.
//! It is called only when the replica is idle, outside every lock.

/// Returns fully free allocator pages to the operating system. Harmless when mimalloc is
/// not the global allocator (tests): it then has nothing to purge.
pub fn release_free_memory() {
    // SAFETY: `mi_collect` takes no pointers and may be called at any time from any
    // thread; it only walks the allocator's own bookkeeping.
    unsafe { libmimalloc_sys::mi_collect(true) };
}
