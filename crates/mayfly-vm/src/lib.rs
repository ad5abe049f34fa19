//! VMs for mayfly: one fresh virtual machine per job, destroyed when the job ends.
//!
//! - [`image`]: guest images (kernel, initramfs, base disk), content-addressed, and their builder.
//! - [`network`]: a network namespace per VM with nftables rules, so a root guest reaches the
//!   outside network but nothing of the host and no other VM.
//! - [`channel`]: the host side of the virtio-serial channel (one-time config, status events).
//! - [`driver`]: the `VmDriver` trait; [`qemu`]: its QEMU implementation; [`reaper`]: cleanup
//!   after a crash of the owning process.
#![forbid(unsafe_code)]

pub mod accel;
pub mod channel;
pub mod driver;
pub mod image;
pub mod network;
pub mod process;
pub mod qemu;

pub use accel::{Accel, AccelProbe};
pub use channel::{GuestChannel, GuestConfig, GuestEvent};
pub use driver::{GuestExit, VmDriver, VmError, VmInfo, VmSpec};
pub use qemu::{vm_uid, NetworkMode, QemuConfig, QemuDriver, ReapReport, SetupError};
