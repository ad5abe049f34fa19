//! Shared by the image and boot tests: the test image that `scripts/build-guest-image` builds
//! (store from `MAYFLY_TEST_IMAGE_STORE`, default `<workspace>/target/mayfly-images`, digest in
//! its `test-image` file), and a timeout for synchronous test bodies.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use mayfly_vm::image::{Image, ImageStore};

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[derive(Debug)]
pub struct TestImage {
    pub digest: String,
    pub image: Image,
}

impl TestImage {
    /// The verified test image; fails (never skips) when it has not been built.
    pub fn find() -> Self {
        let store = std::env::var_os("MAYFLY_TEST_IMAGE_STORE")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join("target/mayfly-images"));
        let pointer = store.join("test-image");
        let digest = std::fs::read_to_string(&pointer)
            .unwrap_or_else(|e| {
                panic!(
                    "no test image ({}: {e}): run scripts/build-guest-image",
                    pointer.display()
                )
            })
            .trim()
            .to_string();
        let image = ImageStore::new(&store)
            .get(&digest)
            .unwrap_or_else(|e| panic!("test image {digest}: {e}; run scripts/build-guest-image"));
        Self { digest, image }
    }
}

/// Runs `body` on a thread and fails the test if it takes longer than `limit`.
pub fn bounded<F: FnOnce() + Send + 'static>(limit: Duration, body: F) {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        body();
        let _ = tx.send(());
    });
    match rx.recv_timeout(limit) {
        Ok(()) => handle.join().unwrap(),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = handle.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("test timed out after {limit:?}")
        }
    }
}
