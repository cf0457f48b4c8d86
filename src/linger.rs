//! Receiving from a queue with a short linger before parking.
//!
//! The background threads behind capture (recorder, sinks, analysis workers) take
//! one item at a time from a channel. A thread that parks as soon as its queue is
//! empty must be woken (a futex syscall and a context switch) by the thread that
//! sends the next item, and under load that is once per attack, on capture's
//! threads. Sleeping a moment first lets items gather: the senders find nobody
//! parked and pay nothing, and the consumer wakes once per [`LINGER`] instead of once
//! per item. Only after an empty linger does it park (and is woken by the next
//! send), so an idle sensor costs nothing and an event is delayed by at most
//! [`LINGER`].

use std::time::Duration;

/// How long a consumer sleeps on an empty queue before it parks.
pub const LINGER: Duration = Duration::from_millis(2);

/// What a non-blocking receive found.
pub enum Try<T> {
    Item(T),
    Empty,
    Closed,
}

/// A queue a consumer can poll and park on.
pub trait Queue<T> {
    fn poll(&self) -> Try<T>;
    /// Park until an item arrives; `None` when every sender is gone.
    fn park(&self) -> Option<T>;
}

impl<T> Queue<T> for std::sync::mpsc::Receiver<T> {
    fn poll(&self) -> Try<T> {
        match self.try_recv() {
            Ok(t) => Try::Item(t),
            Err(std::sync::mpsc::TryRecvError::Empty) => Try::Empty,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => Try::Closed,
        }
    }
    fn park(&self) -> Option<T> {
        self.recv().ok()
    }
}

impl<T> Queue<T> for crossbeam_channel::Receiver<T> {
    fn poll(&self) -> Try<T> {
        match self.try_recv() {
            Ok(t) => Try::Item(t),
            Err(crossbeam_channel::TryRecvError::Empty) => Try::Empty,
            Err(crossbeam_channel::TryRecvError::Disconnected) => Try::Closed,
        }
    }
    fn park(&self) -> Option<T> {
        self.recv().ok()
    }
}

/// The next item of `q`: at once if one is queued; else after lingering
/// [`LINGER`]; else `idle` runs (e.g. a flush) and the thread parks. `None` once
/// the queue is closed and empty.
pub fn recv<T>(q: &impl Queue<T>, idle: impl FnMut()) -> Option<T> {
    recv_with(q, LINGER, idle)
}

fn recv_with<T>(q: &impl Queue<T>, linger: Duration, mut idle: impl FnMut()) -> Option<T> {
    match q.poll() {
        Try::Item(t) => return Some(t),
        Try::Closed => return None,
        Try::Empty => {}
    }
    std::thread::sleep(linger);
    match q.poll() {
        Try::Item(t) => Some(t),
        Try::Closed => None,
        Try::Empty => {
            idle();
            q.park()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;

    #[test]
    fn queued_items_come_at_once_and_idle_runs_only_before_parking() {
        let (tx, rx) = std::sync::mpsc::sync_channel(8);
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        let idle = AtomicUsize::new(0);
        assert_eq!(recv(&rx, || _ = idle.fetch_add(1, SeqCst)), Some(1));
        assert_eq!(recv(&rx, || _ = idle.fetch_add(1, SeqCst)), Some(2));
        assert_eq!(idle.load(SeqCst), 0);
        // Empty: lingers, runs idle, parks until the next send.
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            tx.send(3).unwrap();
        });
        assert_eq!(recv(&rx, || _ = idle.fetch_add(1, SeqCst)), Some(3));
        assert_eq!(idle.load(SeqCst), 1);
        t.join().unwrap();
        // Every sender gone and nothing queued: closed.
        assert_eq!(recv(&rx, || ()), None);
    }

    #[test]
    fn an_item_sent_during_the_linger_is_taken_without_parking() {
        let (tx, rx) = crossbeam_channel::bounded(8);
        let idle = Arc::new(AtomicUsize::new(0));
        // A long linger, so the sender is surely in time even on a loaded machine.
        let linger = Duration::from_millis(500);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.send(7).unwrap();
            // Keep the sender alive past the linger.
            std::thread::sleep(linger * 2);
        });
        let i = Arc::clone(&idle);
        let got = recv_with(&rx, linger, move || _ = i.fetch_add(1, SeqCst));
        assert_eq!(got, Some(7));
        assert_eq!(
            idle.load(SeqCst),
            0,
            "idle ran although an item came in the linger"
        );
        t.join().unwrap();
    }
}
