//! The image builder and store, for real: importing the root filesystem tar the test image was
//! made of gives the test image's digest again (reproducible: same inputs, same bytes), a
//! corrupt or altered image is refused naming the file, and bad inputs — a guest that is not
//! static, a tarball that is not a tar, lacks bash, or does not fit — fail with errors that say
//! what to do, before anything is in the store. Uses what `scripts/build-guest-image` leaves in
//! `target/`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod image_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use image_support::{bounded, workspace, TestImage};
use mayfly_vm::image::{
    build, BuildError, BuildInputs, BuildStep, ImageError, ImageStore, RootfsSource, ARTIFACTS,
    DEFAULT_SOURCE_DATE_EPOCH, MANIFEST_FILE,
};

fn inputs(work: &Path) -> BuildInputs {
    let root = workspace();
    // Binaries live in CARGO_TARGET_DIR when it is set; the runner dir and caches in ./target.
    let bin_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let inputs = BuildInputs {
        guest_binary: bin_dir.join("x86_64-unknown-linux-gnu/release/mayfly-guest"),
        runner_dir: root.join("target/mayfly-test-runner-dir"),
        source: RootfsSource::Tar {
            path: root.join("target/mayfly-image-work/debian-bookworm.tar"),
        },
        work_dir: work.to_path_buf(),
        source_date_epoch: DEFAULT_SOURCE_DATE_EPOCH,
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
fn the_same_root_filesystem_gives_the_same_image() {
    bounded(Duration::from_secs(400), || {
        let test_image = TestImage::find();
        let work = tempfile::tempdir().unwrap();
        let inputs = inputs(work.path());
        let RootfsSource::Tar { path } = &inputs.source else {
            unreachable!()
        };
        assert!(
            path.is_file(),
            "{} is missing: run scripts/build-guest-image",
            path.display()
        );
        let store_dir = tempfile::tempdir().unwrap();
        let mut steps = Vec::new();
        let image = build(&inputs, &ImageStore::new(store_dir.path()), &mut |s| {
            steps.push(s)
        })
        .unwrap();
        // mmdebstrap's tar, imported again, gives the very image `mayfly image build` made
        // from it: every artifact byte for byte.
        assert_eq!(
            image.digest, test_image.digest,
            "same inputs, different digests"
        );
        for name in ARTIFACTS {
            let ours = mayfly_vm::image::hash_file(&image.dir.join(name)).unwrap();
            assert_eq!(&ours, &test_image.image.manifest.artifacts[name], "{name}");
        }
        // Progress moved forward, warned about nothing (Debian has it all), ended with the digest.
        let positions: Vec<u64> = steps.iter().map(BuildStep::position).collect();
        assert!(positions.windows(2).all(|w| w[0] <= w[1]), "{steps:?}");
        assert!(
            steps.contains(&BuildStep::Requirements { missing: vec![] }),
            "{steps:?}"
        );
        assert_eq!(
            steps.last(),
            Some(&BuildStep::Done {
                digest: image.digest.clone(),
                reused: false
            })
        );
        // The manifest says what went in.
        assert!(image.manifest.kernel_version.ends_with("-amd64"));
        for module in [
            "virtio_blk",
            "virtio_console",
            "virtio_net",
            "erofs",
            "dm_crypt",
            "overlay",
        ] {
            assert!(
                image.manifest.modules.iter().any(|m| m == module),
                "{module}"
            );
        }
        // No work-in-progress directory is left in the store.
        let leftovers: Vec<_> = std::fs::read_dir(store_dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(leftovers, vec![image.digest.clone()]);
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

/// A tarball of `files` (path → content) made with tar.
fn tarball(dir: &Path, name: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let tree = dir.join(format!("{name}.d"));
    for (path, content) in files {
        let file = tree.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, content).unwrap();
    }
    let tar = dir.join(name);
    let status = Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&tree)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    tar
}

#[test]
fn bad_inputs_fail_with_what_to_do() {
    bounded(Duration::from_secs(60), || {
        let store_dir = tempfile::tempdir().unwrap();
        let store = ImageStore::new(store_dir.path());
        let work = tempfile::tempdir().unwrap();
        let good = inputs(work.path());
        let runner = tempfile::tempdir().unwrap();
        std::fs::write(runner.path().join("run.sh"), "#!/bin/bash\n").unwrap();
        // This test binary is dynamically linked: refused as a guest.
        let dynamic = BuildInputs {
            guest_binary: std::env::current_exe().unwrap(),
            runner_dir: runner.path().to_path_buf(),
            ..good.clone()
        };
        let err = build(&dynamic, &store, &mut |_| {}).unwrap_err();
        assert!(matches!(err, BuildError::GuestNotStatic { .. }), "{err}");
        assert!(err.to_string().contains("crt-static"), "{err}");

        let not_elf = BuildInputs {
            guest_binary: runner.path().join("run.sh"),
            ..dynamic.clone()
        };
        let err = build(&not_elf, &store, &mut |_| {}).unwrap_err();
        assert!(matches!(err, BuildError::Elf { .. }), "{err}");

        let no_runner = BuildInputs {
            runner_dir: runner.path().join("missing"),
            ..good.clone()
        };
        let err = build(&no_runner, &store, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("no run.sh"), "{err}");

        // A tarball that is not a tar.
        let junk = work.path().join("rootfs.tar");
        std::fs::write(
            &junk,
            b"PK\x03\x04 this is a zip file, not a tar".repeat(30),
        )
        .unwrap();
        let not_tar = BuildInputs {
            source: RootfsSource::Tar { path: junk },
            ..good.clone()
        };
        let err = build(&not_tar, &store, &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not a tar archive") && err.contains("rootfs.tar"),
            "{err}"
        );

        // A root without bash or glibc (say, Alpine's busybox and musl).
        let alpine = tarball(
            work.path(),
            "alpine.tar",
            &[
                ("etc/os-release", b"ID=alpine\nVERSION_ID=3.20.0\n"),
                ("bin/busybox", b"\x7fELF"),
                ("lib/ld-musl-x86_64.so.1", b"\x7fELF"),
            ],
        );
        let no_bash = BuildInputs {
            source: RootfsSource::Tar { path: alpine },
            ..good.clone()
        };
        let err = build(&no_bash, &store, &mut |_| {}).unwrap_err();
        assert!(matches!(err, BuildError::Unsuitable { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("bash") && text.contains("glibc"), "{text}");

        // A tarball larger than the store's disk: refused before unpacking.
        let small = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
            .arg(small.path())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mounting a small tmpfs (tests run as root)"
        );
        let big = tarball(
            work.path(),
            "big.tar",
            &[("usr/bin/bash", &vec![7u8; 48 << 20])],
        );
        let too_big = BuildInputs {
            source: RootfsSource::Tar { path: big },
            ..good
        };
        let result = build(&too_big, &ImageStore::new(small.path()), &mut |_| {});
        let listed = std::fs::read_dir(small.path()).unwrap().count();
        let _ = Command::new("umount").arg(small.path()).status();
        let err = result.unwrap_err();
        assert!(matches!(err, BuildError::NoSpace { .. }), "{err}");
        assert_eq!(listed, 0, "something was written to the small store");
        assert!(store.list().unwrap().is_empty());
        let leftovers = std::fs::read_dir(store_dir.path()).unwrap().count();
        assert_eq!(leftovers, 0, "a refused build left something in the store");
    });
}
