//! passt, the user-mode network stack between QEMU's virtio-net and the VM's namespace. It runs
//! inside the namespace as `nobody` (pinned with `--runas`, which the namespace rule keys on),
//! daemonizes, and writes its pid to a file; its socket directory belongs to `nobody`, because
//! passt binds after dropping privileges (and still prints "bound" if that fails).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::exec;
use super::host_rules::PASST_UID;
use super::NetworkError;

/// File names inside the passt directory.
const SOCKET_NAME: &str = "passt.sock";
const PIDFILE_NAME: &str = "passt.pid";
/// The directory made inside the caller's runtime dir.
pub(crate) const DIR_NAME: &str = "passt";

/// A running passt: where its files are and its pid.
#[derive(Debug, Clone)]
pub(crate) struct Passt {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub pid: u32,
}

/// Makes `<runtime_dir>/passt`, owned by `nobody` and closed to everyone else. Fails if it
/// already exists (another network's passt may live there).
pub(crate) async fn make_dir(runtime_dir: &Path) -> Result<PathBuf, NetworkError> {
    let io = |what: String| move |source| NetworkError::Io { what, source };
    tokio::fs::create_dir_all(runtime_dir)
        .await
        .map_err(io(format!("create runtime dir {}", runtime_dir.display())))?;
    let runtime_dir = tokio::fs::canonicalize(runtime_dir)
        .await
        .map_err(io(format!("resolve runtime dir {}", runtime_dir.display())))?;
    let dir = runtime_dir.join(DIR_NAME);
    // nobody must be able to walk down to its socket: search (not read) permission on the
    // runtime dir is ours to give; its ancestors are the caller's to get right.
    let mut mode = tokio::fs::metadata(&runtime_dir)
        .await
        .map_err(io(format!("stat {}", runtime_dir.display())))?
        .permissions()
        .mode();
    if mode & 0o001 == 0 {
        mode |= 0o001;
        tokio::fs::set_permissions(&runtime_dir, std::fs::Permissions::from_mode(mode))
            .await
            .map_err(io(format!("chmod o+x {}", runtime_dir.display())))?;
    }
    for ancestor in runtime_dir.ancestors().skip(1) {
        let meta = tokio::fs::metadata(ancestor)
            .await
            .map_err(io(format!("stat {}", ancestor.display())))?;
        if meta.permissions().mode() & 0o001 == 0 {
            return Err(NetworkError::Passt {
                detail: format!(
                    "passt runs as user nobody and cannot reach {}: {} is not searchable by others \
                     (chmod o+x it, or choose a runtime dir under /run)",
                    dir.display(),
                    ancestor.display()
                ),
            });
        }
    }
    tokio::fs::create_dir(&dir).await.map_err(io(format!(
        "create passt dir {} (is another network using this runtime dir?)",
        dir.display()
    )))?;
    std::os::unix::fs::chown(&dir, Some(PASST_UID), Some(PASST_UID))
        .map_err(io(format!("chown {} to nobody", dir.display())))?;
    tokio::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .await
        .map_err(io(format!("chmod 0700 {}", dir.display())))?;
    Ok(dir)
}

/// Starts passt inside `netns`, and waits until its socket and pidfile exist.
pub(crate) async fn start(netns: &str, dir: &Path) -> Result<Passt, NetworkError> {
    let socket = dir.join(SOCKET_NAME);
    let pidfile = pidfile_in(dir);
    let (socket_s, pidfile_s) = (path_str(&socket)?, path_str(&pidfile)?);
    let runas = format!("{PASST_UID}:{PASST_UID}");
    // The parent exits once the daemon has bound its socket; the daemon holds no pipe of ours.
    exec::run_in_netns(
        netns,
        "passt",
        &[
            "--no-map-gw", // the gateway address is not the host's loopback
            "--ipv4-only", // IPv6 is dropped on the host anyway; don't let guests wait on it
            "--tcp-ports",
            "none",
            "--udp-ports",
            "none", // nothing listens in the namespace but the unix socket
            "--runas",
            &runas,
            "--quiet",
            "--socket",
            socket_s,
            "--pid",
            pidfile_s,
        ],
    )
    .await
    .map_err(|e| NetworkError::Passt {
        detail: format!("passt did not start: {e} (is passt installed? apt-get install passt)"),
    })?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(pid) = read_pid(&pidfile).await {
            if socket.exists() && exec::alive(pid) {
                return Ok(Passt {
                    dir: dir.to_owned(),
                    socket,
                    pid,
                });
            }
        }
        if tokio::time::Instant::now() >= deadline {
            if let Some(pid) = read_pid(&pidfile).await {
                let _ = exec::terminate(pid, Duration::from_secs(1)).await;
            }
            return Err(NetworkError::Passt {
                detail: format!(
                    "passt reported success but {} or a live pid in {} did not appear within 5 s \
                     (the directory must be writable by user nobody)",
                    socket.display(),
                    pidfile.display()
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Where passt's pidfile is, in a directory made by [`make_dir`].
pub(crate) fn pidfile_in(dir: &Path) -> PathBuf {
    dir.join(PIDFILE_NAME)
}

/// The pid in a passt pidfile, if it holds one.
pub(crate) async fn read_pid(pidfile: &Path) -> Option<u32> {
    tokio::fs::read_to_string(pidfile)
        .await
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Stops the passt with this pid, if that pid still is a passt serving `socket` (pids get
/// reused: never signal a process just because a record names it).
pub(crate) async fn stop(pid: u32, socket: Option<&Path>) -> Result<(), String> {
    let Some(cmdline) = exec::cmdline(pid) else {
        return Ok(());
    };
    let is_ours =
        cmdline.contains("passt") && socket.is_none_or(|s| cmdline.contains(&*s.to_string_lossy()));
    if !is_ours {
        return Ok(());
    }
    exec::terminate(pid, Duration::from_secs(2)).await
}

fn path_str(path: &Path) -> Result<&str, NetworkError> {
    path.to_str().ok_or_else(|| NetworkError::Passt {
        detail: format!(
            "runtime path {} is not valid UTF-8; choose a plain ASCII runtime dir",
            path.display()
        ),
    })
}
