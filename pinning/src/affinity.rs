//! Best-effort core pinning and named pinned threads.

use std::io;
use std::thread::JoinHandle;

/// Why a thread could not be pinned (the caller usually logs it and runs unpinned).
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The core is outside the set this process may run on (cgroup, taskset, or no such core).
    #[error("core {core} is not available to this process (available: {available:?})")]
    NotAvailable {
        /// The core asked for.
        core: usize,
        /// The cores this process may run on.
        available: Vec<usize>,
    },
    /// The kernel refused `sched_setaffinity`.
    #[error("sched_setaffinity to core {core} failed: {source}")]
    Os {
        /// The core asked for.
        core: usize,
        /// The OS error.
        source: io::Error,
    },
}

/// The cores this process may run on, ascending (from `sched_getaffinity`).
pub fn available_cores() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; zeroed is its empty value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer and size describe `set`, which lives across the call.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        return (0..n).collect();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `core` < CPU_SETSIZE, the bound CPU_ISSET requires.
        .filter(|&core| unsafe { libc::CPU_ISSET(core, &set) })
        .collect()
}

/// Pins the calling thread to `core`.
pub fn pin_current_thread(core: usize) -> Result<(), PinError> {
    let available = available_cores();
    if !available.contains(&core) {
        return Err(PinError::NotAvailable { core, available });
    }
    // SAFETY: cpu_set_t is plain data; zeroed is its empty value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `core` is one of the available cores, hence < CPU_SETSIZE.
    unsafe { libc::CPU_SET(core, &mut set) };
    // SAFETY: the pointer and size describe `set`, which lives across the call; 0 = this thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(PinError::Os {
            core,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Spawns a thread called `name` that pins itself to `core` before running `body`.
///
/// Pinning is best effort: a failure is logged as a warning and the thread runs unpinned (three
/// nodes on a two-core machine must still work). `None` leaves the thread unpinned.
pub fn spawn_pinned<F, T>(name: &str, core: Option<usize>, body: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let thread_name = name.to_owned();
    std::thread::Builder::new()
        .name(thread_name.clone())
        .spawn(move || {
            if let Some(core) = core {
                match pin_current_thread(core) {
                    Ok(()) => tracing::debug!(thread = %thread_name, core, "thread pinned"),
                    Err(err) => tracing::warn!(
                        thread = %thread_name,
                        core,
                        "thread not pinned, running unpinned: {err}"
                    ),
                }
            }
            body()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_least_one_core_is_available() {
        assert!(!available_cores().is_empty());
    }

    #[test]
    fn pinning_to_an_available_core_succeeds() {
        let core = available_cores()[0];
        let pinned = spawn_pinned("pin-test", None, move || pin_current_thread(core).is_ok())
            .unwrap()
            .join()
            .unwrap();
        assert!(pinned);
    }

    #[test]
    fn pinning_to_a_missing_core_is_an_error_not_a_panic() {
        let missing = libc::CPU_SETSIZE as usize + 7;
        let err = pin_current_thread(missing).unwrap_err();
        assert!(matches!(err, PinError::NotAvailable { core, .. } if core == missing));
    }

    #[test]
    fn a_thread_whose_pin_fails_still_runs() {
        let handle = spawn_pinned("unpinnable", Some(usize::MAX / 2), || 42).unwrap();
        assert_eq!(handle.join().unwrap(), 42);
    }

    #[test]
    fn spawned_thread_carries_its_name() {
        let name = spawn_pinned("named-thread", None, || {
            std::thread::current().name().map(str::to_owned)
        })
        .unwrap()
        .join()
        .unwrap();
        assert_eq!(name.as_deref(), Some("named-thread"));
    }
}
