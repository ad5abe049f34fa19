//! Each simulated repository as a bare git repository, served over git's dumb HTTP protocol at
//! `/OWNER/REPO.git/…` as GitHub serves `https://github.com/OWNER/REPO.git`. The repository is
//! made with the host's `git` when the simulator creates it: one commit on `main` (`README.md`
//! and `mayfly-checkout-marker`) with fixed author, committer and dates, so its id is the same in
//! every simulator. Without a usable `git`, repositories are still created (a warning is logged)
//! and their git URLs answer 404. Only plain relative paths to files inside a repository's own
//! directory are served; anything else is 404.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::server::Shared;

/// The file every simulated repository holds, for a job to prove it checked the repository out.
pub const CHECKOUT_MARKER: &str = "mayfly-checkout-marker";
/// The content of [`CHECKOUT_MARKER`].
pub const CHECKOUT_MARKER_CONTENT: &str = "checked out from the mayfly GitHub simulator\n";

/// Fixed identity and date of every simulated repository's first commit.
const GIT_IDENTITY: [(&str, &str); 6] = [
    ("GIT_AUTHOR_NAME", "mayfly-sim"),
    ("GIT_AUTHOR_EMAIL", "mayfly-sim@example.com"),
    ("GIT_AUTHOR_DATE", "2024-01-01T00:00:00Z"),
    ("GIT_COMMITTER_NAME", "mayfly-sim"),
    ("GIT_COMMITTER_EMAIL", "mayfly-sim@example.com"),
    ("GIT_COMMITTER_DATE", "2024-01-01T00:00:00Z"),
];

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot prepare the directory {0} for simulated repositories")]
    Dir(PathBuf, #[source] std::io::Error),
    #[error("cannot run {0}")]
    Spawn(PathBuf, #[source] std::io::Error),
    #[error("`git {args}` failed: {stderr}")]
    Failed { args: String, stderr: String },
}

/// Where the simulated repositories live, and the `git` that makes them.
#[derive(Debug)]
pub(crate) struct GitRepos {
    root: PathBuf,
    git: PathBuf,
    /// Set when `root` is a temporary directory: removed with the simulator.
    _temp: Option<tempfile::TempDir>,
}

impl GitRepos {
    /// Uses `dir` (emptied first: the simulator's world starts empty, and its ids repeat), or a
    /// new temporary directory.
    pub(crate) fn new(dir: Option<&Path>, git: &Path) -> Result<Self, GitError> {
        let (root, temp) = match dir {
            Some(dir) => {
                match std::fs::remove_dir_all(dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(GitError::Dir(dir.to_owned(), e)),
                }
                std::fs::create_dir_all(dir).map_err(|e| GitError::Dir(dir.to_owned(), e))?;
                (dir.to_owned(), None)
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("mayfly-sim-git-")
                    .tempdir()
                    .map_err(|e| GitError::Dir(std::env::temp_dir(), e))?;
                (temp.path().to_owned(), Some(temp))
            }
        };
        Ok(Self {
            root,
            git: git.to_owned(),
            _temp: temp,
        })
    }

    /// A repository's directory, named by its id (never by its name, which a caller chose).
    fn repo_dir(&self, repo_id: u64) -> PathBuf {
        self.root.join(format!("{repo_id}.git"))
    }

    /// Makes the bare repository of `full_name` (`owner/name`). It is built beside its final
    /// place and renamed into it, so a half-made repository is never served.
    pub(crate) fn create(&self, repo_id: u64, full_name: &str) -> Result<(), GitError> {
        let building = self.root.join(format!("{repo_id}.git.building"));
        match std::fs::remove_dir_all(&building) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(GitError::Dir(building, e)),
        }
        let dir = building.as_os_str();
        self.run(
            None,
            &["init".as_ref(), "--bare".as_ref(), "--quiet".as_ref(), dir],
            None,
        )?;
        let git = |args: &[&str], stdin: Option<&str>| {
            let mut full: Vec<&std::ffi::OsStr> = vec!["--git-dir".as_ref(), dir];
            full.extend(args.iter().map(|a| std::ffi::OsStr::new(*a)));
            self.run(Some(&building), &full, stdin)
        };
        git(&["symbolic-ref", "HEAD", "refs/heads/main"], None)?;
        let readme = git(
            &["hash-object", "-w", "--stdin"],
            Some(&format!("# {full_name}\n")),
        )?;
        let marker = git(
            &["hash-object", "-w", "--stdin"],
            Some(CHECKOUT_MARKER_CONTENT),
        )?;
        let tree = git(
            &["mktree"],
            Some(&format!(
                "100644 blob {readme}\tREADME.md\n100644 blob {marker}\t{CHECKOUT_MARKER}\n"
            )),
        )?;
        let commit = git(&["commit-tree", &tree, "-m", "Initial commit"], None)?;
        git(&["update-ref", "refs/heads/main", &commit], None)?;
        git(&["update-server-info"], None)?;
        let target = self.repo_dir(repo_id);
        std::fs::rename(&building, &target).map_err(|e| GitError::Dir(target, e))
    }

    /// Runs `git` without user or system configuration; returns its trimmed stdout.
    fn run(
        &self,
        cwd: Option<&Path>,
        args: &[&std::ffi::OsStr],
        stdin: Option<&str>,
    ) -> Result<String, GitError> {
        let mut command = Command::new(&self.git);
        command
            .args(args)
            .envs(GIT_IDENTITY)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("LC_ALL", "C")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        let spawn_err = |e| GitError::Spawn(self.git.clone(), e);
        let mut child = command.spawn().map_err(spawn_err)?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            use std::io::Write as _;
            pipe.write_all(input.as_bytes()).map_err(spawn_err)?;
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        if !out.status.success() {
            return Err(GitError::Failed {
                args: args
                    .iter()
                    .map(|a| a.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(" "),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

/// `owner`, `name` and the path inside the repository of `/owner/name.git/path`.
fn split_git_path(path: &str) -> Option<(&str, &str, &str)> {
    let mut parts = path.strip_prefix('/')?.splitn(3, '/');
    let owner = parts.next()?;
    let name = parts.next()?.strip_suffix(".git")?;
    Some((owner, name, parts.next().unwrap_or("")))
}

/// One path segment of the names git's dumb protocol asks for (`HEAD`, `info/refs`,
/// `objects/ab/cdef…`, `objects/pack/pack-….pack`): no `.`/`..`, no escapes, no separators.
fn plain_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment != "."
        && segment != ".."
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// Serves `GET /OWNER/REPO.git/…` from the repository's directory; every other request goes on to
/// the simulator's routes. (A middleware, not a route: the router cannot match a `.git` suffix,
/// and a `/{owner}/{repo}/{*path}` route would take GitHub's own 404s.)
pub(crate) async fn serve(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let Some((owner, name, path)) = split_git_path(req.uri().path()) else {
        return next.run(req).await;
    };
    if req.method() != Method::GET {
        return next.run(req).await;
    }
    let file = (plain_segment(owner) && plain_segment(name) && path.split('/').all(plain_segment))
        .then(|| {
            shared
                .world()
                .find_repo(owner, name)
                .map(|repo| shared.git.repo_dir(repo.id).join(path))
        })
        .flatten();
    let Some(file) = file else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // The repository's files are plain files; a symlink or directory is not served.
    match tokio::fs::symlink_metadata(&file).await {
        Ok(meta) if meta.is_file() => {}
        _ => return StatusCode::NOT_FOUND.into_response(),
    }
    match tokio::fs::read(&file).await {
        Ok(bytes) => (StatusCode::OK, Body::from(bytes)).into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn git_paths_are_split_and_other_paths_are_not() {
        assert_eq!(
            split_git_path("/acme/api.git/info/refs"),
            Some(("acme", "api", "info/refs"))
        );
        assert_eq!(split_git_path("/acme/api.git"), Some(("acme", "api", "")));
        assert_eq!(split_git_path("/repos/acme/api"), None);
        assert_eq!(split_git_path("/_sim/jobs"), None);
        for bad in ["", ".", "..", "a/b", "a%2fb", "a\\b", "a\0b"] {
            assert!(!plain_segment(bad), "{bad:?}");
        }
        for good in ["HEAD", "refs", "pack-0a1b.pack", "my_repo-1.x"] {
            assert!(plain_segment(good), "{good:?}");
        }
    }
}
