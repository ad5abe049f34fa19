//! Arrows point one way (STYLE.md item 1): each crate may depend only on the crates of ours that
//! ARCHITECTURE.md allows. Read from `cargo metadata`, so a new dependency that breaks the
//! layering fails here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::collections::{BTreeMap, BTreeSet};

fn allowed() -> BTreeMap<&'static str, BTreeSet<&'static str>> {
    let mut rules = BTreeMap::new();
    rules.insert("mayfly-core", BTreeSet::new());
    rules.insert("mayfly-github", BTreeSet::from(["mayfly-core"]));
    rules.insert("mayfly-store", BTreeSet::from(["mayfly-core"]));
    rules.insert(
        "mayfly-server",
        BTreeSet::from([
            "mayfly-core",
            "mayfly-github",
            "mayfly-store",
            "mayfly-proto",
        ]),
    );
    rules.insert("mayfly-sim", BTreeSet::from(["mayfly-github"]));
    rules.insert("mayfly-vm", BTreeSet::from(["mayfly-core"]));
    rules.insert("mayfly-proto", BTreeSet::from(["mayfly-core"]));
    rules.insert(
        "mayfly-agent",
        BTreeSet::from(["mayfly-core", "mayfly-vm", "mayfly-proto"]),
    );
    rules.insert("mayfly-guest", BTreeSet::new());
    rules.insert("mayfly-test-runner", BTreeSet::from(["mayfly-sim"]));
    rules.insert(
        "mayfly",
        BTreeSet::from([
            "mayfly-core",
            "mayfly-github",
            "mayfly-store",
            "mayfly-server",
            "mayfly-sim",
            "mayfly-vm",
            "mayfly-proto",
            "mayfly-agent",
        ]),
    );
    rules
}

#[test]
fn crate_dependencies_point_one_way() {
    let output = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let rules = allowed();
    let mut seen = BTreeSet::new();
    for package in metadata["packages"].as_array().unwrap() {
        let name = package["name"].as_str().unwrap();
        let allowed = rules.get(name).unwrap_or_else(|| {
            panic!("{name} is not in the layering table; add it to ARCHITECTURE.md and here")
        });
        seen.insert(name);
        for dep in package["dependencies"].as_array().unwrap() {
            let dep_name = dep["name"].as_str().unwrap();
            let is_ours = dep_name.starts_with("mayfly");
            let is_normal = dep["kind"].is_null();
            if is_ours && is_normal {
                assert!(
                    allowed.contains(dep_name),
                    "{name} must not depend on {dep_name}"
                );
            }
        }
    }
    assert_eq!(seen.len(), rules.len(), "every crate in the table exists");
}
