//! A sink's checkpoint: per shard, the position up to which its backend confirmed every event,
//! with the backend and destination it belongs to.
//!
//! The file (`<dir>/<name>.sink`) is two lines: a JSON document, then `crc32c=<hex>` of that
//! line, written atomically (temp file, fsync, rename, directory fsync), so a crash leaves the
//! old checkpoint or the new one, never a torn one. A checkpoint is a lower bound: at start the
//! sink also asks the backend what it already holds and resumes after the later of the two,
//! so a crash between a confirmation and the next checkpoint resends nothing.
//!
//! A checkpoint kept for another backend or destination is refused with the way to reset,
//! never silently reused (its positions would mean nothing there).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::AdapterError;

const FORMAT: u32 = 1;

/// The positions a sink has delivered, and where to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Format version of the file.
    pub format: u32,
    /// The backend (`"redis"`, `"jetstream"`).
    pub backend: String,
    /// The destination as the backend names it.
    pub destination: String,
    /// Per shard, one past the last sequence number the backend confirmed.
    pub positions: BTreeMap<u16, u64>,
}

impl Checkpoint {
    /// An empty checkpoint for `backend` and `destination`.
    pub fn new(backend: &str, destination: &str) -> Checkpoint {
        Checkpoint {
            format: FORMAT,
            backend: backend.to_owned(),
            destination: destination.to_owned(),
            positions: BTreeMap::new(),
        }
    }

    /// The file of the sink `name` under `dir`.
    pub fn path(dir: &Path, name: &str) -> PathBuf {
        dir.join(format!("{name}.sink"))
    }

    /// Loads the checkpoint at `path`: `Ok(None)` if there is none. A file that cannot be
    /// parsed or fails its checksum is an error naming the file (the operator decides: the
    /// backend's own position is still used at start if the file is removed).
    pub fn load(path: &Path) -> Result<Option<Checkpoint>, AdapterError> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(AdapterError::fatal(
                    "sink",
                    format!("cannot read checkpoint {}: {e}", path.display()),
                ));
            }
        };
        let bad = |what: String| {
            Err(AdapterError::fatal(
                "sink",
                format!(
                    "checkpoint {} is damaged ({what}); remove it to resume from what the \
                     backend reports it holds",
                    path.display()
                ),
            ))
        };
        let mut lines = text.lines();
        let (Some(body), Some(sum), None) = (lines.next(), lines.next(), lines.next()) else {
            return bad("expected two lines".into());
        };
        let Some(hex) = sum.strip_prefix("crc32c=") else {
            return bad("no checksum line".into());
        };
        let Ok(want) = u32::from_str_radix(hex, 16) else {
            return bad(format!("checksum `{hex}` is not hex"));
        };
        let got = crc32c::crc32c(body.as_bytes());
        if got != want {
            return bad(format!("checksum {got:08x}, recorded {want:08x}"));
        }
        let cp: Checkpoint = match serde_json::from_str(body) {
            Ok(cp) => cp,
            Err(e) => return bad(e.to_string()),
        };
        if cp.format != FORMAT {
            return bad(format!("format {}, this build reads {FORMAT}", cp.format));
        }
        Ok(Some(cp))
    }

    /// Checks this checkpoint belongs to `backend` and `destination`, saying how to reset.
    pub fn check(&self, path: &Path, backend: &str, destination: &str) -> Result<(), AdapterError> {
        if self.backend == backend && self.destination == destination {
            return Ok(());
        }
        Err(AdapterError::fatal(
            "sink",
            format!(
                "checkpoint {} belongs to {} at `{}`, not {backend} at `{destination}`: \
                 positions do not carry over; give this sink another name, or remove the file \
                 to start from what the new destination holds",
                path.display(),
                self.backend,
                self.destination
            ),
        ))
    }

    /// Writes the checkpoint to `path` atomically (see the module docs).
    pub fn store(&self, path: &Path) -> Result<(), AdapterError> {
        let err = |what: &str, e: std::io::Error| {
            AdapterError::fatal(
                "sink",
                format!("cannot {what} checkpoint {}: {e}", path.display()),
            )
        };
        let body = serde_json::to_string(self).expect("a checkpoint serialises");
        let text = format!("{body}\ncrc32c={:08x}\n", crc32c::crc32c(body.as_bytes()));
        let tmp = path.with_extension("sink.tmp");
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .map_err(|e| err("create", e))?;
            f.write_all(text.as_bytes()).map_err(|e| err("write", e))?;
            f.sync_all().map_err(|e| err("fsync", e))?;
        }
        fs::rename(&tmp, path).map_err(|e| err("rename", e))?;
        if let Some(dir) = path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| err("fsync the directory of", e))?;
        }
        Ok(())
    }
}
