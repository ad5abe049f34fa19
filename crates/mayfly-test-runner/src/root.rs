//! The runner root, laid out as actions/runner lays it out: the executable is `<root>/bin/
//! Runner.Listener`; the JIT config's files (`.runner`, `.credentials`, `.credentials_rsaparams`)
//! are written into the root with mode 0600, as the real listener writes them before it starts;
//! logs go to `_diag/`, jobs run under the work folder (`_work/`). The root must be writable, and
//! an error says which path was not.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use secrecy::{ExposeSecret, SecretSlice, SecretString};

/// The configuration files are the runner's credential: owner-only.
const CONFIG_FILE_MODE: u32 = 0o600;
const DEFAULT_WORK_FOLDER: &str = "_work";

#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("the executable {} is not inside <root>/bin/", .0.display())]
    NoRoot(PathBuf),
    #[error("the runner root {} must be writable; writing {} failed", .root.display(), .path.display())]
    Write {
        root: PathBuf,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the work folder {0:?} leaves the runner root")]
    WorkFolder(String),
}

#[derive(Debug, thiserror::Error)]
pub enum JitFilesError {
    #[error("the JIT config is not standard base64")]
    Base64,
    #[error("the JIT config is not a JSON object of file names to base64 contents")]
    Json,
    #[error("the JIT config names a file {0:?} outside the runner root")]
    FileName(String),
    #[error("the JIT config's file {0} is not standard base64")]
    FileBase64(String),
}

/// One file of a JIT config. Its contents include the runner's private key.
#[derive(Debug)]
pub struct JitFile {
    pub name: String,
    pub contents: SecretSlice<u8>,
}

/// Decodes an `encoded_jit_config` into the files it holds, checking every name is a plain file
/// name (the real runner joins them to its root unchecked).
pub fn decode_jit_files(encoded: &SecretString) -> Result<Vec<JitFile>, JitFilesError> {
    let outer: SecretSlice<u8> = STANDARD
        .decode(encoded.expose_secret().trim())
        .map_err(|_| JitFilesError::Base64)?
        .into();
    let files: BTreeMap<String, SecretString> =
        serde_json::from_slice(outer.expose_secret()).map_err(|_| JitFilesError::Json)?;
    files
        .into_iter()
        .map(|(name, b64)| {
            if !is_plain_file_name(&name) {
                return Err(JitFilesError::FileName(name));
            }
            let contents = STANDARD
                .decode(b64.expose_secret())
                .map_err(|_| JitFilesError::FileBase64(name.clone()))?
                .into();
            Ok(JitFile { name, contents })
        })
        .collect()
}

fn is_plain_file_name(name: &str) -> bool {
    let mut components = Path::new(name).components();
    matches!(
        (components.next(), components.next()),
        (Some(Component::Normal(_)), None)
    ) && !name.contains('/')
        && !name.contains('\0')
}

/// The directory the runner lives in.
#[derive(Debug, Clone)]
pub struct RunnerRoot {
    root: PathBuf,
}

impl RunnerRoot {
    /// The parent of the directory holding the executable (`<root>/bin/Runner.Listener`).
    pub fn of_executable(exe: &Path) -> Result<Self, RootError> {
        let root = exe
            .parent()
            .and_then(Path::parent)
            .filter(|p| !p.as_os_str().is_empty())
            .ok_or_else(|| RootError::NoRoot(exe.to_path_buf()))?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    fn write_error(&self, path: &Path) -> impl FnOnce(io::Error) -> RootError {
        let (root, path) = (self.root.clone(), path.to_path_buf());
        move |source| RootError::Write { root, path, source }
    }

    /// Creates `<root>/<relative>` and its parents.
    pub fn create_dir(&self, relative: &Path) -> Result<PathBuf, RootError> {
        let path = self.root.join(relative);
        fs::create_dir_all(&path).map_err(self.write_error(&path))?;
        Ok(path)
    }

    /// Opens a new log file in `_diag/`, named as the real runner names its own.
    pub fn open_diag_log(&self, now: chrono::DateTime<chrono::Utc>) -> Result<fs::File, RootError> {
        let diag = self.create_dir(Path::new("_diag"))?;
        let path = diag.join(format!("Runner_{}-utc.log", now.format("%Y%m%d-%H%M%S")));
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(self.write_error(&path))
    }

    /// Writes the JIT config's files into the root, owner-only. A file already there (a symlink
    /// included) is replaced, never written through.
    pub fn write_jit_files(&self, files: &[JitFile]) -> Result<(), RootError> {
        for file in files {
            let path = self.root.join(&file.name);
            let error = self.write_error(&path);
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(error(e)),
                _ => {}
            }
            let written = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(CONFIG_FILE_MODE)
                .open(&path)
                .and_then(|mut f| {
                    // The umask may have narrowed the mode, never widened it; make it exact.
                    f.set_permissions(fs::Permissions::from_mode(CONFIG_FILE_MODE))?;
                    f.write_all(file.contents.expose_secret())?;
                    f.sync_all()
                });
            written.map_err(error)?;
        }
        Ok(())
    }

    /// The work folder named in `.runner` (`WorkFolder`), relative to the root unless absolute.
    pub fn work_folder(&self, configured: &str) -> Result<PathBuf, RootError> {
        let configured = match configured.trim() {
            "" => DEFAULT_WORK_FOLDER,
            other => other,
        };
        let path = Path::new(configured);
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(RootError::WorkFolder(configured.to_owned()));
        }
        Ok(self.root.join(path))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    fn encode(files: &[(&str, &[u8])]) -> SecretString {
        let map: BTreeMap<&str, String> = files
            .iter()
            .map(|(name, contents)| (*name, STANDARD.encode(contents)))
            .collect();
        SecretString::from(STANDARD.encode(serde_json::to_vec(&map).unwrap()))
    }

    #[test]
    fn the_root_is_the_parent_of_the_executables_directory() {
        let root = RunnerRoot::of_executable(Path::new("/opt/runner/bin/Runner.Listener")).unwrap();
        assert_eq!(root.path(), Path::new("/opt/runner"));
        assert!(RunnerRoot::of_executable(Path::new("Runner.Listener")).is_err());
        assert_eq!(
            root.work_folder("_work").unwrap(),
            Path::new("/opt/runner/_work")
        );
        assert_eq!(
            root.work_folder(" ").unwrap(),
            Path::new("/opt/runner/_work")
        );
        assert_eq!(root.work_folder("/w").unwrap(), Path::new("/w"));
        assert!(root.work_folder("_work/../../etc").is_err());
    }

    #[test]
    fn writes_each_file_of_the_config_owner_only_replacing_what_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let root = RunnerRoot {
            root: dir.path().to_path_buf(),
        };
        // A stale symlink must be replaced, not followed.
        let target = dir.path().join("elsewhere");
        fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(".credentials")).unwrap();
        fs::write(dir.path().join(".runner"), "old").unwrap();
        fs::set_permissions(
            dir.path().join(".runner"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();

        let encoded = encode(&[
            (".runner", b"{\"AgentName\":\"vm-1\"}"),
            (".credentials", b"{\"Scheme\":\"OAuth\"}"),
            (".credentials_rsaparams", b"{\"d\":\"secret\"}"),
        ]);
        let files = decode_jit_files(&encoded).unwrap();
        root.write_jit_files(&files).unwrap();
        for (name, contents) in [
            (".runner", "{\"AgentName\":\"vm-1\"}"),
            (".credentials", "{\"Scheme\":\"OAuth\"}"),
            (".credentials_rsaparams", "{\"d\":\"secret\"}"),
        ] {
            let path = dir.path().join(name);
            assert_eq!(fs::read_to_string(&path).unwrap(), contents);
            let meta = fs::symlink_metadata(&path).unwrap();
            assert!(meta.is_file(), "{name}");
            assert_eq!(meta.mode() & 0o777, 0o600, "{name}");
        }
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
        assert!(!format!("{files:?}").contains("secret"));
    }

    #[test]
    fn refuses_configs_that_are_not_base64_json_or_name_paths() {
        let decode = |s: &str| decode_jit_files(&SecretString::from(s.to_owned()));
        assert!(matches!(decode("%%%"), Err(JitFilesError::Base64)));
        assert!(matches!(
            decode(&STANDARD.encode("[1]")),
            Err(JitFilesError::Json)
        ));
        for name in ["../.runner", "/etc/passwd", "a/b", "..", ".", ""] {
            let result = decode_jit_files(&encode(&[(name, b"x")]));
            assert!(
                matches!(&result, Err(JitFilesError::FileName(n)) if n == name),
                "{name}: {result:?}"
            );
        }
        let bad = STANDARD.encode(r#"{".runner":"%%%"}"#);
        assert!(matches!(decode(&bad), Err(JitFilesError::FileBase64(n)) if n == ".runner"));
    }

    #[test]
    fn an_unwritable_root_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the root should be: fails for root too, unlike a mode of 0555.
        let not_a_dir = dir.path().join("root");
        fs::write(&not_a_dir, "").unwrap();
        let root = RunnerRoot {
            root: not_a_dir.clone(),
        };
        let files = decode_jit_files(&encode(&[(".runner", b"{}")])).unwrap();
        for error in [
            root.write_jit_files(&files).unwrap_err(),
            root.open_diag_log(chrono::Utc::now()).unwrap_err(),
        ] {
            let text = error.to_string();
            assert!(
                text.contains(&format!("{} must be writable", not_a_dir.display())),
                "{text}"
            );
        }
    }
}
