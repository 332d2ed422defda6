//! Stopping a running benchmark from outside (a Ctrl-C handler).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A flag that makes every running measurement stop at its next operation (Ctrl-C handlers raise it).
#[derive(Clone, Debug, Default)]
pub struct StopSignal(Arc<AtomicBool>);

impl StopSignal {
    /// Asks running measurements to stop; they return `BenchError::Interrupted` after removing their files.
    pub fn raise(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// True once `raise` was called.
    pub fn is_raised(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
