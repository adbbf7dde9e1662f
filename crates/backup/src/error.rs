//! What can go wrong in a backup or a restore.

use std::io;

use jetsonmind_store::StoreError;

/// A backup or restore that did not happen. Its message says what was being
/// done (the file, the archive) and, as its source, why it failed; a refusal
/// says why and what to do instead.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Reading, writing, renaming or syncing a file failed.
    #[error("{doing}")]
    Io {
        /// What was being done, naming the file.
        doing: String,
        #[source]
        source: io::Error,
    },
    /// The model store or its database failed.
    #[error("{doing}")]
    Store {
        /// What was being done with the store.
        doing: String,
        #[source]
        source: StoreError,
    },
    /// It cannot go on: an output that exists, a data dir in use, too little
    /// room, a config file gone, a model file that shrank or does not hold
    /// what its name says, an archive that is damaged or not a backup.
    #[error("{0}")]
    Refused(String),
}

/// Names what was being done when an error happened.
pub(crate) trait Doing<T> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, BackupError>;
}

impl<T> Doing<T> for Result<T, io::Error> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, BackupError> {
        self.map_err(|source| BackupError::Io {
            doing: what(),
            source,
        })
    }
}

impl<T> Doing<T> for Result<T, StoreError> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, BackupError> {
        self.map_err(|source| BackupError::Store {
            doing: what(),
            source,
        })
    }
}

/// A refusal saying `why`, unless `ok`.
pub(crate) fn refuse_unless(ok: bool, why: impl FnOnce() -> String) -> Result<(), BackupError> {
    match ok {
        true => Ok(()),
        false => Err(BackupError::Refused(why())),
    }
}
