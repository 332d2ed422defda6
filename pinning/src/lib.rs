//! Thread-per-core plumbing for a raftline node: wake-ups an event loop can watch ([`Waker`]),
//! best-effort core pinning and the table of which core runs what ([`Layout`]).
//!
//! Every wake-up is an eventfd, so a consumer blocks in its event loop instead of spinning.

mod affinity;
mod layout;
mod waker;

pub use affinity::{available_cores, pin_current_thread, spawn_pinned, PinError};
pub use layout::{Layout, LayoutError, Role};
pub use waker::Waker;
