//! Cross-thread behaviour of wakers (real threads, no sleeps).

use std::sync::mpsc;

use raftline_pinning::{spawn_pinned, Waker};

#[test]
fn a_wake_from_another_thread_wakes_a_blocked_waiter() {
    let waker = Waker::new().unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    let remote = waker.clone();
    let waker_thread = spawn_pinned("test-waker", None, move || {
        ready_rx.recv().unwrap();
        remote.wake();
    })
    .unwrap();
    ready_tx.send(()).unwrap();
    // No timeout: the test hangs (and the harness reports it) if the wake were lost.
    assert!(waker.wait(None).unwrap());
    waker_thread.join().unwrap();
}
