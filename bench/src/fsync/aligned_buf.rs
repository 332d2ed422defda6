//! Sector-aligned write buffers for O_DIRECT.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

/// Alignment of every buffer, offset and length on the O_DIRECT paths: 4 KiB covers 512 B and 4 KiB sectors.
pub const SECTOR_BYTES: usize = 4096;

/// A heap buffer aligned to `SECTOR_BYTES`, filled with a pseudo-random pattern so that no device
/// can compress or deduplicate what is measured.
pub(crate) struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

// Invariant: the buffer is exclusively owned; only shared references hand out its bytes.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `len` bytes (a non-zero multiple of `SECTOR_BYTES`) filled from `seed`.
    pub(crate) fn patterned(len: usize, seed: u64) -> Self {
        assert!(
            len > 0 && len % SECTOR_BYTES == 0,
            "buffer length {len} must be a non-zero multiple of {SECTOR_BYTES}"
        );
        let layout =
            Layout::from_size_align(len, SECTOR_BYTES).expect("sector-aligned layout is valid");
        // SAFETY: layout has a non-zero size. Zeroed, so every byte is initialised.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        let mut buf = AlignedBuf { ptr, layout };
        let mut state = seed | 1;
        for chunk in buf.as_mut_slice().chunks_exact_mut(8) {
            // xorshift64: cheap, incompressible enough for a disk.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes());
        }
        buf
    }

    pub(crate) fn len(&self) -> usize {
        self.layout.size()
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr points to layout.size() initialised bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self guarantees exclusivity.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `patterned` with this exact layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}
