//! A node's identity: a node id (stable across key rotation) and a static X25519 key pair,
//! kept in a file only its owner can read; and the mesh's pre-shared key.
//!
//! The identity file is text:
//!
//! ```text
//! # net node identity: the secret key below authenticates this node; keep the file 0600
//! node_id = 1f2e3d4c5b6a7988
//! secret = <64 hex digits>
//! ```
//!
//! It is created with mode 0600 (write to a temporary file, fsync, rename, fsync the
//! directory), and loading refuses a file that its group or others can read or write, naming
//! the file and its mode, as ssh does with private keys. A PSK file holds 64 hex digits and is
//! held to the same rule, as is a token signing key file (`token::SigningKey`), which shares
//! these helpers.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};
use snow::params::DHChoice;
use snow::resolvers::{CryptoResolver, DefaultResolver};

use crate::codec::KEY_LEN;

/// A node id: names a node across restarts and key rotations.
pub type NodeId = u64;

/// What went wrong with an identity, PSK or token signing key file; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: readable or writable by group or others (mode {mode:o}); chmod 600 it")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{path}: {what}")]
    Format { path: PathBuf, what: String },
}

/// Loads the private file at `path` with `load`, or, when there is none, makes a value with
/// `generate` and saves it there with `save` (identities and signing keys).
pub(crate) fn load_or_generate_with<T>(
    path: &Path,
    load: impl FnOnce(&Path) -> Result<T, IdentityError>,
    generate: impl FnOnce() -> T,
    save: impl FnOnce(&T, &Path) -> Result<(), IdentityError>,
) -> Result<T, IdentityError> {
    match fs::symlink_metadata(path) {
        Ok(_) => load(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let value = generate();
            save(&value, path)?;
            Ok(value)
        }
        Err(source) => Err(IdentityError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// A node's id and static key pair.
#[derive(Clone)]
pub struct Identity {
    node_id: NodeId,
    secret: [u8; KEY_LEN],
    public: [u8; KEY_LEN],
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("Identity")
            .field("node_id", &format_args!("{:016x}", self.node_id))
            .field("public", &hex(&self.public))
            .finish_non_exhaustive()
    }
}

/// The X25519 public key of `secret`.
pub fn public_key_of(secret: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    let mut dh = DefaultResolver
        .resolve_dh(&DHChoice::Curve25519)
        .expect("snow's default resolver has X25519");
    dh.set(secret);
    let mut public = [0u8; KEY_LEN];
    public.copy_from_slice(dh.pubkey());
    public
}

/// `N` bytes from the system's random source.
pub(crate) fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .expect("the system's random source");
    b
}

impl Identity {
    /// A fresh identity: a random non-zero node id and a new key pair.
    pub fn generate() -> Identity {
        let node_id = loop {
            let id = u64::from_le_bytes(random::<8>());
            if id != 0 {
                break id;
            }
        };
        Identity::from_secret(node_id, random::<KEY_LEN>())
    }

    /// The identity with this node id and secret key.
    pub fn from_secret(node_id: NodeId, secret: [u8; KEY_LEN]) -> Identity {
        Identity {
            node_id,
            public: public_key_of(&secret),
            secret,
        }
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn public_key(&self) -> [u8; KEY_LEN] {
        self.public
    }

    pub(crate) fn secret(&self) -> &[u8; KEY_LEN] {
        &self.secret
    }

    /// Loads the identity at `path`, or generates one and saves it there if the file does not
    /// exist.
    pub fn load_or_generate(path: &Path) -> Result<Identity, IdentityError> {
        load_or_generate_with(path, Identity::load, Identity::generate, Identity::save)
    }

    /// Loads the identity at `path`.
    pub fn load(path: &Path) -> Result<Identity, IdentityError> {
        let text = read_private(path)?;
        let bad = |what: &str| IdentityError::Format {
            path: path.to_owned(),
            what: what.to_owned(),
        };
        let (mut node_id, mut secret) = (None, None);
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| bad("a line is not `key = value`"))?;
            match k.trim() {
                "node_id" => {
                    let id = u64::from_str_radix(v.trim(), 16)
                        .map_err(|_| bad("node_id is not 16 hex digits"))?;
                    if id == 0 {
                        return Err(bad("node_id is zero"));
                    }
                    node_id = Some(id);
                }
                "secret" => {
                    secret = Some(
                        unhex::<KEY_LEN>(v.trim())
                            .ok_or_else(|| bad("secret is not 64 hex digits"))?,
                    );
                }
                other => return Err(bad(&format!("unknown key `{other}`"))),
            }
        }
        let node_id = node_id.ok_or_else(|| bad("node_id is missing"))?;
        let secret = secret.ok_or_else(|| bad("secret is missing"))?;
        Ok(Identity::from_secret(node_id, secret))
    }

    /// Writes the identity to `path` with mode 0600, atomically.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        let text = format!(
            "# net node identity: the secret key below authenticates this node; keep the file 0600\n\
             node_id = {:016x}\nsecret = {}\n",
            self.node_id,
            hex(&self.secret)
        );
        write_private(path, text.as_bytes())
    }
}

/// The mesh's pre-shared key (every node of a mesh holds it).
#[derive(Clone)]
pub struct Psk(pub(crate) [u8; 32]);

impl std::fmt::Debug for Psk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Psk(..)")
    }
}

impl Psk {
    pub fn new(bytes: [u8; 32]) -> Psk {
        Psk(bytes)
    }

    /// A PSK from 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Psk> {
        unhex::<32>(s.trim()).map(Psk)
    }

    /// A fresh random PSK.
    pub fn generate() -> Psk {
        Psk(random::<32>())
    }

    /// Loads a PSK file (64 hex digits, mode 0600).
    pub fn load(path: &Path) -> Result<Psk, IdentityError> {
        let text = read_private(path)?;
        Psk::from_hex(&text).ok_or_else(|| IdentityError::Format {
            path: path.to_owned(),
            what: "not 64 hex digits".to_owned(),
        })
    }

    /// Writes the PSK to `path` with mode 0600, atomically.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        write_private(path, format!("{}\n", hex(&self.0)).as_bytes())
    }

    /// The key as hex (for writing configs in tests and tools).
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

/// The text of `path`, refused (naming the file and its mode) if its group or others can read
/// or write it.
pub(crate) fn read_private(path: &Path) -> Result<String, IdentityError> {
    let io = |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = fs::metadata(path).map_err(io)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    fs::read_to_string(path).map_err(io)
}

/// Writes `bytes` to `path` with mode 0600, atomically: a temporary file, fsync, rename, fsync
/// of the directory.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    let io = |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| {
        io(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a file path",
        ))
    })?;
    let mut tmp_name = name.to_owned();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    fs::rename(&tmp, path).map_err(io)?;
    fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}

/// Lower-case hex of `b`.
pub fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(char::from(DIGITS[usize::from(x >> 4)]));
        s.push(char::from(DIGITS[usize::from(x & 15)]));
    }
    s
}

/// Exactly `N` bytes from `2N` hex digits.
pub fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (digit(s[2 * i])? << 4) | digit(s[2 * i + 1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "net-identity-{}-{}",
            std::process::id(),
            u64::from_le_bytes(random::<8>())
        ));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn generated_identity_is_saved_0600_and_loads_back() {
        let d = tmpdir();
        let p = d.join("node.key");
        let a = Identity::load_or_generate(&p).unwrap();
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = Identity::load_or_generate(&p).unwrap();
        assert_eq!(a.node_id(), b.node_id());
        assert_eq!(a.public_key(), b.public_key());
        assert_eq!(a.secret(), b.secret());
        assert!(!format!("{a:?}").contains(&hex(a.secret())));
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_readable_key_file_is_refused_by_name() {
        let d = tmpdir();
        let p = d.join("node.key");
        Identity::generate().save(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let e = Identity::load(&p).unwrap_err().to_string();
        assert!(e.contains("node.key") && e.contains("644"), "{e}");
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn damaged_files_name_what_is_wrong() {
        let d = tmpdir();
        let p = d.join("node.key");
        for (text, want) in [
            ("node_id = 12\n", "secret is missing"),
            ("secret = 00\nnode_id = 1\n", "secret is not 64 hex digits"),
            ("node_id = zz\n", "node_id is not 16 hex digits"),
            ("node_id = 0\n", "node_id is zero"),
            ("colour = blue\n", "unknown key `colour`"),
        ] {
            write_private(&p, text.as_bytes()).unwrap();
            let e = Identity::load(&p).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn psk_round_trips_and_hex_is_strict() {
        let d = tmpdir();
        let p = d.join("mesh.psk");
        let k = Psk::generate();
        k.save(&p).unwrap();
        assert_eq!(Psk::load(&p).unwrap().0, k.0);
        assert!(Psk::from_hex("abc").is_none());
        assert!(unhex::<1>("g0").is_none());
        assert_eq!(unhex::<2>("A0ff"), Some([0xa0, 0xff]));
        fs::remove_dir_all(d).unwrap();
    }
}
