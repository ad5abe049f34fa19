//! Store errors. Messages say which file or operation failed and never contain stored values.

use std::path::PathBuf;

/// A failed store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("could not open the database at {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: sqlx::Error,
    },
    #[error("could not create the database file {path} (mode 600): does its directory exist, and may this user write there?")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "could not bring the database at {path} up to date; is it a mayfly database, undamaged?"
    )]
    Migrate {
        path: PathBuf,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("could not open {path}: the database key is wrong, or the file is not a mayfly database (it was not changed)")]
    WrongKey { path: PathBuf },
    #[error("this build of mayfly has no SQLCipher: the store would not be encrypted, so it refuses to open")]
    NoEncryption,
    #[error("database operation `{op}` failed")]
    Query {
        op: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("a stored {what} could not be read back; the database may be damaged")]
    Corrupt { what: &'static str },
}

pub(crate) trait QueryContext<T> {
    fn op(self, op: &'static str) -> Result<T, StoreError>;
}

impl<T> QueryContext<T> for Result<T, sqlx::Error> {
    fn op(self, op: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Query { op, source })
    }
}
