//! Bounded hand-off queues between pinned threads that wake their consumer's event loop.

use crate::Waker;
use crossbeam_channel::{Receiver, Sender, TrySendError};

/// Why a [`MailboxSender::send`] handed the item back.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SendError<T> {
    /// The mailbox holds `capacity` items: back-pressure, the sender decides what to do.
    #[error("mailbox full")]
    Full(T),
    /// The receiver was dropped; nobody will ever take the item.
    #[error("mailbox receiver gone")]
    Disconnected(T),
}

impl<T> SendError<T> {
    /// The item that was not delivered.
    pub fn into_inner(self) -> T {
        match self {
            SendError::Full(item) | SendError::Disconnected(item) => item,
        }
    }
}

/// Creates a mailbox of at most `capacity` items whose consumer is woken through `waker`.
///
/// `waker` is the consumer's (e.g. `Net::waker()` of the thread that drains the receiver).
pub fn mailbox<T>(capacity: usize, waker: Waker) -> (MailboxSender<T>, MailboxReceiver<T>) {
    assert!(capacity > 0, "a mailbox needs room for at least one item");
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    (MailboxSender { tx, waker }, MailboxReceiver { rx })
}

/// The producing end; cheap to clone, one per producer thread.
#[derive(Debug)]
pub struct MailboxSender<T> {
    tx: Sender<T>,
    waker: Waker,
}

impl<T> Clone for MailboxSender<T> {
    fn clone(&self) -> Self {
        MailboxSender {
            tx: self.tx.clone(),
            waker: self.waker.clone(),
        }
    }
}

impl<T> MailboxSender<T> {
    /// Queues `item` and wakes the consumer, or hands the item back if the mailbox is full.
    pub fn send(&self, item: T) -> Result<(), SendError<T>> {
        match self.tx.try_send(item) {
            Ok(()) => {
                self.waker.wake();
                Ok(())
            }
            Err(TrySendError::Full(item)) => Err(SendError::Full(item)),
            Err(TrySendError::Disconnected(item)) => Err(SendError::Disconnected(item)),
        }
    }
}

/// The consuming end, owned by the thread whose event loop watches the waker.
#[derive(Debug)]
pub struct MailboxReceiver<T> {
    rx: Receiver<T>,
}

impl<T> MailboxReceiver<T> {
    /// Takes the oldest item, if any; never blocks (the consumer blocks in its event loop).
    pub fn try_recv(&self) -> Option<T> {
        self.rx.try_recv().ok()
    }

    /// Takes up to `items_max` items, oldest first, so one busy producer cannot starve the loop.
    pub fn drain(&self, items_max: usize) -> impl Iterator<Item = T> + '_ {
        self.rx.try_iter().take(items_max)
    }

    /// Number of items waiting.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Whether no item is waiting.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// The bound given at creation.
    pub fn capacity(&self) -> usize {
        self.rx.capacity().expect("mailboxes are bounded")
    }
}
