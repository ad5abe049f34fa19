//! The auditor's check of the TLS listener: `scripts/tls-scan` runs Debian's testssl.sh against
//! a throwaway `mayfly server` and fails on any finding above LOW.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::process::Command;

#[test]
fn testssl_finds_nothing_above_low() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let report = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new(format!("{root}/scripts/tls-scan"))
        .current_dir(root)
        .env("MAYFLY_BIN", env!("CARGO_BIN_EXE_mayfly"))
        .env("TLS_SCAN_REPORT", report.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("passed: nothing above LOW"), "{stdout}");
    // The scan really ran: protocols were probed and SSLv3/TLS 1.0/1.1 are not offered.
    let findings: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(report.path()).unwrap()).unwrap();
    let finding = |id: &str| {
        findings
            .iter()
            .find(|f| f["id"] == id)
            .map(|f| f["finding"].as_str().unwrap().to_owned())
            .unwrap_or_else(|| panic!("{id} not in the report"))
    };
    assert_eq!(finding("SSLv3"), "not offered");
    assert_eq!(finding("TLS1"), "not offered");
    assert_eq!(finding("TLS1_1"), "not offered");
    assert!(finding("TLS1_3").starts_with("offered"));
}
