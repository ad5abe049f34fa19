//! The agent's outbox: VM events wait here, in the order they happened, until a session with
//! the server takes them. VMs keep running while the server is unreachable; their events are
//! queued and go out after the next `Welcome`. An event leaves the queue when the session's
//! request stream takes it (protocol v1 has no acknowledgement, so an event in flight when the
//! connection breaks can be lost; the server reconciles with `Hello.vms`).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use mayfly_core::{DestructionRecord, VmId};
use mayfly_proto::v1::VmEvent;
use mayfly_proto::EventKind;
use tokio::sync::Notify;

/// Events waiting for the server.
#[derive(Debug, Default)]
pub struct Outbox {
    queue: Mutex<VecDeque<VmEvent>>,
    changed: Notify,
}

impl Outbox {
    pub fn push(&self, event: VmEvent) {
        if let Ok(mut queue) = self.queue.lock() {
            queue.push_back(event);
        }
        // Wakes every `pop` whose `notified()` was made before this call, polled or not.
        self.changed.notify_waiters();
    }

    /// The oldest event, waiting for one if there is none.
    pub async fn pop(&self) -> VmEvent {
        loop {
            let notified = self.changed.notified();
            if let Some(event) = self.try_pop() {
                return event;
            }
            notified.await;
        }
    }

    pub fn try_pop(&self) -> Option<VmEvent> {
        self.queue.lock().ok().and_then(|mut q| q.pop_front())
    }

    pub fn is_empty(&self) -> bool {
        self.queue.lock().map(|q| q.is_empty()).unwrap_or(true)
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
    async fn events_come_out_in_the_order_they_went_in_and_pop_waits_for_one() {
        let outbox = Arc::new(Outbox::default());
        let waiter = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.pop().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        outbox.push(event(None, "a", EventKind::Started));
        outbox.push(event(None, "b", EventKind::Booted));
        let first = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.start_id, "a");
        assert_eq!(outbox.try_pop().unwrap().start_id, "b");
        assert!(outbox.is_empty());
    }

    #[test]
    fn a_long_failure_reason_is_cut_on_a_character_boundary() {
        let event = failed(None, "s", &"é".repeat(5000));
        assert!(event.detail.len() <= MAX_DETAIL + '…'.len_utf8());
        assert!(event.detail.ends_with('…'));
        assert_eq!(event.kind, EventKind::Failed as i32);
    }
}
