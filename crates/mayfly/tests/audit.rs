//! `mayfly token` and `mayfly audit` as an operator uses them, on PostgreSQL where the test can
//! tamper with rows the way an intruder with database access would: `mayfly audit verify`
//! catches an edited, a deleted, an inserted and a reordered row, and names it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::process::{Command, Output};

use sqlx::Connection;

fn admin_url() -> String {
    std::env::var("MAYFLY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn mayfly(db_url: &str, data: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mayfly"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env_remove("MAYFLY_CONFIG")
        .env("MAYFLY_DATABASE__POSTGRES_URL", db_url)
        .env("USER", "auditor")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_shown_once_and_audit_verify_names_each_kind_of_tampering() {
    let admin = admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    let name = format!("mayfly_audit_{:08x}", rand::random::<u32>());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let db_url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();

    let out = mayfly(
        &db_url,
        data,
        &[
            "token",
            "create",
            "--name",
            "org-nine dashboards",
            "--scope",
            "tenant",
            "--installation",
            "9",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let token = String::from_utf8(out.stdout.clone())
        .unwrap()
        .trim()
        .to_owned();
    assert!(token.starts_with("mfy_"), "{token}");
    let out = mayfly(
        &db_url,
        data,
        &[
            "token",
            "create",
            "--name",
            "no installation",
            "--scope",
            "tenant",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap refuses a tenant token without an installation"
    );
    let out = mayfly(&db_url, data, &["token", "list"]);
    let listing = text(&out);
    assert!(
        out.status.success() && listing.contains("org-nine dashboards"),
        "{listing}"
    );
    assert!(!listing.contains(&token), "the list shows the token");
    let id = listing
        .split_whitespace()
        .find(|w| w.starts_with("tok_"))
        .unwrap()
        .to_owned();
    for _ in 0..2 {
        let out = mayfly(
            &db_url,
            data,
            &["token", "create", "--name", "ops", "--scope", "admin"],
        );
        assert!(out.status.success(), "{}", text(&out));
    }
    let out = mayfly(&db_url, data, &["token", "revoke", &id]);
    assert!(out.status.success(), "{}", text(&out));
    let out = mayfly(&db_url, data, &["token", "revoke", &id]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // 7 rows: 3 creates, 2 revokes (one refused) each audited as requested and as done, all by
    // cli:auditor.
    let out = mayfly(&db_url, data, &["audit", "verify"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("intact: 7 rows"), "{}", text(&out));
    let export = dir.path().join("audit.jsonl");
    let out = mayfly(
        &db_url,
        data,
        &["audit", "export", "--output", export.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&export)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 7);
    assert!(lines.iter().all(|l| l["actor"] == "cli:auditor"));
    assert_eq!(lines[5]["action"], "token revoke");
    assert_eq!(lines[5]["outcome"], "requested");
    assert_eq!(lines[6]["action"], "token revoke");
    assert_eq!(lines[6]["outcome"], "no such live token");

    let mut db = sqlx::PgConnection::connect(&db_url).await.unwrap();
    let snapshot = "CREATE TABLE audit_copy AS SELECT * FROM audit_log";
    sqlx::query(snapshot).execute(&mut db).await.unwrap();
    let tamperings: [(&str, &[&str], &str); 4] = [
        ("edited", &["UPDATE audit_log SET outcome = 'edited' WHERE seq = 5"], "row 5"),
        ("deleted", &["DELETE FROM audit_log WHERE seq = 3"], "row 4"),
        (
            "inserted",
            &[
                "UPDATE audit_log SET seq = seq + 100 WHERE seq >= 3",
                "UPDATE audit_log SET seq = seq - 99 WHERE seq >= 100",
                "INSERT INTO audit_log SELECT 3, at, 'cli:intruder', source, action, target, outcome, prev_hash, hash FROM audit_copy WHERE seq = 3",
            ],
            "row 3",
        ),
        (
            "reordered",
            &[
                "UPDATE audit_log SET seq = -1 WHERE seq = 2",
                "UPDATE audit_log SET seq = 2 WHERE seq = 3",
                "UPDATE audit_log SET seq = 3 WHERE seq = -1",
            ],
            "row 2",
        ),
    ];
    for (kind, statements, named) in tamperings {
        for statement in statements {
            sqlx::query(statement).execute(&mut db).await.unwrap();
        }
        let out = mayfly(&db_url, data, &["audit", "verify"]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{kind} not caught: {}",
            text(&out)
        );
        assert!(text(&out).contains(named), "{kind}: {}", text(&out));
        sqlx::query("DELETE FROM audit_log")
            .execute(&mut db)
            .await
            .unwrap();
        sqlx::query("INSERT INTO audit_log SELECT * FROM audit_copy")
            .execute(&mut db)
            .await
            .unwrap();
        let out = mayfly(&db_url, data, &["audit", "verify"]);
        assert!(
            out.status.success(),
            "restored after {kind}: {}",
            text(&out)
        );
    }
    db.close().await.unwrap();
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .unwrap();
}
