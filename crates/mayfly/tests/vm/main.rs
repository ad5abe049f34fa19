//! Real VMs under QEMU (TCG here): boot, config hand-over, a job run by the stand-in runner
//! against the simulator, destruction without a trace, isolation between root guests, the
//! reaper after a crash, the boot timeout. Needs root and the test image
//! (`scripts/build-guest-image`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod isolation;
mod lifecycle;
mod reaper;
mod support;
