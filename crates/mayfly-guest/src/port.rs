//! Finding the config port: the virtio-serial port whose name (set by the host with
//! `-device virtserialport,name=…`) is `org.mayfly.config`. There are no udev symlinks in the
//! guest, so the port is found by its name under `/sys/class/virtio-ports/*/name`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The name the host gives the config port.
pub const CONFIG_PORT_NAME: &str = "org.mayfly.config";

/// Returns `<dev_dir>/<vportNpM>` for the port named `name` under `class_dir`, if any yet.
pub fn find_port(class_dir: &Path, dev_dir: &Path, name: &str) -> Option<PathBuf> {
    let mut entries: Vec<_> = std::fs::read_dir(class_dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    entries.sort();
    entries.into_iter().find_map(|port| {
        let content = std::fs::read_to_string(class_dir.join(&port).join("name")).ok()?;
        (content.trim_end_matches('\n') == name).then(|| dev_dir.join(&port))
    })
}

/// Waits until the named port appears in sysfs and its device node in `dev_dir`: ports and
/// their names arrive asynchronously after `virtio_console` loads.
pub fn wait_for_port(
    class_dir: &Path,
    dev_dir: &Path,
    name: &str,
    timeout: Duration,
) -> Result<PathBuf, PortError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(path) = find_port(class_dir, dev_dir, name) {
            if path.exists() {
                return Ok(path);
            }
        }
        if Instant::now() >= deadline {
            return Err(PortError::NotFound {
                name: name.to_string(),
                waited: timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[derive(Debug)]
pub enum PortError {
    NotFound { name: String, waited: Duration },
}

impl fmt::Display for PortError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound { name, waited } => write!(
                f,
                "no virtio-serial port named {name} after {}s: start QEMU with \
                 -device virtio-serial-pci and -device virtserialport,name={name}",
                waited.as_secs()
            ),
        }
    }
}

impl std::error::Error for PortError {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn port(class: &Path, dir: &str, name: Option<&str>) {
        std::fs::create_dir_all(class.join(dir)).unwrap();
        if let Some(name) = name {
            std::fs::write(class.join(dir).join("name"), format!("{name}\n")).unwrap();
        }
    }

    #[test]
    fn finds_the_port_by_name_not_by_number() {
        let root = tempfile::tempdir().unwrap();
        let class = root.path().join("sys/class/virtio-ports");
        let dev = root.path().join("dev");
        port(&class, "vport0p0", Some("org.qemu.guest_agent.0"));
        port(&class, "vport1p1", None);
        port(&class, "vport2p1", Some(CONFIG_PORT_NAME));
        assert_eq!(
            find_port(&class, &dev, CONFIG_PORT_NAME),
            Some(dev.join("vport2p1"))
        );
        assert_eq!(find_port(&class, &dev, "org.mayfly.other"), None);
        assert_eq!(
            find_port(&root.path().join("missing"), &dev, CONFIG_PORT_NAME),
            None
        );
    }

    #[test]
    fn waits_for_the_device_node_and_times_out_clearly() {
        let root = tempfile::tempdir().unwrap();
        let class = root.path().join("class");
        let dev = root.path().join("dev");
        port(&class, "vport1p1", Some(CONFIG_PORT_NAME));
        let err =
            wait_for_port(&class, &dev, CONFIG_PORT_NAME, Duration::from_millis(50)).unwrap_err();
        assert!(err
            .to_string()
            .contains("virtserialport,name=org.mayfly.config"));
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("vport1p1"), b"").unwrap();
        let found =
            wait_for_port(&class, &dev, CONFIG_PORT_NAME, Duration::from_millis(50)).unwrap();
        assert_eq!(found, dev.join("vport1p1"));
    }
}
