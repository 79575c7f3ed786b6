//! Where the tailer is in each file, kept in a small file across restarts.
//!
//! A restarted streamer used to read the end of every file again under new
//! source ids, so every client and the aggregator received those lines a
//! second time. With a state folder (`--state-dir`, an emptyDir of the pod
//! in Kubernetes: it survives a container restart), the tailer writes, about
//! once a second and at the end of a drain, each file's identity (device,
//! inode, a hash of its first bytes), the offset of its last whole line and
//! the source's id and sequence number there. A restarted tailer that finds
//! the same file continues it from that offset under the same id and
//! sequence: lines read after the last save are read again *with the
//! sequence numbers they had*, which a client's resume cursor already
//! covers, so nothing is repeated (and nothing is lost that is still in the
//! file). A file that cannot be continued gets a new id, as before.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::protocol::SourceId;

/// Format version of the state file; another version is ignored.
const VERSION: u32 = 1;

/// Name of the state file in the state folder.
pub const FILE_NAME: &str = "positions.json";

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Positions {
    pub version: u32,
    pub files: Vec<Saved>,
}

/// One file's place, at a line boundary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    /// Path relative to the log folder (the source's `file`).
    pub rel: String,
    pub dev: u64,
    pub ino: u64,
    /// Just after the last line that got a sequence number.
    pub offset: u64,
    /// Hash of the first `min(offset, 1024)` bytes (tailer's `Mark`).
    pub head: u64,
    pub sid: SourceId,
    /// The source's last sequence number at `offset`.
    pub seq: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PositionsError {
    #[error("state file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Positions {
    pub fn new(files: Vec<Saved>) -> Positions {
        Positions {
            version: VERSION,
            files,
        }
    }

    /// The positions saved in `path`; none when there is no file yet, and
    /// none (with a warning) when it cannot be read or is not ours: a bad
    /// state file costs repeats, never the start.
    pub fn load(path: &Path) -> Positions {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Positions::default(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "state file not read: files start afresh");
                return Positions::default();
            }
        };
        match serde_json::from_slice::<Positions>(&bytes) {
            Ok(p) if p.version == VERSION => p,
            Ok(p) => {
                tracing::warn!(path = %path.display(), version = p.version, "state file of another version ignored");
                Positions::default()
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "state file not understood: files start afresh");
                Positions::default()
            }
        }
    }

    /// Writes the positions to `path` atomically (a temporary file renamed
    /// over it), so a kill mid-write leaves the previous state.
    pub fn save(&self, path: &Path) -> Result<(), PositionsError> {
        let io = |source| PositionsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(self).map_err(|e| io(std::io::Error::other(e)))?;
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_positions_load_back_and_bad_files_start_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        assert_eq!(Positions::load(&path), Positions::default());
        let p = Positions::new(vec![Saved {
            rel: "app.log".into(),
            dev: 1,
            ino: 2,
            offset: 300,
            head: 42,
            sid: SourceId(7),
            seq: 12,
        }]);
        p.save(&path).unwrap();
        assert_eq!(Positions::load(&path), p);
        std::fs::write(&path, "{not json").unwrap();
        assert_eq!(Positions::load(&path), Positions::default());
        std::fs::write(&path, r#"{"version":99,"files":[]}"#).unwrap();
        assert_eq!(Positions::load(&path), Positions::default());
    }
}
