//! Cross-thread behaviour of wakers and mailboxes (real threads, no sleeps).

use std::sync::mpsc;
use std::time::Duration;

use raftline_pinning::{mailbox, spawn_pinned, SendError, Waker};

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

#[test]
fn a_full_mailbox_hands_the_item_back() {
    let waker = Waker::new().unwrap();
    let (tx, rx) = mailbox::<u32>(2, waker);
    tx.send(1).unwrap();
    tx.send(2).unwrap();
    assert_eq!(tx.send(3), Err(SendError::Full(3)));
    assert_eq!(rx.len(), 2);
    assert_eq!(rx.try_recv(), Some(1));
    tx.send(3).unwrap();
    assert_eq!(rx.drain(10).collect::<Vec<_>>(), vec![2, 3]);
}

#[test]
fn sending_to_a_dropped_receiver_hands_the_item_back() {
    let (tx, rx) = mailbox::<&str>(1, Waker::new().unwrap());
    drop(rx);
    assert_eq!(tx.send("x").unwrap_err().into_inner(), "x");
}

#[test]
fn every_item_sent_from_many_threads_arrives_and_each_send_wakes() {
    const PRODUCERS: u64 = 4;
    const ITEMS_PER_PRODUCER: u64 = 2_000;
    let waker = Waker::new().unwrap();
    let (tx, rx) = mailbox::<u64>(64, waker.clone());
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let tx = tx.clone();
            spawn_pinned("test-producer", None, move || {
                for i in 0..ITEMS_PER_PRODUCER {
                    let mut item = p * ITEMS_PER_PRODUCER + i;
                    // Back-pressure: retry the handed-back item until the consumer made room.
                    while let Err(SendError::Full(back)) = tx.send(item) {
                        item = back;
                        std::thread::yield_now();
                    }
                }
            })
            .unwrap()
        })
        .collect();
    drop(tx);
    let mut seen = vec![false; (PRODUCERS * ITEMS_PER_PRODUCER) as usize];
    let mut received = 0;
    while received < seen.len() {
        // The consumer protocol: wait for a wake, then drain. A lost wake would hang here; the
        // timeout only bounds how long a broken build takes to fail.
        assert!(
            waker.wait(Some(Duration::from_secs(30))).unwrap(),
            "wake lost"
        );
        for item in rx.drain(usize::MAX) {
            assert!(!seen[item as usize], "item {item} delivered twice");
            seen[item as usize] = true;
            received += 1;
        }
    }
    for producer in producers {
        producer.join().unwrap();
    }
}
