//! The policy's allocator: a pointer bumped through linear memory, never freed.
//!
//! The host runs every decision in a fresh instance and throws it away afterwards, so nothing
//! allocated needs to outlive the call. Rust's default allocator on this target (dlmalloc)
//! leaves the memory the module starts with unused and grows linear memory at its first
//! allocation; each growth has the host change page protections (an `mprotect`, which on a
//! multi-core machine interrupts the other cores to flush their TLBs), then shrink the memory
//! back and reset the grown pages before the next instance, in every decision. This one
//! allocates upward from the end of the static data, within the page the module starts with
//! (a decision needs a few KiB), and grows only when that is used up. Written here because
//! it depends on the one-call lifetime, which no general-purpose allocator may assume.

use core::alloc::{GlobalAlloc, Layout};
use core::arch::wasm32;
use core::cell::Cell;

const PAGE: usize = 65536;

struct Bump {
    /// The first free byte; 0 until the first allocation.
    next: Cell<usize>,
}

// SAFETY: wasm32-unknown-unknown without the `atomics` feature runs one thread.
unsafe impl Sync for Bump {}

#[global_allocator]
static ALLOCATOR: Bump = Bump { next: Cell::new(0) };

unsafe extern "C" {
    /// The first byte after the stack and the static data, placed by the linker.
    static __heap_base: u8;
}

impl Bump {
    /// Claims memory up to `end`, growing linear memory if needed.
    fn claim(&self, end: usize) -> bool {
        let limit = wasm32::memory_size(0) * PAGE;
        let fits = end <= limit || wasm32::memory_grow(0, (end - limit).div_ceil(PAGE)) != usize::MAX;
        if fits {
            self.next.set(end);
        }
        fits
    }
}

unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let next = match self.next.get() {
            0 => &raw const __heap_base as usize,
            next => next,
        };
        let start = next.next_multiple_of(layout.align());
        match start.checked_add(layout.size()) {
            Some(end) if self.claim(end) => start as *mut u8,
            _ => core::ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // The newest allocation (a string or a list being built) grows or shrinks in place.
        if ptr as usize + layout.size() == self.next.get() {
            return match (ptr as usize).checked_add(new_size) {
                Some(end) if self.claim(end) => ptr,
                _ => core::ptr::null_mut(),
            };
        }
        // SAFETY: the caller guarantees `new_size`, rounded up to `layout.align()`, fits an isize.
        let new = unsafe { self.alloc(Layout::from_size_align_unchecked(new_size, layout.align())) };
        if !new.is_null() {
            // SAFETY: both blocks are live and distinct; the old one holds `layout.size()` bytes.
            unsafe { core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
        }
        new
    }
}
