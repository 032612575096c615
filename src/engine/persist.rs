//! The persistence file: USERSESSION and SOURCEIP sessions kept across appliance restarts.
//!
//! Owns `nsemu.persistence.json` in the engine's state directory (beside ns.conf). The engine
//! reads it once at start and restores its sessions at the first successful commit (when the
//! configuration they refer to is known), dropping expired sessions and those whose lb vserver
//! no longer exists or whose service is no longer bound to it. The table is written when it
//! changed, at most once per `WRITE_INTERVAL`, and at `Engine::shutdown`. Writes are atomic:
//! a temporary file is written and fsynced, then renamed over the old one.
//!
//! It must not touch the data path: connections only update the in-memory table
//! (`balance::PersistenceTable`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::engine::balance::{PersistenceTable, SavedSession};
use crate::engine::stats::lock;

/// File name of the persistence sessions, in `EngineOptions::state_dir`.
pub const FILE_NAME: &str = "nsemu.persistence.json";

/// How often the periodic writer looks for changes.
pub(crate) const WRITE_INTERVAL: Duration = Duration::from_secs(1);

/// The file's content.
#[derive(Debug, Serialize, Deserialize)]
struct PersistenceFile {
    version: u32,
    sessions: Vec<SavedSession>,
}

/// Where sessions are saved, and the sessions read at start that wait for the first commit.
#[derive(Debug, Default)]
pub(crate) struct Store {
    /// `None` when the engine has no state directory (then nothing is read or written).
    path: Option<PathBuf>,
    /// Serialises writers (the periodic task and shutdown) so they never share the temp file.
    write: Mutex<()>,
    /// Sessions read at start; taken by the first successful commit.
    pending: Mutex<Option<Vec<SavedSession>>>,
}

// === impl Store ===

impl Store {
    /// A store in `state_dir` (none when empty); reads the file left by the previous run.
    pub fn open(state_dir: &Path) -> Store {
        if state_dir.as_os_str().is_empty() {
            return Store::default();
        }
        let path = state_dir.join(FILE_NAME);
        let pending = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<PersistenceFile>(&bytes) {
                Ok(f) => Some(f.sessions),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "ignoring unreadable persistence file");
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read persistence file");
                None
            }
        };
        Store {
            path: Some(path),
            write: Mutex::new(()),
            pending: Mutex::new(pending),
        }
    }

    pub fn enabled(&self) -> bool {
        self.path.is_some()
    }

    /// The sessions read at start, once.
    pub fn take_pending(&self) -> Option<Vec<SavedSession>> {
        lock(&self.pending).take()
    }

    /// Writes the live sessions of `table` (atomically). A failure is logged and the table
    /// marked changed, so the next periodic write retries.
    pub fn save(&self, table: &PersistenceTable) {
        let Some(path) = &self.path else { return };
        let _w = lock(&self.write);
        let file = PersistenceFile {
            version: 1,
            sessions: table.export(Instant::now(), SystemTime::now()),
        };
        if let Err(e) = write_atomic(path, &file) {
            tracing::warn!(file = %path.display(), error = %e, "cannot save persistence sessions");
            table.mark_dirty();
        }
    }
}

fn write_atomic(path: &Path, file: &PersistenceFile) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(file).map_err(std::io::Error::other)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    // Make the rename itself durable.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_round_trip_through_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let table = PersistenceTable::default();
        let now = Instant::now();
        table.put("lb", "dev1", "svc1", now, Duration::from_secs(300));
        let store = Store::open(dir.path());
        assert!(store.take_pending().is_none());
        store.save(&table);
        assert!(!dir.path().join("nsemu.persistence.json.tmp").exists());

        let again = Store::open(dir.path());
        let saved = again.take_pending().expect("sessions read back");
        assert_eq!(saved.len(), 1);
        assert_eq!(saved[0].key, "dev1");
        assert!(again.take_pending().is_none(), "taken once");
        let t2 = PersistenceTable::default();
        assert_eq!(
            t2.restore(saved, Instant::now(), SystemTime::now(), |_, _| true),
            1
        );
    }

    #[test]
    fn a_corrupt_file_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(FILE_NAME), "{not json").expect("write");
        assert!(Store::open(dir.path()).take_pending().is_none());
    }

    #[test]
    fn no_state_dir_means_no_file() {
        let store = Store::open(Path::new(""));
        assert!(!store.enabled());
        store.save(&PersistenceTable::default());
    }
}
