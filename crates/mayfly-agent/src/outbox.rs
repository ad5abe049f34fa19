//! The agent's outbox: VM events wait here, in the order they happened, until the server
//! acknowledges having stored them. Each event gets its sequence number and is written to the
//! journal before anything sends it, so neither a broken session nor a crash of the agent loses
//! it. A session sends every unacknowledged event from the oldest, so after a reconnect the
//! server sees what it has not acknowledged again (it applies each number once); VMs keep
//! running while the server is unreachable.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use mayfly_core::{DestructionRecord, VmId};
use mayfly_proto::v1::VmEvent;
use mayfly_proto::EventKind;
use tokio::sync::Notify;

use crate::journal::Journal;

/// Events waiting for the server's acknowledgement, kept in the journal.
#[derive(Debug)]
pub struct Outbox {
    journal: Arc<Mutex<Journal>>,
    changed: Notify,
}

impl Outbox {
    pub fn new(journal: Arc<Mutex<Journal>>) -> Self {
        Self {
            journal,
            changed: Notify::new(),
        }
    }

    /// Numbers `event` and keeps it until acknowledged.
    pub fn push(&self, event: VmEvent) {
        if let Ok(mut journal) = self.journal.lock() {
            if let Err(e) = journal.push_event(event) {
                // The event is still queued in memory: only a crash before it is acknowledged
                // can lose it now.
                tracing::error!(error = %e, "could not write a VM event to the journal");
            }
        }
        // Wakes every `next_after` whose `notified()` was made before this call.
        self.changed.notify_waiters();
    }

    /// The oldest unacknowledged event numbered above `after`, waiting for one if there is none.
    pub async fn next_after(&self, after: u64) -> VmEvent {
        loop {
            let notified = self.changed.notified();
            if let Some(event) = self.try_next_after(after) {
                return event;
            }
            notified.await;
        }
    }

    pub fn try_next_after(&self, after: u64) -> Option<VmEvent> {
        self.journal.lock().ok().and_then(|j| j.event_after(after))
    }

    /// The server stored every event up to `seq`.
    pub fn acknowledge(&self, seq: u64) {
        let result = match self.journal.lock() {
            Ok(mut journal) => journal.acknowledge(seq),
            Err(_) => return,
        };
        if let Err(e) = result {
            tracing::error!(error = %e, seq, "could not record an acknowledgement in the journal");
        }
        self.changed.notify_waiters();
    }

    /// Whether the server acknowledged every event.
    pub fn is_empty(&self) -> bool {
        self.journal
            .lock()
            .map(|j| j.unacknowledged() == 0)
            .unwrap_or(true)
    }

    /// Waits until the server acknowledged every event.
    pub async fn drained(&self) {
        loop {
            let notified = self.changed.notified();
            if self.is_empty() {
                return;
            }
            notified.await;
        }
    }
}

/// Milliseconds since the Unix epoch, now.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The longest `detail` sent: a console tail in an error can be long.
const MAX_DETAIL: usize = 2000;

/// An event of `kind` for a VM (`vm` is `None` before the VM exists).
pub fn event(vm: Option<&VmId>, start_id: &str, kind: EventKind) -> VmEvent {
    VmEvent {
        vm_id: vm.map(|v| v.to_string()).unwrap_or_default(),
        start_id: start_id.to_owned(),
        kind: kind as i32,
        at_unix_ms: now_ms(),
        ..VmEvent::default()
    }
}

/// A `FAILED` event saying why.
pub fn failed(vm: Option<&VmId>, start_id: &str, why: &str) -> VmEvent {
    let mut detail = why.to_owned();
    if detail.len() > MAX_DETAIL {
        let mut cut = MAX_DETAIL;
        while !detail.is_char_boundary(cut) {
            cut -= 1;
        }
        detail.truncate(cut);
        detail.push('…');
    }
    VmEvent {
        detail,
        ..event(vm, start_id, EventKind::Failed)
    }
}

/// A `DESTROYED` event carrying the destruction record.
pub fn destroyed(start_id: &str, record: &DestructionRecord) -> VmEvent {
    VmEvent {
        destruction_record_json: mayfly_proto::record_to_json(record),
        ..event(Some(&record.vm), start_id, EventKind::Destroyed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn events_are_numbered_in_order_kept_until_acknowledged_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.json");
        let journal = Arc::new(Mutex::new(Journal::load(&path).unwrap()));
        let outbox = Arc::new(Outbox::new(journal));
        let waiter = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.next_after(0).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        outbox.push(event(None, "a", EventKind::Started));
        outbox.push(event(None, "b", EventKind::Booted));
        let first = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((first.start_id.as_str(), first.seq), ("a", 1));
        let second = outbox.try_next_after(first.seq).unwrap();
        assert_eq!((second.start_id.as_str(), second.seq), ("b", 2));
        assert!(outbox.try_next_after(2).is_none());

        // Sent is not delivered: until acknowledged, both are there for the next session.
        assert_eq!(outbox.try_next_after(0).unwrap().seq, 1);
        outbox.acknowledge(1);
        assert_eq!(outbox.try_next_after(0).unwrap().seq, 2);

        // A restarted agent resends what was not acknowledged, with its number, and goes on
        // counting in the same epoch.
        drop(outbox);
        let reloaded = Journal::load(&path).unwrap();
        let epoch = reloaded.epoch().to_owned();
        let outbox = Outbox::new(Arc::new(Mutex::new(reloaded)));
        assert_eq!(outbox.try_next_after(0).unwrap().start_id, "b");
        outbox.push(event(None, "c", EventKind::Started));
        assert_eq!(outbox.try_next_after(2).unwrap().seq, 3);
        outbox.acknowledge(3);
        assert!(outbox.is_empty());
        assert_eq!(Journal::inspect(&path).unwrap().epoch(), epoch);
    }

    #[test]
    fn a_long_failure_reason_is_cut_on_a_character_boundary() {
        let event = failed(None, "s", &"é".repeat(5000));
        assert!(event.detail.len() <= MAX_DETAIL + '…'.len_utf8());
        assert!(event.detail.ends_with('…'));
        assert_eq!(event.kind, EventKind::Failed as i32);
    }
}
