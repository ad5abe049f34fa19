//! QEMU's command line for one VM. Nothing secret goes here: argv is readable by every local
//! user. The config channel and the console are unix sockets/pipes; there is no TCP monitor,
//! QMP, VNC or gdb socket a guest could reach.

use std::path::Path;

use crate::accel::Accel;
use crate::image::Image;

/// Everything that shapes the command line.
#[derive(Debug)]
pub struct QemuLaunch<'a> {
    pub name: &'a str,
    pub accel: Accel,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub image: &'a Image,
    /// The VM's scratch disk (raw, sparse): the guest's writable layer, encrypted inside.
    pub scratch: &'a Path,
    pub channel_socket: &'a Path,
    pub pidfile: &'a Path,
    /// `-netdev …`/`-device …` of the VM's network; empty for a VM without a NIC.
    pub network_args: Vec<String>,
    /// The uid:gid QEMU drops to once its files, sockets and devices are open, before the
    /// guest runs its first instruction. `None` keeps root (for hosts that want it).
    pub run_as: Option<u32>,
}

/// The uid (and gid) a VM's QEMU runs as: one of 100 million ids above 2 000 000 000 that no
/// account uses, picked by the VM's id, so two VMs' QEMUs are different users and cannot
/// signal, trace or read each other.
pub fn vm_uid(id: &mayfly_core::VmId) -> u32 {
    let bits = id
        .as_str()
        .strip_prefix("vm-")
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .unwrap_or(0);
    2_000_000_000 + u32::try_from(bits % 100_000_000).unwrap_or(0)
}

impl QemuLaunch<'_> {
    /// The arguments after the binary.
    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec!["-name".into(), self.name.into()];
        args.extend(self.accel.qemu_args().iter().map(|s| (*s).to_owned()));
        args.extend(
            [
                "-machine",
                "q35",
                "-m",
                &self.memory_mib.to_string(),
                "-smp",
                &self.vcpus.to_string(),
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-monitor",
                "none",
                "-no-reboot",
                "-serial",
                "stdio",
            ]
            .iter()
            .map(|s| (*s).to_owned()),
        );
        // Seccomp: QEMU may not spawn processes, raise privileges or use obsolete calls. With
        // `-runas` the filter must let QEMU's own drop to the VM's uid through (it happens
        // before the guest runs); after it the process has no capabilities to raise.
        args.push("-sandbox".into());
        match self.run_as {
            Some(uid) => {
                args.push(
                    "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny"
                        .into(),
                );
                args.push("-runas".into());
                args.push(format!("{uid}:{uid}"));
            }
            None => args.push(
                "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny".into(),
            ),
        }
        args.push("-kernel".into());
        args.push(self.image.kernel.display().to_string());
        args.push("-initrd".into());
        args.push(self.image.initrd.display().to_string());
        args.push("-append".into());
        args.push("console=ttyS0 panic=-1 quiet".into());
        // The base disk is shared by every VM of the image and attached read-only; the scratch
        // disk is the VM's own, and the guest encrypts it under a key the host never sees. The
        // guest finds each by its serial. Flushes to the scratch disk are ignored: it does not
        // outlive the VM, so there is nothing to keep consistent across a crash. A host disk
        // that fills up is an I/O error in the guest (the job fails), not a paused VM.
        args.extend([
            "-drive".to_owned(),
            format!(
                "if=none,id=base,file={},format=raw,readonly=on",
                self.image.rootfs.display()
            ),
            "-device".to_owned(),
            "virtio-blk-pci,drive=base,serial=mayfly-base".to_owned(),
            "-drive".to_owned(),
            format!(
                "if=none,id=scratch,file={},format=raw,cache=unsafe,aio=threads,werror=report,rerror=report",
                self.scratch.display()
            ),
            "-device".to_owned(),
            "virtio-blk-pci,drive=scratch,serial=mayfly-scratch".to_owned(),
        ]);
        args.extend([
            "-device".to_owned(),
            "virtio-serial-pci".to_owned(),
            "-chardev".to_owned(),
            format!(
                "socket,id=cfg,path={},server=on,wait=off",
                self.channel_socket.display()
            ),
            "-device".to_owned(),
            format!(
                "virtserialport,chardev=cfg,name={}",
                crate::channel::PORT_NAME
            ),
            "-pidfile".to_owned(),
            self.pidfile.display().to_string(),
        ]);
        args.extend(self.network_args.iter().cloned());
        args
    }
}
