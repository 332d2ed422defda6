//! A cross-thread wake-up an event loop can watch: one eventfd per consuming thread.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Wakes one consuming thread from any number of producers.
///
/// The consumer watches [`Waker::fd`] in its event loop (io_uring read or poll readiness). A burst
/// of `wake()` calls costs one `write(2)`: the `pending` flag stays set until the consumer has
/// drained the eventfd and called [`Waker::acknowledge`], and later wakes only see the flag.
///
/// Protocol for the consumer (what makes a coalesced wake impossible to lose): drain the eventfd,
/// then `acknowledge()`, then look at every source of work. A producer publishes its work before
/// it calls `wake()`; if its wake found the flag already set, the consumer's `acknowledge()`
/// (which happens after that) is followed by a look at the work.
#[derive(Clone, Debug)]
pub struct Waker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    fd: OwnedFd,
    pending: AtomicBool,
}

impl Waker {
    /// Creates a waker backed by a fresh non-blocking eventfd.
    pub fn new() -> io::Result<Waker> {
        // SAFETY: eventfd has no memory arguments; the result is checked before use.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Waker {
            inner: Arc::new(Inner {
                fd,
                pending: AtomicBool::new(false),
            }),
        })
    }

    /// Wakes the consumer; cheap when a wake is already pending (no syscall).
    pub fn wake(&self) {
        if self.inner.pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local; the fd is owned by `self.inner`.
        let n = unsafe {
            libc::write(
                self.inner.fd.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        // The only possible failure is EAGAIN on a counter near u64::MAX, which still wakes.
        debug_assert!(n == 8 || io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock);
    }

    /// The eventfd the consumer's event loop watches for readability.
    pub fn fd(&self) -> RawFd {
        self.inner.fd.as_raw_fd()
    }

    /// Re-arms coalescing; the consumer calls it after it has read the eventfd itself (io_uring).
    pub fn acknowledge(&self) {
        self.inner.pending.swap(false, Ordering::AcqRel);
    }

    /// Reads the eventfd (non-blocking) and re-arms coalescing: for readiness-based loops.
    pub fn drain(&self) {
        let mut counter: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live local; EAGAIN (nothing pending) is fine.
        unsafe {
            libc::read(
                self.inner.fd.as_raw_fd(),
                (&mut counter as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            );
        }
        self.acknowledge();
    }

    /// Blocks the calling thread until woken or until `timeout` passes (`None`: no limit).
    ///
    /// Returns whether a wake arrived. For consumers without an event loop; one waiter only.
    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let timeout_ms: libc::c_int = match timeout {
            None => -1,
            // Rounded up: a 100 µs timeout must not become a busy 0 ms poll.
            Some(t) => t
                .as_nanos()
                .div_ceil(1_000_000)
                .min(libc::c_int::MAX as u128) as libc::c_int,
        };
        let mut pollfd = libc::pollfd {
            fd: self.inner.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: one valid pollfd that lives across the call.
            let n = unsafe { libc::poll(&mut pollfd, 1, timeout_ms) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            if n == 0 {
                return Ok(false);
            }
            self.drain();
            return Ok(true);
        }
    }
}

impl AsFd for Waker {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_times_out_without_a_wake() {
        let waker = Waker::new().unwrap();
        assert!(!waker.wait(Some(Duration::ZERO)).unwrap());
    }

    #[test]
    fn a_burst_of_wakes_is_one_pending_wake() {
        let waker = Waker::new().unwrap();
        for _ in 0..100 {
            waker.wake();
        }
        assert!(waker.wait(Some(Duration::ZERO)).unwrap());
        assert!(
            !waker.wait(Some(Duration::ZERO)).unwrap(),
            "drained by the first wait"
        );
    }

    #[test]
    fn a_wake_after_acknowledge_is_seen_again() {
        let waker = Waker::new().unwrap();
        waker.wake();
        assert!(waker.wait(Some(Duration::ZERO)).unwrap());
        waker.wake();
        assert!(waker.wait(Some(Duration::ZERO)).unwrap());
    }
}
