//! The guest kernel: Debian's `linux-image-amd64` (and `busybox-static` for the initramfs),
//! unpacked by `mmdebstrap --variant=extract`; `boot/vmlinuz-<version>`, the modules the
//! initramfs loads to reach the root filesystem (dependencies resolved from each `.ko`'s
//! `.modinfo`: `depends=`, and `softdep=pre:`; the package ships no `modules.dep`), and the whole
//! module tree copied into the root filesystem with `depmod`, so `modprobe` works there (Docker
//! loads bridge, veth, netfilter and overlay modules on demand). The load order is a
//! dependency-first walk of [`ROOT_MODULES`], the same on every build.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::build::{run_tool, BuildError, TOOL_PATH};
use super::elf;

/// What the initramfs loads: virtio PCI transport, disks, network, the config port, the base
/// disk's EROFS, the scratch disk's dm-crypt (XTS-AES, AES-NI when the CPU has it) and ext4,
/// and overlayfs for the writable root.
pub const ROOT_MODULES: [&str; 10] = [
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    "erofs",
    "ext4",
    "dm_crypt",
    "xts",
    "aesni_intel",
    "overlay",
];

/// Packages unpacked for the kernel and the initramfs's busybox.
pub const BOOT_PACKAGES: [&str; 2] = ["linux-image-amd64", "busybox-static"];

/// Unpacks [`BOOT_PACKAGES`] (with what they depend on) into `dir` with mmdebstrap.
pub fn fetch_boot_packages(suite: &str, dir: &Path) -> Result<(), BuildError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(BuildError::io(dir))?;
    }
    run_tool(
        Command::new("mmdebstrap")
            .args(["--mode=root", "--variant=extract", "--format=directory"])
            .arg(format!("--include={}", BOOT_PACKAGES.join(",")))
            .arg("--aptopt=Acquire::Retries \"3\"")
            .arg(suite)
            .arg(dir)
            .env("PATH", TOOL_PATH)
            .stdin(Stdio::null()),
    )
}

/// The unpacked busybox.
pub fn find_busybox(dir: &Path) -> Result<PathBuf, BuildError> {
    ["bin/busybox", "usr/bin/busybox"]
        .iter()
        .map(|p| dir.join(p))
        .find(|p| p.is_file())
        .ok_or_else(|| BuildError::Kernel(format!("no busybox in {}", dir.display())))
}

/// Copies `lib/modules/<version>` of the unpacked kernel into the root's module directory
/// (`/usr/lib/modules` on merged-/usr roots) and runs `depmod` there.
pub fn install_modules(boot: &Path, version: &str, root: &Path) -> Result<(), BuildError> {
    let from = boot.join("lib/modules").join(version);
    let from = if from.is_dir() {
        from
    } else {
        boot.join("usr/lib/modules").join(version)
    };
    let base = super::rootfs::resolve_in_root(root, "lib")
        .filter(|p| p.is_dir())
        .unwrap_or_else(|| root.join("lib"));
    let modules = base.join("modules");
    std::fs::create_dir_all(&modules).map_err(BuildError::io(&modules))?;
    let to = modules.join(version);
    if to.exists() {
        std::fs::remove_dir_all(&to).map_err(BuildError::io(&to))?;
    }
    run_tool(Command::new("cp").arg("-a").arg(&from).arg(&to))?;
    run_tool(
        Command::new("depmod")
            .arg("-b")
            .arg(root)
            .arg(version)
            .env("PATH", TOOL_PATH),
    )
}

/// A kernel module to put in the initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub name: String,
    pub path: PathBuf,
}

/// `(version, path of vmlinuz)` in an unpacked linux-image package.
pub fn find_kernel(root: &Path) -> Result<(String, PathBuf), BuildError> {
    let boot = root.join("boot");
    let mut kernels: Vec<(String, PathBuf)> = std::fs::read_dir(&boot)
        .map_err(BuildError::io(&boot))?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix("vmlinuz-")?.to_string();
            Some((version, e.path()))
        })
        .collect();
    kernels.sort();
    match kernels.len() {
        1 => kernels.pop().ok_or(BuildError::Kernel("no kernel".into())),
        0 => Err(BuildError::Kernel(format!(
            "no boot/vmlinuz-* in {}",
            root.display()
        ))),
        _ => Err(BuildError::Kernel(format!(
            "more than one boot/vmlinuz-* in {}",
            root.display()
        ))),
    }
}

/// Module name from a file name: `crc32c-intel.ko` → `crc32c_intel`.
fn module_name(file: &str) -> Option<String> {
    file.strip_suffix(".ko").map(|stem| stem.replace('-', "_"))
}

/// Every `.ko` under `dir`, by module name.
pub fn index_modules(dir: &Path) -> Result<BTreeMap<String, PathBuf>, BuildError> {
    let mut index = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).map_err(BuildError::io(&dir))? {
            let entry = entry.map_err(BuildError::io(&dir))?;
            let path = entry.path();
            let file_type = entry.file_type().map_err(BuildError::io(&path))?;
            if file_type.is_dir() {
                pending.push(path);
            } else if let Some(name) = module_name(&entry.file_name().to_string_lossy()) {
                index.insert(name, path);
            }
        }
    }
    Ok(index)
}

/// The modules a module needs loaded first: its `depends=`, then what its `softdep=pre:` names
/// and the index has (`crypto-crc32c` → `crc32c_generic`; aliases not in the index are skipped).
fn prerequisites(info: &[(String, String)], index: &BTreeMap<String, PathBuf>) -> Vec<String> {
    let mut needs = Vec::new();
    for (key, value) in info {
        match key.as_str() {
            "depends" => needs.extend(
                value
                    .split(',')
                    .filter(|d| !d.is_empty())
                    .map(|d| d.replace('-', "_")),
            ),
            "softdep" => {
                let mut pre = false;
                for word in value.split_whitespace() {
                    match word {
                        "pre:" => pre = true,
                        "post:" => pre = false,
                        name if pre => {
                            let name = name.replace('-', "_");
                            let base = name.strip_prefix("crypto_").unwrap_or(&name);
                            let candidates = [format!("{base}_generic"), base.to_string()];
                            if let Some(found) =
                                candidates.into_iter().find(|c| index.contains_key(c))
                            {
                                needs.push(found);
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    needs
}

/// The modules to load, dependencies first, starting from `roots`.
pub fn load_order(
    roots: &[&str],
    index: &BTreeMap<String, PathBuf>,
) -> Result<Vec<Module>, BuildError> {
    let mut order = Vec::new();
    let mut done = BTreeSet::new();
    for root in roots {
        visit(root, index, &mut done, &mut Vec::new(), &mut order)?;
    }
    Ok(order)
}

fn visit(
    name: &str,
    index: &BTreeMap<String, PathBuf>,
    done: &mut BTreeSet<String>,
    stack: &mut Vec<String>,
    order: &mut Vec<Module>,
) -> Result<(), BuildError> {
    if done.contains(name) {
        return Ok(());
    }
    if stack.iter().any(|s| s == name) {
        return Err(BuildError::Kernel(format!(
            "module dependency cycle: {} → {name}",
            stack.join(" → ")
        )));
    }
    let path = index.get(name).ok_or_else(|| {
        BuildError::Kernel(format!(
            "module {name} is not in the kernel package (needed by {})",
            stack.last().map_or("the guest", String::as_str)
        ))
    })?;
    let data = std::fs::read(path).map_err(BuildError::io(path))?;
    let info = elf::modinfo(&data).map_err(|source| BuildError::Elf {
        file: path.clone(),
        source,
    })?;
    stack.push(name.to_string());
    for dep in prerequisites(&info, index) {
        visit(&dep, index, done, stack, order)?;
    }
    stack.pop();
    done.insert(name.to_string());
    order.push(Module {
        name: name.to_string(),
        path: path.clone(),
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn prerequisites_read_depends_and_pre_softdeps() {
        let index: BTreeMap<String, PathBuf> = ["jbd2", "mbcache", "crc16", "crc32c_generic"]
            .iter()
            .map(|n| (n.to_string(), PathBuf::from(format!("{n}.ko"))))
            .collect();
        let info = kv(&[
            ("license", "GPL"),
            ("softdep", "pre: crypto-crc32c post: something"),
            ("depends", "jbd2,mbcache,crc16"),
        ]);
        assert_eq!(
            prerequisites(&info, &index),
            vec!["crc32c_generic", "jbd2", "mbcache", "crc16"]
        );
        assert!(prerequisites(&kv(&[("depends", "")]), &index).is_empty());
    }

    #[test]
    fn module_names_normalise_dashes() {
        assert_eq!(
            module_name("crc32c-intel.ko").as_deref(),
            Some("crc32c_intel")
        );
        assert_eq!(module_name("virtio.ko.xz"), None);
    }
}
