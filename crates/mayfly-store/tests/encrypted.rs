//! The embedded store is encrypted at rest (SQLCipher): the file starts with random bytes, holds
//! no plaintext of what was stored, cannot be read by the plain `sqlite3` tool, and a wrong key
//! is a clear error that leaves the file untouched.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use chrono::Utc;
use mayfly_core::{DeliveryId, IntakeEvent, JobEvent, JobId, JobStatus, RunId};
use mayfly_store::{DbKey, NewDelivery, SqliteStore, Store, StoreError};
use sha2::Digest;

const MARKER: &str = "initiator-marker-7d1f";

async fn store_a_marked_job(store: &SqliteStore) {
    let event = JobEvent {
        job_id: JobId(1),
        run_id: RunId(2),
        installation_id: None,
        repo: "org-a/app".parse().unwrap(),
        repo_id: 3,
        org: Some("org-a".into()),
        sender: MARKER.into(),
        status: JobStatus::Queued,
        conclusion: None,
        labels: vec!["mayfly-linux-2cpu".into()],
        job_name: "build".into(),
        workflow_name: None,
        runner_id: None,
        runner_name: None,
        created_at: None,
        started_at: None,
        completed_at: None,
    };
    let d = NewDelivery {
        delivery_id: DeliveryId::parse("enc-1").unwrap(),
        event: "workflow_job".into(),
        action: Some("queued".into()),
        received_at: Utc::now(),
        intake: IntakeEvent::Job(event.clone()),
    };
    store.record_delivery(&d).await.unwrap();
    store
        .apply_job_event(&d.delivery_id, &event, Utc::now())
        .await
        .unwrap();
}

fn files_with(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| {
            // SQLite may remove its -wal/-shm files between listing and reading.
            let bytes = match std::fs::read(e.path()) {
                Ok(bytes) => bytes,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(err) => panic!("{}: {err}", e.path().display()),
            };
            bytes.windows(needle.len()).any(|w| w == needle)
        })
        .map(|e| e.path().display().to_string())
        .collect()
}

#[tokio::test]
async fn the_file_is_random_bytes_without_plaintext_and_sqlite3_cannot_read_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mayfly.db");
    let key = DbKey::random();
    let store = SqliteStore::open(&path, &key).await.unwrap();
    store_a_marked_job(&store).await;
    // While open (WAL and all) and after closing: the marker is in no file.
    assert!(files_with(dir.path(), MARKER.as_bytes()).is_empty());
    store.close().await;
    assert!(files_with(dir.path(), MARKER.as_bytes()).is_empty());
    assert!(
        files_with(dir.path(), b"CREATE TABLE").is_empty(),
        "the schema is readable"
    );

    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() >= 1024, "{} bytes", bytes.len());
    assert_ne!(
        &bytes[..16],
        b"SQLite format 3\0",
        "the file has a plain SQLite header"
    );

    let sqlite3 = std::process::Command::new("sqlite3")
        .arg(&path)
        .arg("SELECT * FROM jobs;")
        .output()
        .unwrap();
    assert!(!sqlite3.status.success(), "sqlite3 read the encrypted file");
    assert!(String::from_utf8_lossy(&sqlite3.stderr).contains("not a database"));

    // With the key, everything is there.
    let store = SqliteStore::open(&path, &key).await.unwrap();
    assert_eq!(store.job(JobId(1)).await.unwrap().unwrap().sender, MARKER);
    store.close().await;
}

#[tokio::test]
async fn a_wrong_key_is_a_clear_error_and_the_file_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mayfly.db");
    let key = DbKey::random();
    let store = SqliteStore::open(&path, &key).await.unwrap();
    store_a_marked_job(&store).await;
    store.close().await;
    let before = sha2::Sha256::digest(std::fs::read(&path).unwrap());

    let err = SqliteStore::open(&path, &DbKey::random())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::WrongKey { .. }), "{err:?}");
    let shown = err.to_string();
    assert!(
        shown.contains("mayfly.db") && shown.contains("key is wrong"),
        "{shown}"
    );
    assert_eq!(
        sha2::Sha256::digest(std::fs::read(&path).unwrap()),
        before,
        "the file changed"
    );

    let store = SqliteStore::open(&path, &key).await.unwrap();
    assert!(store.job(JobId(1)).await.unwrap().is_some());
    store.close().await;
}

#[tokio::test]
async fn a_passphrase_gives_the_same_key_with_the_same_salt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mayfly.db");
    let store = SqliteStore::open(
        &path,
        &DbKey::derive(b"a long passphrase", b"0123456789abcdef").unwrap(),
    )
    .await
    .unwrap();
    store_a_marked_job(&store).await;
    store.close().await;
    let again = DbKey::derive(b"a long passphrase", b"0123456789abcdef").unwrap();
    assert!(SqliteStore::open(&path, &again).await.is_ok());
    let wrong = DbKey::derive(b"a long passphrase!", b"0123456789abcdef").unwrap();
    assert!(matches!(
        SqliteStore::open(&path, &wrong).await,
        Err(StoreError::WrongKey { .. })
    ));
}
