//! The shard's `MANIFEST`: what the log knows about itself that its segment files cannot say.
//!
//! Segment files alone cannot tell a removed segment from one that never existed: delete the
//! newest `.dat` and the log would quietly continue from the one before it, handing out the
//! lost events' sequence numbers again; delete the oldest and it looks like retention. So each
//! shard keeps a small manifest naming
//! - `first_seq`: the first sequence number it still stores (retention moves it, durably,
//!   before it unlinks anything);
//! - `active_base`: the base of the newest segment (a roll moves it once the new segment's
//!   name is durable);
//! - `clean_end`: one past the last record acknowledged when the log was last closed cleanly,
//!   so that a log cut short after a clean shutdown is detected (a lower bound afterwards);
//! - `gaps`: ranges of sequence numbers an operator accepted as lost
//!   (`net-admin repair --accept-data-loss`), which readers skip and report.
//!
//! The file is two 4 KiB slots, written alternately with a growing `generation` and a CRC-32C
//! over the slot, so an update is one write and one `fdatasync` of one block and a torn update
//! leaves the other slot intact: a reader takes the valid slot with the higher generation
//! (the superblock technique of most file systems). The codec does no I/O; [`read`] and
//! [`write_sync`] are the blocking helpers of open, close and repair, and the log writes slots
//! through its ring otherwise.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Result, StorageError, io_err};

/// Name of the manifest inside a shard's directory.
pub const MANIFEST_FILE_NAME: &str = "MANIFEST";
/// Bytes of one slot (one disk block).
pub const SLOT_BYTES: usize = 4096;
/// Slots in the file.
pub const SLOTS: usize = 2;
/// Most accepted gaps one manifest records.
pub const GAPS_MAX: usize = 128;

const MAGIC: [u8; 8] = *b"NETMANI\x01";
const VERSION: u32 = 1;
const NO_CLEAN_END: u64 = u64::MAX;
const GAPS_AT: usize = 56;
const CRC_AT: usize = SLOT_BYTES - 4;
const _: () = assert!(GAPS_AT + GAPS_MAX * 16 <= CRC_AT);

/// A range of sequence numbers, `from..to`, accepted as lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// First lost sequence number.
    pub from: u64,
    /// One past the last lost one.
    pub to: u64,
}

/// The decoded manifest of one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The shard.
    pub shard: u16,
    /// Grows by one with every write; picks the newer slot.
    pub generation: u64,
    /// First sequence number still stored.
    pub first_seq: u64,
    /// Base of the newest segment.
    pub active_base: u64,
    /// One past the last record acknowledged at the last clean close.
    pub clean_end: Option<u64>,
    /// Accepted losses, ascending and disjoint.
    pub gaps: Vec<Gap>,
}

impl Manifest {
    /// The manifest of a new, empty log whose first record gets `base`.
    pub fn new(shard: u16, base: u64) -> Manifest {
        Manifest {
            shard,
            generation: 0,
            first_seq: base,
            active_base: base,
            clean_end: None,
            gaps: Vec::new(),
        }
    }

    /// The gap holding `seq`, if any.
    pub fn gap_at(&self, seq: u64) -> Option<Gap> {
        self.gaps
            .iter()
            .copied()
            .find(|g| g.from <= seq && seq < g.to)
    }

    /// Whether the range `from..to` is exactly an accepted gap (segments may be apart by it).
    pub fn accepts_gap(&self, from: u64, to: u64) -> bool {
        self.gaps.iter().any(|g| g.from == from && g.to == to)
    }

    /// Records an accepted loss of `from..to`, merging with neighbours; fails past
    /// [`GAPS_MAX`].
    pub fn add_gap(&mut self, from: u64, to: u64) -> std::result::Result<(), String> {
        if from >= to {
            return Ok(());
        }
        self.gaps.push(Gap { from, to });
        self.gaps.sort_by_key(|g| g.from);
        let mut merged: Vec<Gap> = Vec::with_capacity(self.gaps.len());
        for g in self.gaps.drain(..) {
            match merged.last_mut() {
                Some(last) if g.from <= last.to => last.to = last.to.max(g.to),
                _ => merged.push(g),
            }
        }
        self.gaps = merged;
        if self.gaps.len() > GAPS_MAX {
            return Err(format!("more than {GAPS_MAX} accepted gaps"));
        }
        Ok(())
    }

    /// Forgets gaps wholly below `first_seq` (retention removed what was around them).
    pub fn prune_gaps(&mut self) {
        let first = self.first_seq;
        self.gaps.retain(|g| g.to > first);
    }

    /// Encodes the manifest into one slot.
    ///
    /// # Panics
    /// If `dst` is not [`SLOT_BYTES`] long or there are more than [`GAPS_MAX`] gaps.
    pub fn encode(&self, dst: &mut [u8]) {
        assert_eq!(dst.len(), SLOT_BYTES, "one manifest slot");
        assert!(self.gaps.len() <= GAPS_MAX, "too many gaps");
        dst.fill(0);
        dst[0..8].copy_from_slice(&MAGIC);
        dst[8..12].copy_from_slice(&VERSION.to_le_bytes());
        dst[12..14].copy_from_slice(&self.shard.to_le_bytes());
        dst[16..24].copy_from_slice(&self.generation.to_le_bytes());
        dst[24..32].copy_from_slice(&self.first_seq.to_le_bytes());
        dst[32..40].copy_from_slice(&self.active_base.to_le_bytes());
        let clean = self.clean_end.unwrap_or(NO_CLEAN_END);
        dst[40..48].copy_from_slice(&clean.to_le_bytes());
        let n = u32::try_from(self.gaps.len()).expect("at most GAPS_MAX");
        dst[48..52].copy_from_slice(&n.to_le_bytes());
        for (g, at) in self.gaps.iter().zip((GAPS_AT..).step_by(16)) {
            dst[at..at + 8].copy_from_slice(&g.from.to_le_bytes());
            dst[at + 8..at + 16].copy_from_slice(&g.to.to_le_bytes());
        }
        let crc = crc32c::crc32c(&dst[..CRC_AT]);
        dst[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes one slot, naming what is wrong.
    pub fn decode(src: &[u8]) -> std::result::Result<Manifest, String> {
        if src.len() < SLOT_BYTES {
            return Err(format!(
                "slot is {} bytes, expected {SLOT_BYTES}",
                src.len()
            ));
        }
        if src[0..8] != MAGIC {
            return Err("bad magic: not a manifest slot".into());
        }
        if u32_at(src, CRC_AT) != crc32c::crc32c(&src[..CRC_AT]) {
            return Err("checksum mismatch".into());
        }
        let version = u32_at(src, 8);
        if version != VERSION {
            return Err(format!("version {version}, this build reads {VERSION}"));
        }
        let n = usize::try_from(u32_at(src, 48)).unwrap_or(usize::MAX);
        if n > GAPS_MAX {
            return Err(format!("{n} gaps, at most {GAPS_MAX}"));
        }
        let gaps = (0..n)
            .map(|i| Gap {
                from: u64_at(src, GAPS_AT + 16 * i),
                to: u64_at(src, GAPS_AT + 16 * i + 8),
            })
            .collect();
        let clean = u64_at(src, 40);
        Ok(Manifest {
            shard: u16::from_le_bytes([src[12], src[13]]),
            generation: u64_at(src, 16),
            first_seq: u64_at(src, 24),
            active_base: u64_at(src, 32),
            clean_end: (clean != NO_CLEAN_END).then_some(clean),
            gaps,
        })
    }

    /// Byte offset of the slot this manifest's generation is written to.
    pub fn slot_offset(&self) -> u64 {
        (self.generation % SLOTS as u64) * SLOT_BYTES as u64
    }
}

fn u32_at(src: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(src[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(src: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(src[at..at + 8].try_into().expect("8 bytes"))
}

/// The manifest's path in a shard directory.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(MANIFEST_FILE_NAME)
}

/// Reads the manifest of the shard directory `dir`: `None` if there is no file; the newer
/// valid slot otherwise, or an error naming the file when neither slot is valid or the slot
/// names another shard.
pub fn read(dir: &Path, shard: u16) -> Result<Option<Manifest>> {
    let path = path(dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", &path)(e)),
    };
    let slots: Vec<_> = bytes
        .chunks(SLOT_BYTES)
        .take(SLOTS)
        .map(Manifest::decode)
        .collect();
    let best = slots
        .iter()
        .filter_map(|s| s.as_ref().ok())
        .max_by_key(|m| m.generation);
    let Some(m) = best else {
        let why: Vec<String> = slots.into_iter().filter_map(|s| s.err()).collect();
        let what = if why.is_empty() {
            "the file is empty".to_string()
        } else {
            format!("no valid slot ({})", why.join("; "))
        };
        return Err(StorageError::Corrupt {
            path,
            offset: 0,
            what,
        });
    };
    if m.shard != shard {
        return Err(StorageError::Corrupt {
            path,
            offset: m.slot_offset(),
            what: format!("manifest of shard {}, expected shard {shard}", m.shard),
        });
    }
    Ok(Some(m.clone()))
}

/// Opens (creating) the manifest file of `dir` for slot writes. Both slots' space is
/// reserved, so that an update never needs a free block (it must work on a full disk).
pub fn open(dir: &Path) -> Result<File> {
    let path = path(dir);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err("open", &path))?;
    crate::roll::reserve(&file, (SLOTS * SLOT_BYTES) as u64).map_err(io_err("reserve", &path))?;
    Ok(file)
}

/// Writes `m` into its slot of `file` and makes it durable (open, close and repair; the log's
/// own updates go through its ring).
pub fn write_sync(dir: &Path, file: &File, m: &Manifest) -> Result<()> {
    let mut slot = vec![0u8; SLOT_BYTES];
    m.encode(&mut slot);
    let path = path(dir);
    file.write_all_at(&slot, m.slot_offset())
        .map_err(io_err("write", &path))?;
    file.sync_data().map_err(io_err("fdatasync", &path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let mut m = Manifest::new(3, 100);
        m.generation = 7;
        m.active_base = 900;
        m.clean_end = Some(1234);
        m.add_gap(300, 400).unwrap();
        m
    }

    #[test]
    fn round_trip_and_every_bit_flip_is_refused() {
        let m = sample();
        let mut slot = vec![0u8; SLOT_BYTES];
        m.encode(&mut slot);
        assert_eq!(Manifest::decode(&slot), Ok(m));
        for at in [0, 9, 13, 17, 25, 33, 41, 49, 57, 4000, CRC_AT + 1] {
            let mut bad = slot.clone();
            bad[at] ^= 0x04;
            assert!(Manifest::decode(&bad).is_err(), "flip at {at}");
        }
    }

    #[test]
    fn the_newer_valid_slot_wins_and_a_torn_one_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let file = open(dir.path()).unwrap();
        let mut m = sample();
        write_sync(dir.path(), &file, &m).unwrap();
        m.generation += 1;
        m.first_seq = 200;
        write_sync(dir.path(), &file, &m).unwrap();
        assert_eq!(read(dir.path(), 3).unwrap().unwrap().first_seq, 200);
        // Tear the newer slot: the older one is read.
        file.write_all_at(&[0xAB; 100], m.slot_offset() + 30)
            .unwrap();
        assert_eq!(read(dir.path(), 3).unwrap().unwrap().first_seq, 100);
        assert!(read(dir.path(), 4).is_err(), "another shard's manifest");
        file.write_all_at(&[0xAB; 100], (m.generation - 1) % 2 * 4096 + 30)
            .unwrap();
        let err = read(dir.path(), 3).unwrap_err().to_string();
        assert!(
            err.contains("MANIFEST") && err.contains("no valid slot"),
            "{err}"
        );
    }

    #[test]
    fn gaps_merge_and_prune() {
        let mut m = Manifest::new(0, 0);
        m.add_gap(10, 20).unwrap();
        m.add_gap(30, 40).unwrap();
        m.add_gap(15, 30).unwrap();
        assert_eq!(m.gaps, vec![Gap { from: 10, to: 40 }]);
        assert_eq!(m.gap_at(25), Some(Gap { from: 10, to: 40 }));
        assert_eq!(m.gap_at(40), None);
        m.first_seq = 40;
        m.prune_gaps();
        assert!(m.gaps.is_empty());
        for i in 0..GAPS_MAX as u64 {
            m.add_gap(100 + 3 * i, 101 + 3 * i).unwrap();
        }
        assert!(m.add_gap(10_000, 10_001).is_err());
    }
}
