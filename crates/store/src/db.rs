//! The node's embedded database: one SQLite file in the data dir, shared by
//! the model store and the analytics, and by every JetsonMind process on the
//! machine (WAL mode lets readers and one writer work at once).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use rusqlite::backup::{Backup, StepResult};

/// The database file inside the data dir.
pub const DB_FILE: &str = "jetsonmind.db";

/// How long a writer waits for another process's transaction to finish.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Schema migrations, applied in order; `PRAGMA user_version` counts those done.
const MIGRATIONS: &[&str] = &[
    // 1: model store and analytics.
    "CREATE TABLE models (
        name TEXT PRIMARY KEY,
        format TEXT NOT NULL,
        architecture TEXT,
        quantization TEXT,
        parameters_label TEXT,
        context_length INTEGER,
        size_bytes INTEGER NOT NULL,
        license TEXT,
        source TEXT NOT NULL,
        imported_at_ms INTEGER NOT NULL
    );
    CREATE TABLE model_files (
        model TEXT NOT NULL REFERENCES models(name) ON DELETE CASCADE,
        path TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        PRIMARY KEY (model, path)
    );
    CREATE INDEX model_files_sha256 ON model_files(sha256);
    CREATE TABLE model_loads (
        model TEXT NOT NULL,
        node TEXT NOT NULL,
        pid INTEGER NOT NULL,
        loaded_at_ms INTEGER NOT NULL,
        PRIMARY KEY (model, node, pid)
    );
    CREATE TABLE store_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO store_meta VALUES ('generation', 0);
    CREATE TABLE analytics_series (
        server TEXT NOT NULL,
        tool TEXT NOT NULL,
        model TEXT NOT NULL,
        calls INTEGER NOT NULL,
        errors INTEGER NOT NULL,
        latency_ms_sum REAL NOT NULL,
        completion_tokens INTEGER NOT NULL,
        PRIMARY KEY (server, tool, model)
    );
    CREATE TABLE analytics_samples (
        server TEXT NOT NULL,
        tool TEXT NOT NULL,
        model TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        latency_ms REAL NOT NULL,
        ok INTEGER NOT NULL,
        tokens_per_second REAL
    );
    CREATE INDEX analytics_samples_at ON analytics_samples(at_ms);",
];

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "database {path} has schema version {found}, newer than this jetsonmind knows ({known}); upgrade jetsonmind"
    )]
    TooNew {
        path: PathBuf,
        found: usize,
        known: usize,
    },
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("database {0} stayed locked for {BUSY_TIMEOUT:?}; try again")]
    Busy(PathBuf),
}

/// Open (creating if needed) the database in `data_dir`, migrated to the
/// current schema.
pub fn open(data_dir: &Path) -> Result<Connection, DbError> {
    std::fs::create_dir_all(data_dir).map_err(|e| DbError::Io(data_dir.to_path_buf(), e))?;
    let path = data_dir.join(DB_FILE);
    let sqlite = |source| DbError::Sqlite {
        path: path.clone(),
        source,
    };
    let mut conn = Connection::open(&path).map_err(sqlite)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite)?;
    // WAL: readers never block the writer; NORMAL sync is durable across a
    // process crash (kill -9), which is what the store promises.
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(sqlite)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(sqlite)?;
    conn.pragma_update(None, "foreign_keys", true)
        .map_err(sqlite)?;
    migrate(&mut conn).map_err(|e| match e {
        Migration::Sqlite(source) => sqlite(source),
        Migration::TooNew(found) => DbError::TooNew {
            path: path.clone(),
            found,
            known: MIGRATIONS.len(),
        },
    })?;
    Ok(conn)
}

/// Copy the database behind `conn` to a new file `dest`, as it is now, while
/// other connections (other processes too) go on reading and writing it:
/// SQLite's online backup, all pages in one step, so under one read
/// transaction: a consistent copy that no concurrent write can make restart.
/// The copy is a file on its own (rollback journal, no `-wal` beside it).
pub fn copy_online(conn: &Connection, dest: &Path) -> Result<(), DbError> {
    let sqlite = |source| DbError::Sqlite {
        path: dest.to_path_buf(),
        source,
    };
    let mut copy = Connection::open(dest).map_err(sqlite)?;
    {
        let backup = Backup::new(conn, &mut copy).map_err(sqlite)?;
        let deadline = Instant::now() + BUSY_TIMEOUT;
        loop {
            match backup.step(-1).map_err(sqlite)? {
                StepResult::Done => break,
                StepResult::More => {}
                // A checkpoint or a migration holds a lock for a moment.
                StepResult::Busy | StepResult::Locked if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => return Err(DbError::Busy(dest.to_path_buf())),
            }
        }
    }
    copy.pragma_update(None, "journal_mode", "DELETE")
        .map_err(sqlite)
}

enum Migration {
    Sqlite(rusqlite::Error),
    TooNew(usize),
}

fn migrate(conn: &mut Connection) -> Result<(), Migration> {
    // IMMEDIATE: two processes starting at once must not both migrate.
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(Migration::Sqlite)?;
    let done: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(Migration::Sqlite)?;
    let done = usize::try_from(done).unwrap_or(usize::MAX);
    if done > MIGRATIONS.len() {
        return Err(Migration::TooNew(done));
    }
    for sql in &MIGRATIONS[done..] {
        tx.execute_batch(sql).map_err(Migration::Sqlite)?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)
        .map_err(Migration::Sqlite)?;
    tx.commit().map_err(Migration::Sqlite)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_migrates_once_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(dir.path()).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        drop(conn);
        let conn = open(dir.path()).unwrap();
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 6);
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(dir.path()).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("newer"), "{err}");
    }
}
