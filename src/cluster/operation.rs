//! The membership change this node is making now (a join, a leave, a removal), so a second
//! one waits its turn instead of interleaving with it, and `status` can say what is going on
//! while the CLI that started it is gone. In memory: the on-disk record of a change that must
//! survive a crash is the journal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// What `status` shows of the operation in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InProgress {
    /// `join`, `leave`, `remove-node`.
    pub operation: String,
    /// What it is doing now, in a few words.
    pub step: String,
    pub running_for_secs: u64,
}

#[derive(Debug)]
struct Running {
    operation: &'static str,
    step: String,
    since: Instant,
}

/// The slot of the one operation that may run at a time.
#[derive(Debug, Default, Clone)]
pub struct Operations {
    current: Arc<Mutex<Option<Running>>>,
    stopping: Arc<AtomicBool>,
}

/// The daemon is stopping: an operation ends at its next checkpoint and leaves the rest to
/// the journal (settled at the next start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopping;

impl Operations {
    /// The daemon is stopping: no operation goes past its next checkpoint.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// `Err(Stopping)` once [`Operations::stop`] was called.
    pub fn check(&self) -> Result<(), Stopping> {
        if self.stopping.load(Ordering::SeqCst) {
            Err(Stopping)
        } else {
            Ok(())
        }
    }

    /// Takes the slot for `operation`, or says what holds it.
    pub fn begin(&self, operation: &'static str) -> Result<Ticket, InProgress> {
        let mut current = self
            .current
            .lock()
            .map_err(|_| in_progress("unknown", "", Instant::now()))?;
        if let Some(running) = current.as_ref() {
            return Err(in_progress(running.operation, &running.step, running.since));
        }
        *current = Some(Running {
            operation,
            step: "starting".into(),
            since: Instant::now(),
        });
        Ok(Ticket {
            slot: self.current.clone(),
        })
    }

    /// The operation in progress, if any.
    pub fn current(&self) -> Option<InProgress> {
        let current = self.current.lock().ok()?;
        current
            .as_ref()
            .map(|r| in_progress(r.operation, &r.step, r.since))
    }
}

fn in_progress(operation: &str, step: &str, since: Instant) -> InProgress {
    InProgress {
        operation: operation.to_string(),
        step: step.to_string(),
        running_for_secs: since.elapsed().as_secs(),
    }
}

/// Holds the slot until dropped (the operation ended, whichever way).
#[derive(Debug)]
pub struct Ticket {
    slot: Arc<Mutex<Option<Running>>>,
}

impl Ticket {
    /// Says what the operation is doing now.
    pub fn step(&self, step: &str) {
        if let Ok(mut current) = self.slot.lock() {
            if let Some(running) = current.as_mut() {
                running.step = step.to_string();
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Ok(mut current) = self.slot.lock() {
            *current = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_operation_at_a_time_and_the_slot_frees_itself() {
        let ops = Operations::default();
        assert_eq!(ops.current(), None);
        let ticket = ops.begin("join").unwrap();
        ticket.step("waiting for the member");
        let busy = ops.begin("leave").unwrap_err();
        assert_eq!(
            (busy.operation.as_str(), busy.step.as_str()),
            ("join", "waiting for the member")
        );
        assert_eq!(ops.current().unwrap().operation, "join");
        drop(ticket);
        assert_eq!(ops.current(), None);
        assert!(ops.begin("leave").is_ok());
    }
}
