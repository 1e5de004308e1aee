//! Segment files: naming, the `.dat` header block, and opening files for direct appends and
//! buffered reads.
//!
//! A shard's log is a directory of segments named by the sequence number of their first record,
//! zero-padded to 20 digits so that names sort like numbers: `00000000000000000000.dat` holds
//! the records, `.idx` their index entries. The first 4 KiB block of `.dat` is a header
//! (magic, format version, shard, base sequence, CRC-32C), so that a file moved to another
//! shard's directory or renamed is detected on open instead of served.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::buffer::BLOCK_BYTES;
use crate::error::{Result, StorageError, io_err};

/// Bytes reserved at the start of every `.dat` file for its header.
pub const SEGMENT_HEADER_BYTES: usize = BLOCK_BYTES;
/// Magic bytes at the start of every `.dat` file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"NETRDX\0\x01";
/// The on-disk format version this build writes and reads (2: batch framing in record headers,
/// sparse `.idx` written when a segment is sealed, the shard `MANIFEST`).
pub const FORMAT_VERSION: u32 = 2;
/// The largest segment: record counts within a segment must fit the u32 `committed` stamp
/// (at least 32 bytes a record), and its sparse index stays a few thousand entries.
pub const SEGMENT_BYTES_MAX: u64 = 16 << 30;
/// `.idx` entries a segment gets at most, besides its first and last record (see
/// [`index_stride_bytes`]).
pub const INDEX_ENTRIES_TARGET: u64 = 4096;
/// The smallest distance between two sparse index entries.
pub const INDEX_STRIDE_BYTES_MIN: u64 = 64 << 10;

const _: () =
    assert!(SEGMENT_BYTES_MAX / crate::record::RECORD_HEADER_BYTES as u64 <= u32::MAX as u64);

/// Bytes of `.dat` between two sparse index entries of a segment of `segment_bytes`: at least
/// 64 KiB (a reader seeking into a segment reads at most about that much before its record),
/// and so that a segment has at most about [`INDEX_ENTRIES_TARGET`] entries.
pub const fn index_stride_bytes(segment_bytes: u64) -> u64 {
    let even = segment_bytes.div_ceil(INDEX_ENTRIES_TARGET);
    if even > INDEX_STRIDE_BYTES_MIN {
        even
    } else {
        INDEX_STRIDE_BYTES_MIN
    }
}

/// The decoded header block of a `.dat` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Shard that wrote the segment.
    pub shard: u16,
    /// Sequence number of the segment's first record.
    pub base_seq: u64,
}

impl SegmentHeader {
    /// Writes the header into the first [`SEGMENT_HEADER_BYTES`] of `dst` (the rest zero).
    pub fn encode(&self, dst: &mut [u8]) {
        let dst = &mut dst[..SEGMENT_HEADER_BYTES];
        dst.fill(0);
        dst[0..8].copy_from_slice(&SEGMENT_MAGIC);
        dst[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        dst[12..14].copy_from_slice(&self.shard.to_le_bytes());
        dst[16..24].copy_from_slice(&self.base_seq.to_le_bytes());
        let crc = crc32c::crc32c(&dst[0..24]);
        dst[24..28].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes and verifies a header block, naming what is wrong.
    pub fn decode(src: &[u8]) -> std::result::Result<SegmentHeader, String> {
        if src.len() < SEGMENT_HEADER_BYTES {
            return Err(format!(
                "header block is {} bytes, expected {SEGMENT_HEADER_BYTES}",
                src.len()
            ));
        }
        if src[0..8] != SEGMENT_MAGIC {
            return Err("bad magic: not a RedEX segment".into());
        }
        let crc = u32::from_le_bytes(src[24..28].try_into().expect("4 bytes"));
        if crc != crc32c::crc32c(&src[0..24]) {
            return Err("header checksum mismatch".into());
        }
        let version = u32::from_le_bytes(src[8..12].try_into().expect("4 bytes"));
        if version != FORMAT_VERSION {
            return Err(format!(
                "format version {version}, this build reads {FORMAT_VERSION}"
            ));
        }
        Ok(SegmentHeader {
            shard: u16::from_le_bytes(src[12..14].try_into().expect("2 bytes")),
            base_seq: u64::from_le_bytes(src[16..24].try_into().expect("8 bytes")),
        })
    }
}

/// `.dat` path of the segment starting at `base` in `dir`.
pub fn dat_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.dat"))
}

/// `.idx` path of the segment starting at `base` in `dir`.
pub fn idx_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.idx"))
}

/// Parses a segment file name (`<20 digits>.dat`) into its base sequence number. Names that
/// are not exactly 20 decimal digits are not segments (no `"00"` read as `0`).
pub fn parse_dat_name(name: &str) -> Option<u64> {
    parse_name(name, ".dat")
}

/// Parses `<20 digits><ext>` into the base sequence number.
pub fn parse_name(name: &str, ext: &str) -> Option<u64> {
    let digits = name.strip_suffix(ext)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What a shard directory holds, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Bases of `.dat` files, ascending.
    pub dats: Vec<u64>,
    /// Bases of `.idx` files, ascending.
    pub idxs: Vec<u64>,
    /// Files the log does not know (left alone, reported by `verify`).
    pub strays: Vec<PathBuf>,
}

impl Inventory {
    /// `.idx` files whose `.dat` is missing.
    pub fn orphan_indexes(&self) -> Vec<u64> {
        self.idxs
            .iter()
            .copied()
            .filter(|b| self.dats.binary_search(b).is_err())
            .collect()
    }
}

/// Names in a shard directory that are the log's own besides segments.
const KNOWN_NAMES: [&str; 3] = [
    crate::manifest::MANIFEST_FILE_NAME,
    crate::lock::LOCK_FILE_NAME,
    QUARANTINE_DIR_NAME,
];

/// Where `net-admin repair --accept-data-loss` moves damaged files (never deleted).
pub const QUARANTINE_DIR_NAME: &str = "quarantine";

/// Lists a shard directory.
pub fn inventory(dir: &Path) -> Result<Inventory> {
    let mut inv = Inventory::default();
    for entry in std::fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            inv.strays.push(entry.path());
            continue;
        };
        if let Some(base) = parse_dat_name(name) {
            inv.dats.push(base);
        } else if let Some(base) = parse_name(name, ".idx") {
            inv.idxs.push(base);
        } else if !KNOWN_NAMES.contains(&name) {
            inv.strays.push(entry.path());
        }
    }
    inv.dats.sort_unstable();
    inv.idxs.sort_unstable();
    inv.strays.sort();
    Ok(inv)
}

/// Lists the base sequence numbers of the segments in `dir`, ascending.
pub fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    Ok(inventory(dir)?.dats)
}

/// Opens `path` for aligned appends, with `O_DIRECT` where the file system supports it
/// (tmpfs does not: there the same aligned writes go through the page cache).
pub fn open_append(path: &Path) -> Result<(File, bool)> {
    let direct = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_DIRECT)
        .open(path);
    match direct {
        Ok(f) => Ok((f, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(io_err("open", path))?;
            Ok((f, false))
        }
        Err(e) => Err(StorageError::Io {
            op: "open",
            path: path.into(),
            source: e,
        }),
    }
}

/// Opens `path` for reads that bypass the page cache (`O_DIRECT`) where the file system
/// supports it: a consumer catching up reads cold segments at the device's speed (here about
/// 4 times a buffered read's), and its reads do not evict the page cache of others. Callers
/// read whole aligned blocks.
pub fn open_direct_read(path: &Path) -> Result<File> {
    let direct = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path);
    match direct {
        Ok(f) => Ok(f),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => open_read(path),
        Err(e) => Err(StorageError::Io {
            op: "open",
            path: path.into(),
            source: e,
        }),
    }
}

/// Opens `path` for buffered reads.
pub fn open_read(path: &Path) -> Result<File> {
    File::open(path).map_err(io_err("open", path))
}

/// A segment file's name as a NUL-terminated string on the stack, `<20 digits>.<ext>\0`, so
/// that rolling a segment allocates nothing.
pub(crate) fn c_name(base: u64, ext: &[u8; 3]) -> [u8; 25] {
    let mut name = [0u8; 25];
    let mut v = base;
    for digit in name[..20].iter_mut().rev() {
        *digit = b'0' + u8::try_from(v % 10).expect("a decimal digit");
        v /= 10;
    }
    name[20] = b'.';
    name[21..24].copy_from_slice(ext);
    name
}

/// How [`open_at`] opens a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenMode {
    /// Read-write, created; an existing file is an error. `O_DIRECT` where supported.
    Create,
    /// Read-write, created if missing, `O_DIRECT` where supported.
    Append,
    /// Read-only, `O_DIRECT` where supported (whole aligned blocks only).
    DirectRead,
}

/// Opens a segment file relative to the directory `dir`, as `mode` says; without `O_DIRECT`
/// support (tmpfs) the same aligned I/O goes through the page cache.
pub(crate) fn open_at(dir: &File, name: &[u8; 25], mode: OpenMode) -> std::io::Result<File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let (base_flags, direct) = match mode {
        OpenMode::Create => (libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, true),
        OpenMode::Append => (libc::O_RDWR | libc::O_CREAT, true),
        OpenMode::DirectRead => (libc::O_RDONLY, true),
    };
    let open = |flags: i32| {
        // SAFETY: `name` is NUL-terminated (c_name); openat reads it and returns a new fd or -1.
        unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr().cast(),
                flags | libc::O_CLOEXEC,
                0o644,
            )
        }
    };
    let mut fd = open(base_flags | if direct { libc::O_DIRECT } else { 0 });
    if fd < 0 && direct && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        fd = open(base_flags);
    }
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// fsyncs a directory so that file creations, renames and removals in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_exact_twenty_digit_numbers() {
        assert_eq!(parse_dat_name("00000000000000000042.dat"), Some(42));
        assert_eq!(parse_dat_name("00.dat"), None);
        assert_eq!(parse_dat_name("0000000000000000004x.dat"), None);
        assert_eq!(parse_dat_name("00000000000000000042.idx"), None);
        assert_eq!(
            dat_path(Path::new("/d"), 7),
            PathBuf::from("/d/00000000000000000007.dat")
        );
    }

    #[test]
    fn stack_names_match_paths() {
        let n = c_name(42, b"dat");
        assert_eq!(&n[..24], b"00000000000000000042.dat");
        assert_eq!(n[24], 0);
        assert_eq!(&c_name(u64::MAX, b"idx")[..20], b"18446744073709551615");
    }

    #[test]
    fn header_round_trip_and_damage() {
        let mut b = vec![0u8; SEGMENT_HEADER_BYTES];
        let h = SegmentHeader {
            shard: 3,
            base_seq: 99,
        };
        h.encode(&mut b);
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        b[17] ^= 1;
        assert!(SegmentHeader::decode(&b).unwrap_err().contains("checksum"));
        b[0] = b'X';
        assert!(SegmentHeader::decode(&b).unwrap_err().contains("magic"));
    }
}
