//! Whether anything has committed to a SQLite database since a moment, without a statement.
//!
//! In WAL mode, each commit to the database, by any connection of any process, rewrites the
//! header of its wal-index (the `-shm` file beside it, whose layout is part of SQLite's
//! documented file format: <https://www.sqlite.org/walformat.html>), and so do only the
//! checkpoints that restart the log and recovery. Reading that header is one system call,
//! where a statement is a hand-off to a connection's thread and back: so while the header is
//! the one read before the clients' epoch was last read, that epoch is still the database's.

use std::{fs::File, os::unix::fs::FileExt, sync::Mutex};

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

use super::clients::ClientEpoch;

/// Bytes of one copy of the wal-index header; a commit writes the second copy, then the first.
const HEADER: usize = 48;

/// The wal-index header at one moment: equal to another only if nothing committed in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Commits([u8; HEADER]);

/// The clients' epoch as last read, with the wal-index header read before that read began.
#[derive(Debug)]
pub(super) struct KnownEpoch {
    wal_index: File,
    known: Mutex<Option<(Commits, ClientEpoch)>>,
}

impl KnownEpoch {
    /// For the SQLite database `db` is connected to, once SQLite has made its wal-index (the
    /// first connection in WAL mode does); `None` on PostgreSQL or if it cannot be opened. The
    /// path is the one SQLite opened, as it reports it.
    pub(super) async fn open(db: &DatabaseConnection) -> Option<Self> {
        if db.get_database_backend() != DbBackend::Sqlite {
            return None;
        }
        let statement =
            Statement::from_string(DbBackend::Sqlite, "SELECT file FROM pragma_database_list WHERE name = 'main'");
        let path: String = db.query_one_raw(statement).await.ok()??.try_get_by_index(0).ok()?;
        let wal_index = File::open(format!("{path}-shm")).ok()?;
        Some(Self { wal_index, known: Mutex::new(None) })
    }

    /// The header now; `None` while a commit is writing it (its two copies differ) or if it
    /// cannot be read.
    fn commits(&self) -> Option<Commits> {
        let mut both = [0; 2 * HEADER];
        self.wal_index.read_exact_at(&mut both, 0).ok()?;
        let (first, second) = both.split_first_chunk::<HEADER>()?;
        (first[..] == second[..]).then_some(Commits(*first))
    }

    /// The epoch, if nothing has committed since it was read; otherwise, what to remember with
    /// the epoch that the caller reads next (`None`: nothing, the header was being written).
    pub(super) fn current(&self) -> Result<ClientEpoch, Option<Commits>> {
        let now = self.commits();
        let known = self.known.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match (now, known.as_ref()) {
            (Some(now), Some((then, epoch))) if now == *then => Ok(epoch.clone()),
            _ => Err(now),
        }
    }

    /// Keeps `epoch`, read by a statement that began after `before` was taken.
    pub(super) fn remember(&self, before: Commits, epoch: &ClientEpoch) {
        *self.known.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((before, epoch.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::super::{DatabaseUrl, OpenMode, Store};
    use sea_orm::ConnectionTrait;

    #[tokio::test]
    async fn the_epoch_is_read_again_after_any_commit_and_only_then() {
        let dir = tempfile::tempdir().unwrap();
        let url: DatabaseUrl = format!("sqlite://{}?mode=rwc", dir.path().join("pc.db").display()).parse().unwrap();
        let store = Store::open(&url, OpenMode::CreateIfMissing).await.unwrap();
        store.migrate().await.unwrap();
        let known = store.known_epoch.as_ref().expect("a SQLite database in WAL mode has a wal-index");
        let first = store.client_epoch().await.unwrap();
        assert_eq!(known.current().ok(), Some(first.clone()), "nothing committed since the read");

        // Another connection, as another process would be.
        let other = sea_orm::Database::connect(url.expose()).await.unwrap();
        other.execute_unprepared("SELECT count(*) FROM personal_clients").await.unwrap();
        assert_eq!(known.current().ok(), Some(first.clone()), "a read commits nothing");
        other.execute_unprepared("UPDATE client_epoch SET stamp = 'FF' WHERE id = 3").await.unwrap();
        assert!(known.current().is_err(), "a commit elsewhere is seen without a statement");
        let second = store.client_epoch().await.unwrap();
        assert_ne!(second, first, "the epoch is read again");
        assert_eq!(known.current().ok(), Some(second));
    }
}
