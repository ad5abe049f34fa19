//! The Debian package as an operator meets it: built by `scripts/package` with cargo-deb, then
//! `apt-get install ./mayfly_*.deb` in a clean Debian 12 root made with mmdebstrap pulls its
//! dependencies; `mayfly --version` and `mayfly doctor` run there; `systemd-analyze verify`
//! accepts both units; the man pages and completions are where the shells and man look; the
//! example configuration is a conffile; the server's user exists and owns nothing outside its
//! state directory. Needs root (chroot) and Debian's package mirror.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn run(command: &mut Command) -> Output {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn chroot(root: &Path, args: &[&str]) -> Output {
    Command::new("chroot")
        .arg(root)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_package_installs_into_a_clean_debian_root_with_its_dependencies() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test makes a Debian root with mmdebstrap and enters it: run the suite as root"
    );
    let ws = workspace();
    // The binary the tests run is the one packaged (no second build under the running suite).
    run(Command::new(ws.join("scripts/package")).args(["--dev", "--no-build"]));
    let deb = std::fs::read_dir(ws.join("target/debian"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap())
        .expect("scripts/package made a .deb");

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let deb_in_root = "/tmp/mayfly.deb";
    run(Command::new("mmdebstrap")
        .args(["--mode=root", "--variant=apt", "--include=systemd,man-db"])
        .args(["--dpkgopt=path-exclude=/usr/share/locale/*", "--aptopt=Acquire::Retries \"3\""])
        .arg(format!("--customize-hook=copy-in {} /tmp", deb.display()))
        .arg(format!(
            "--customize-hook=chroot \"$1\" sh -c 'mv /tmp/{} {deb_in_root} && DEBIAN_FRONTEND=noninteractive apt-get install -y -q {deb_in_root}'",
            deb.file_name().unwrap().to_string_lossy()
        ))
        // Run while mmdebstrap has /proc, /sys and /dev mounted in the root; read afterwards.
        .arg(
            "--customize-hook=chroot \"$1\" sh -c 'mayfly doctor > /root/doctor.txt 2>&1; \
             systemd-analyze verify /lib/systemd/system/mayfly-server.service \
             /lib/systemd/system/mayfly-agent.service > /root/verify.txt 2>&1; \
             echo $? > /root/verify.status'",
        )
        .arg("bookworm")
        .arg(&root));

    let version = chroot(&root, &["mayfly", "--version"]);
    assert!(version.status.success(), "{version:?}");
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("mayfly "));
    // The dependencies came with it: doctor finds QEMU, passt and nftables (the image build's
    // tools are only recommended).
    let report = std::fs::read_to_string(root.join("root/doctor.txt")).unwrap();
    for tool in ["QEMU", "qemu-img", "passt", "nftables", "iproute2"] {
        let line = report
            .lines()
            .find(|l| l.contains(tool))
            .unwrap_or_else(|| panic!("doctor says nothing of {tool}: {report}"));
        assert!(line.starts_with("ok"), "{line}\n{report}");
    }
    let verify = std::fs::read_to_string(root.join("root/verify.txt")).unwrap();
    let status = std::fs::read_to_string(root.join("root/verify.status")).unwrap();
    assert_eq!(status.trim(), "0", "systemd-analyze verify: {verify}");
    assert!(
        !verify.contains("mayfly-"),
        "systemd-analyze verify warns: {verify}"
    );

    for file in [
        "usr/share/man/man1/mayfly.1.gz",
        "usr/share/man/man1/mayfly-server.1.gz",
        "usr/share/man/man1/mayfly-init.1.gz",
        "usr/share/bash-completion/completions/mayfly",
        "usr/share/zsh/vendor-completions/_mayfly",
        "usr/share/fish/vendor_completions.d/mayfly.fish",
        "etc/mayfly/mayfly.example.toml",
    ] {
        assert!(root.join(file).is_file(), "{file} is not installed");
    }
    let conffiles = chroot(&root, &["dpkg-query", "-W", "-f=${Conffiles}", "mayfly"]);
    assert!(
        String::from_utf8_lossy(&conffiles.stdout).contains("/etc/mayfly/mayfly.example.toml"),
        "{conffiles:?}"
    );

    // The server's user: a system account without a login shell, owning nothing but its state
    // directory (which systemd makes at the first start).
    let passwd = chroot(&root, &["getent", "passwd", "mayfly"]);
    let entry = String::from_utf8_lossy(&passwd.stdout).into_owned();
    assert!(
        entry.contains(":/var/lib/mayfly:") && entry.trim_end().ends_with("nologin"),
        "{entry}"
    );
    let owned = chroot(
        &root,
        &[
            "find",
            "/",
            "-xdev",
            "-user",
            "mayfly",
            "-not",
            "-path",
            "/var/lib/mayfly*",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&owned.stdout).trim(),
        "",
        "files the user owns"
    );
    let etc = std::fs::metadata(root.join("etc/mayfly")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&etc),
        0,
        "/etc/mayfly is root's"
    );
}
