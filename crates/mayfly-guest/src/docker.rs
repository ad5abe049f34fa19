//! Docker on first use: dockerd takes ~18 s to come up under TCG, so it is not started at boot.
//! PID 1 listens on `/run/docker.sock` itself (owner root, group `docker`, mode 660, as
//! Debian's docker.socket) and, when the first client connects, starts dockerd with that
//! listening socket handed over the way systemd hands it (`-H fd://`, `LISTEN_FDS=1`,
//! `LISTEN_PID` = dockerd's pid). The waiting client is then served by dockerd; nothing is lost.

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::log;
use crate::system::PATH;

const SOCKET: &str = "/run/docker.sock";
const DOCKERD: [&str; 2] = ["/usr/bin/dockerd", "/usr/sbin/dockerd"];
const LOG: &str = "/var/log/mayfly-dockerd.log";

/// The gid of `name` in `/etc/group`.
fn group_id(name: &str) -> Option<u32> {
    std::fs::read_to_string("/etc/group")
        .ok()?
        .lines()
        .find_map(|l| {
            let mut fields = l.split(':');
            (fields.next()? == name).then(|| fields.nth(1)?.parse().ok())?
        })
}

/// Listens on the Docker socket and starts dockerd on the first connection. Returns whether
/// the image has Docker at all.
pub fn activate_on_first_use() -> std::io::Result<bool> {
    let Some(dockerd) = DOCKERD.iter().find(|p| Path::new(p).is_file()) else {
        return Ok(false);
    };
    let _ = std::fs::remove_file(SOCKET);
    let listener = UnixListener::bind(SOCKET)?;
    std::os::unix::fs::chown(SOCKET, Some(0), group_id("docker"))?;
    std::fs::set_permissions(SOCKET, std::os::unix::fs::PermissionsExt::from_mode(0o660))?;
    let dockerd = (*dockerd).to_owned();
    std::thread::spawn(move || {
        if let Err(e) = wait_then_start(&listener, &dockerd) {
            log(&format!("docker: starting dockerd failed: {e}"));
        }
        // The listener stays open here for as long as PID 1 lives: dockerd has its own copy.
        loop {
            std::thread::park();
        }
    });
    Ok(true)
}

fn wait_then_start(listener: &UnixListener, dockerd: &str) -> std::io::Result<()> {
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    loop {
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(n) if n > 0 => break,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    log("docker: first client on /run/docker.sock, starting dockerd");
    let fd = listener.as_raw_fd();
    // The shell inherits the socket (no close-on-exec), puts it at fd 3 and becomes dockerd,
    // so `$$` is dockerd's pid, as the activation protocol wants.
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(LOG)?;
    let redirect = if fd == 3 {
        String::new()
    } else {
        format!("3<&{fd} {fd}<&-")
    };
    let script = format!(
        "export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=docker.socket; \
         exec {dockerd} -H fd:// --data-root /var/lib/docker {redirect}"
    );
    let spawned = Command::new("/bin/sh")
        .args(["-c", &script])
        .env_clear()
        .env("PATH", PATH)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn();
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    let mut child = spawned?;
    // Reap it when it ends, so it does not linger as a zombie of PID 1.
    std::thread::spawn(move || {
        let status = child.wait();
        log(&format!("docker: dockerd ended: {status:?}"));
    });
    Ok(())
}
