//! The image builder and store, for real: two builds from the same inputs give the same bytes
//! and digest (reproducible), a corrupt or altered image is refused naming the file, and bad
//! inputs fail with errors that say what to do. Uses the inputs `scripts/build-guest-image`
//! leaves in `target/` and its `.deb` cache.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod image_support;

use std::path::Path;
use std::time::Duration;

use image_support::{bounded, workspace, TestImage};
use mayfly_vm::image::{
    build, BuildError, BuildInputs, BuildStep, ImageError, ImageStore, ARTIFACTS, MANIFEST_FILE,
};

fn inputs() -> BuildInputs {
    let root = workspace();
    // Binaries live in CARGO_TARGET_DIR when it is set; the runner dir and caches in ./target.
    let bin_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let inputs = BuildInputs {
        guest_binary: bin_dir.join("x86_64-unknown-linux-gnu/release/mayfly-guest"),
        runner_dir: root.join("target/mayfly-test-runner-dir"),
        package_cache_dir: root.join("target/mayfly-deb-cache"),
    };
    assert!(
        inputs.guest_binary.is_file() && inputs.runner_dir.is_dir(),
        "{} or {} is missing: run scripts/build-guest-image",
        inputs.guest_binary.display(),
        inputs.runner_dir.display()
    );
    inputs
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn two_builds_from_the_same_inputs_are_byte_identical() {
    bounded(Duration::from_secs(170), || {
        let inputs = inputs();
        let first = tempfile::tempdir().unwrap();
        let second = tempfile::tempdir().unwrap();
        let mut steps = Vec::new();
        let a = build(&inputs, &ImageStore::new(first.path()), &mut |s| {
            steps.push(s)
        })
        .unwrap();
        let b = build(&inputs, &ImageStore::new(second.path()), &mut |_| {}).unwrap();
        assert_eq!(a.digest, b.digest, "same inputs, different digests");
        for name in ARTIFACTS.iter().chain([&MANIFEST_FILE]) {
            let left = std::fs::read(a.dir.join(name)).unwrap();
            let right = std::fs::read(b.dir.join(name)).unwrap();
            assert!(left == right, "{name} differs between two builds");
        }
        // Progress moved forward and ended with the digest.
        let positions: Vec<u64> = steps.iter().map(BuildStep::position).collect();
        assert!(positions.windows(2).all(|w| w[0] <= w[1]), "{steps:?}");
        assert_eq!(
            steps.last(),
            Some(&BuildStep::Done {
                digest: a.digest.clone(),
                reused: false
            })
        );
        // The manifest says what went in.
        assert!(a.manifest.kernel_version.ends_with("-amd64"));
        for module in [
            "virtio_pci",
            "virtio_blk",
            "virtio_console",
            "virtio_net",
            "ext4",
        ] {
            assert!(a.manifest.modules.iter().any(|m| m == module), "{module}");
        }
        let names: Vec<&str> = a
            .manifest
            .packages
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert!(names.contains(&"busybox-static"), "{names:?}");
        // A rebuild into the same store keeps the image that is there.
        let mut last = None;
        let again = build(&inputs, &ImageStore::new(first.path()), &mut |s| {
            last = Some(s)
        })
        .unwrap();
        assert_eq!(again.digest, a.digest);
        assert!(matches!(last, Some(BuildStep::Done { reused: true, .. })));
        // No work-in-progress directory is left in the store.
        let leftovers: Vec<_> = std::fs::read_dir(first.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(leftovers, vec![a.digest.clone()]);
    });
}

#[test]
fn a_corrupt_or_altered_image_is_refused_naming_the_file() {
    bounded(Duration::from_secs(60), || {
        let test_image = TestImage::find();
        let store_dir = tempfile::tempdir().unwrap();
        let store = ImageStore::new(store_dir.path());
        let dir = store_dir.path().join(&test_image.digest);
        copy_dir(&test_image.image.dir, &dir);
        store.get(&test_image.digest).unwrap();

        for name in ARTIFACTS {
            let path = dir.join(name);
            let original = std::fs::read(&path).unwrap();
            let mut flipped = original.clone();
            let middle = flipped.len() / 2;
            flipped[middle] ^= 0x01;
            std::fs::write(&path, &flipped).unwrap();
            let err = store.get(&test_image.digest).unwrap_err();
            assert!(matches!(err, ImageError::Corrupt { .. }), "{name}: {err}");
            assert!(err.to_string().contains(name), "{err}");
            assert!(err.to_string().contains("rebuild"), "{err}");
            std::fs::write(&path, &original).unwrap();
        }

        // Editing the manifest to match a changed file does not help: the digest gives it away.
        let kernel = dir.join("vmlinuz");
        let original = std::fs::read(&kernel).unwrap();
        std::fs::write(&kernel, b"not a kernel").unwrap();
        let info = mayfly_vm::image::hash_file(&kernel).unwrap();
        let mut manifest = test_image.image.manifest.clone();
        manifest.artifacts.insert("vmlinuz".into(), info);
        std::fs::write(
            dir.join(MANIFEST_FILE),
            serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
        let err = store.get(&test_image.digest).unwrap_err();
        assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");

        // A garbled manifest and a missing artifact are named too.
        std::fs::write(dir.join(MANIFEST_FILE), b"{").unwrap();
        let err = store.get(&test_image.digest).unwrap_err();
        assert!(err.to_string().contains(MANIFEST_FILE), "{err}");
        copy_dir(&test_image.image.dir, &dir);
        std::fs::write(&kernel, &original).unwrap();
        std::fs::remove_file(dir.join("initrd.img")).unwrap();
        let err = store.get(&test_image.digest).unwrap_err();
        assert!(matches!(err, ImageError::Missing { .. }), "{err}");
        assert!(err.to_string().contains("initrd.img"), "{err}");

        // Unknown and malformed digests.
        let unknown = "0".repeat(64);
        let err = store.get(&unknown).unwrap_err();
        assert!(err.to_string().contains("mayfly image build"), "{err}");
        assert!(matches!(
            store.get("../etc"),
            Err(ImageError::InvalidDigest(_))
        ));
        let listed: Vec<String> = store
            .list()
            .unwrap()
            .into_iter()
            .map(|i| i.digest)
            .collect();
        assert_eq!(listed, vec![test_image.digest.clone()]);
    });
}

#[test]
fn bad_inputs_fail_with_what_to_do() {
    bounded(Duration::from_secs(30), || {
        let store_dir = tempfile::tempdir().unwrap();
        let store = ImageStore::new(store_dir.path());
        let runner = tempfile::tempdir().unwrap();
        // This test binary is dynamically linked: refused as a guest.
        let dynamic = BuildInputs {
            guest_binary: std::env::current_exe().unwrap(),
            runner_dir: runner.path().to_path_buf(),
            package_cache_dir: store_dir.path().join("cache"),
        };
        let err = build(&dynamic, &store, &mut |_| {}).unwrap_err();
        assert!(matches!(err, BuildError::GuestNotStatic { .. }), "{err}");
        assert!(err.to_string().contains("crt-static"), "{err}");

        let not_elf = BuildInputs {
            guest_binary: runner.path().join("run.sh"),
            ..dynamic.clone()
        };
        std::fs::write(&not_elf.guest_binary, "#!/bin/sh\n").unwrap();
        let err = build(&not_elf, &store, &mut |_| {}).unwrap_err();
        assert!(matches!(err, BuildError::Elf { .. }), "{err}");

        let no_runner = BuildInputs {
            guest_binary: inputs().guest_binary,
            runner_dir: runner.path().join("missing"),
            ..dynamic
        };
        let err = build(&no_runner, &store, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
        assert!(store.list().unwrap().is_empty());
    });
}
