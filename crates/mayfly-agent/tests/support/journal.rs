//! Waiting for the agent's journal to forget its VMs. The agent reports `Destroyed` first and
//! then removes the VM from its journal (a crash in between re-reports it; the other order could
//! lose it), so a test that has seen the event waits a moment for the journal. Shared with
//! `crates/mayfly/tests/agent.rs`.

use std::path::Path;
use std::time::Duration;

use mayfly_agent::Journal;

/// Waits (at most 5 s) until the journal at `path` holds no VM; fails the test otherwise.
pub async fn wait_until_empty(path: &Path) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let vms = Journal::inspect(path)
            .expect("the journal loads")
            .vms()
            .len();
        if vms == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{vms} destroyed VM(s) stayed in the journal {}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
