//! `mayfly doctor`: checks that this host can run mayfly's VMs and says how to fix what is
//! missing. Exit 0 when everything needed is there, 1 otherwise.

use std::path::PathBuf;
use std::process::Stdio;

use clap::Args;
use mayfly_vm::image::ImageStore;
use tokio::process::Command;

use crate::exit::Failure;

/// Flags of `mayfly doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Image store whose newest image's kernel is used to probe KVM.
    #[arg(long, default_value = "/var/lib/mayfly/images", value_name = "DIR")]
    images: PathBuf,
}

struct Check {
    what: &'static str,
    ok: bool,
    detail: String,
}

async fn runs(program: &str, args: &[&str]) -> Result<String, String> {
    match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
    {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            Ok(text.lines().next().unwrap_or_default().trim().to_owned())
        }
        Ok(out) => Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

async fn tool(what: &'static str, program: &str, args: &[&str], fix: &str) -> Check {
    match runs(program, args).await {
        Ok(version) => Check {
            what,
            ok: true,
            detail: version,
        },
        Err(e) => Check {
            what,
            ok: false,
            detail: format!("{program}: {e}; fix: {fix}"),
        },
    }
}

#[allow(clippy::print_stdout)] // the report is the command's output
pub async fn run(args: DoctorArgs) -> Result<(), Failure> {
    let qemu_fix = "apt-get install qemu-system-x86 qemu-utils";
    let mut checks = vec![
        tool("QEMU", "qemu-system-x86_64", &["--version"], qemu_fix).await,
        tool("qemu-img", "qemu-img", &["--version"], qemu_fix).await,
        tool("iproute2", "ip", &["-V"], "apt-get install iproute2").await,
        tool(
            "nftables",
            "nft",
            &["--version"],
            "apt-get install nftables",
        )
        .await,
        tool("passt", "passt", &["--version"], "apt-get install passt").await,
        tool(
            "mmdebstrap (image build)",
            "mmdebstrap",
            &["--version"],
            "apt-get install mmdebstrap",
        )
        .await,
        tool(
            "mkfs.erofs (image build)",
            "mkfs.erofs",
            &["--help"],
            "apt-get install erofs-utils",
        )
        .await,
        tool(
            "depmod (image build)",
            "depmod",
            &["--version"],
            "apt-get install kmod",
        )
        .await,
    ];
    let root = nix::unistd::geteuid().is_root();
    checks.push(Check {
        what: "root (network namespaces, nftables)",
        ok: root,
        detail: if root {
            "yes".to_owned()
        } else {
            "fix: run the agent as root".to_owned()
        },
    });

    let store = ImageStore::new(args.images.clone());
    // The probe needs a kernel, not a verified image (hashing a GB base disk is not needed).
    let kernel = store.list().ok().and_then(|images| {
        images
            .into_iter()
            .map(|i| i.dir.join(mayfly_vm::image::KERNEL_FILE))
            .find(|k| k.is_file())
    });
    let accel = match kernel {
        Some(kernel) => {
            let probe = mayfly_vm::accel::probe(std::path::Path::new("qemu-system-x86_64"), &kernel).await;
            Check { what: "acceleration", ok: true, detail: format!("{:?}: {}", probe.accel, probe.reason) }
        }
        None => Check {
            what: "acceleration",
            ok: true,
            detail: format!(
                "not probed: no image in {} (build one with `mayfly image build`); TCG works everywhere",
                args.images.display()
            ),
        },
    };
    checks.push(accel);

    let mut failed = 0;
    for check in &checks {
        let mark = if check.ok { "ok " } else { "MISSING" };
        if !check.ok {
            failed += 1;
        }
        println!("{mark:<8} {:<38} {}", check.what, check.detail);
    }
    if failed > 0 {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "{failed} check(s) failed; see the fixes above"
        )));
    }
    Ok(())
}
