//! A heap buffer aligned to the sector size, as O_DIRECT requires of user memory.

use std::alloc::{alloc_zeroed, dealloc, Layout};

/// Sector size every write is aligned to (offset, length and memory).
pub const SECTOR_BYTES: usize = 4096;

/// Rounds `n` up to the next multiple of the sector size.
pub fn align_up(n: u64) -> u64 {
    n.div_ceil(SECTOR_BYTES as u64) * SECTOR_BYTES as u64
}

/// A fixed-capacity, zero-initialised, sector-aligned byte buffer.
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    capacity: usize,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `capacity` bytes (rounded up to whole sectors), all zero.
    pub fn new(capacity: usize) -> AlignedBuf {
        let capacity = align_up(capacity.max(1) as u64) as usize;
        let layout = Layout::from_size_align(capacity, SECTOR_BYTES).expect("valid layout");
        // SAFETY: layout has non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr =
            std::ptr::NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf {
            ptr,
            capacity,
            len: 0,
        }
    }

    /// Bytes the buffer can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes filled so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is filled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends bytes; the caller guarantees they fit.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        assert!(
            self.len + bytes.len() <= self.capacity,
            "AlignedBuf overflow"
        );
        // SAFETY: bounds checked above; the regions cannot overlap (we own ours exclusively).
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ptr.as_ptr().add(self.len),
                bytes.len(),
            );
        }
        self.len += bytes.len();
    }

    /// Zero-pads up to the next sector boundary, so the filled part can be written with O_DIRECT.
    pub fn pad_to_sector(&mut self) {
        let padded = align_up(self.len as u64) as usize;
        let len = self.len;
        self.as_mut_full()[len..padded].fill(0);
        self.len = padded;
    }

    /// Forgets the contents (length 0).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The filled bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the first `len` bytes are initialised (allocation was zeroed).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn as_mut_full(&mut self) -> &mut [u8] {
        // SAFETY: the whole allocation is initialised and exclusively ours.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.capacity) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.capacity, SECTOR_BYTES).expect("valid layout");
        // SAFETY: allocated in `new` with this exact layout.
        unsafe { dealloc(self.ptr.as_ptr(), layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_is_sector_aligned_and_pads_with_zeros() {
        let mut buf = AlignedBuf::new(5000);
        assert_eq!(buf.capacity(), 8192);
        assert_eq!(buf.as_slice().as_ptr() as usize % SECTOR_BYTES, 0);
        buf.extend_from_slice(&[1; 10]);
        buf.pad_to_sector();
        assert_eq!(buf.len(), SECTOR_BYTES);
        assert!(buf.as_slice()[10..].iter().all(|&b| b == 0));
    }
}
