//! The database and every file SQLite makes beside it are readable by their owner only (mode
//! 600), whatever the umask of the process that made them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::os::unix::fs::PermissionsExt;

use chrono::Utc;
use mayfly_store::{DbKey, NewAudit, SqliteStore, Store};

#[tokio::test]
async fn a_fresh_store_under_umask_022_is_owner_only() {
    // nextest runs each test in its own process, so the umask is this test's alone.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mayfly.db");
    let store = SqliteStore::open(&path, &DbKey::random()).await.unwrap();
    // A write, so the WAL and its index exist.
    store
        .append_audit(&NewAudit {
            at: Utc::now(),
            actor: "test".into(),
            source: None,
            action: "modes".into(),
            target: None,
            outcome: "ok".into(),
        })
        .await
        .unwrap();

    let mut seen = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        let name = entry.file_name().to_string_lossy().into_owned();
        assert_eq!(mode, 0o600, "{name} has mode {mode:o}");
        seen.push(name);
    }
    seen.sort();
    assert_eq!(seen, ["mayfly.db", "mayfly.db-shm", "mayfly.db-wal"]);
    store.close().await;
}
