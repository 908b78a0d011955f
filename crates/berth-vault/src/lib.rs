//! The credential vault: authenticated encryption of provider secrets at rest.
//!
//! Every secret is sealed with XChaCha20-Poly1305 under the *active* key of a
//! [`Keyring`]. The sealed form is a self-describing string
//! `bv1:<key id>:<base64(nonce || ciphertext)>`, so a row can always say which
//! key opens it; that is what makes key rotation possible without downtime:
//! add a key (it becomes active), re-seal rows lazily or with
//! `berth vault rotate-key`, and only then drop the old key.
//!
//! Callers pass *associated data* (the owning environment and connection id)
//! so a ciphertext copied onto another row fails to open instead of leaking
//! one tenant's credentials into another's calls.
#![forbid(unsafe_code)]

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

const PREFIX: &str = "bv1";
const NONCE_LEN: usize = 24;
/// The file, inside the data dir, that holds generated master keys.
pub const KEY_FILE_NAME: &str = "master.key";

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("malformed sealed value")]
    Malformed,
    #[error("no key with id {0} in the keyring; was a master key removed too early?")]
    UnknownKey(String),
    #[error("decryption failed: wrong key or tampered ciphertext")]
    Decrypt,
    #[error("invalid master key: {0}")]
    InvalidKey(String),
    #[error("key file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One 256-bit master key. Its id is derived from the key itself, so the id
/// stored with a ciphertext can never point at the wrong key.
#[derive(Clone)]
pub struct MasterKey {
    id: String,
    bytes: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({})", self.id)
    }
}

impl MasterKey {
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(bytes.as_mut());
        Self::from_bytes(bytes)
    }

    fn from_bytes(bytes: Zeroizing<[u8; 32]>) -> Self {
        let digest = Sha256::digest(bytes.as_ref());
        let id = hex::encode(&digest[..8]);
        Self { id, bytes }
    }

    /// Parses a base64 (standard or URL-safe) encoding of 32 random bytes.
    pub fn parse(text: &str) -> Result<Self, VaultError> {
        let text = text.trim();
        let mut decoded = STANDARD
            .decode(text)
            .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')))
            .map_err(|_| VaultError::InvalidKey("not base64".into()))?;
        if decoded.len() != 32 {
            let n = decoded.len();
            decoded.zeroize();
            return Err(VaultError::InvalidKey(format!(
                "expected 32 bytes after base64 decoding, got {n}"
            )));
        }
        let mut bytes = Zeroizing::new([0u8; 32]);
        bytes.copy_from_slice(&decoded);
        decoded.zeroize();
        Ok(Self::from_bytes(bytes))
    }

    pub fn encode(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.bytes.as_ref()))
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

/// An ordered set of master keys; the last one is active (used to seal), all
/// of them can open.
#[derive(Clone, Debug)]
pub struct Keyring {
    keys: Vec<MasterKey>,
}

impl Keyring {
    pub fn new(keys: Vec<MasterKey>) -> Result<Self, VaultError> {
        if keys.is_empty() {
            return Err(VaultError::InvalidKey("the keyring is empty".into()));
        }
        Ok(Self { keys })
    }

    /// Parses `BERTH_MASTER_KEY` or the key file: one or more base64 keys
    /// separated by commas or whitespace, oldest first; `#` starts a comment.
    pub fn parse_list(text: &str) -> Result<Self, VaultError> {
        let keys = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or(""))
            .flat_map(|l| l.split(|c: char| c == ',' || c.is_whitespace()))
            .filter(|s| !s.is_empty())
            .map(MasterKey::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(keys)
    }

    /// Loads the key file in `data_dir`, creating it (mode 0600) with one fresh
    /// key when it does not exist yet.
    pub fn load_or_create_file(data_dir: &Path) -> Result<(Self, bool), VaultError> {
        let path = data_dir.join(KEY_FILE_NAME);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok((Self::parse_list(&text)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let ring = Self::new(vec![MasterKey::generate()])?;
                ring.write_file(&path)?;
                Ok((ring, true))
            }
            Err(source) => Err(VaultError::Io { path, source }),
        }
    }

    /// Atomically replaces the key file (write to a 0600 temp file, fsync, rename).
    pub fn write_file(&self, path: &Path) -> Result<(), VaultError> {
        let io = |source| VaultError::Io {
            path: path.to_path_buf(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let tmp = path.with_extension("key.tmp");
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut file = opts.open(&tmp).map_err(io)?;
        let mut text = Zeroizing::new(String::from(
            "# Berth master keys, oldest first; the last one seals new secrets.\n",
        ));
        for key in &self.keys {
            text.push_str(&key.encode());
            text.push('\n');
        }
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        Ok(())
    }

    pub fn active(&self) -> &MasterKey {
        self.keys.last().expect("keyring is never empty")
    }

    pub fn keys(&self) -> &[MasterKey] {
        &self.keys
    }

    pub fn with_new_key(&self, key: MasterKey) -> Self {
        let mut keys = self.keys.clone();
        keys.push(key);
        Self { keys }
    }

    /// Keeps only the active key: call after every row was re-sealed.
    pub fn only_active(&self) -> Self {
        Self {
            keys: vec![self.active().clone()],
        }
    }

    fn get(&self, id: &str) -> Option<&MasterKey> {
        self.keys.iter().find(|k| k.id == id)
    }
}

/// Seals and opens secrets. Cheap to clone.
///
/// A vault loaded from a key file notices when the file changes (another
/// process ran `berth vault rotate-key`) and reloads it before sealing or
/// opening, so a running server never seals with a retired key nor fails on
/// a row re-sealed under a new one.
#[derive(Clone, Debug)]
pub struct Vault {
    inner: Arc<VaultInner>,
}

#[derive(Debug)]
struct VaultInner {
    ring: RwLock<Arc<Keyring>>,
    file: Option<KeyFile>,
}

#[derive(Debug)]
struct KeyFile {
    path: PathBuf,
    stamp: Mutex<Option<(SystemTime, u64)>>,
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl Vault {
    pub fn new(ring: Keyring) -> Self {
        Self {
            inner: Arc::new(VaultInner {
                ring: RwLock::new(Arc::new(ring)),
                file: None,
            }),
        }
    }

    /// A vault over the key file in `data_dir` (created on first use).
    /// Returns whether the file was created.
    pub fn from_data_dir(data_dir: &Path) -> Result<(Self, bool), VaultError> {
        let (ring, created) = Keyring::load_or_create_file(data_dir)?;
        let path = data_dir.join(KEY_FILE_NAME);
        let stamp = file_stamp(&path);
        Ok((
            Self {
                inner: Arc::new(VaultInner {
                    ring: RwLock::new(Arc::new(ring)),
                    file: Some(KeyFile {
                        path,
                        stamp: Mutex::new(stamp),
                    }),
                }),
            },
            created,
        ))
    }

    /// The key file this vault reads, if it was loaded from one.
    pub fn key_file(&self) -> Option<&Path> {
        self.inner.file.as_ref().map(|f| f.path.as_path())
    }

    fn refresh(&self) {
        let Some(file) = &self.inner.file else { return };
        let now = file_stamp(&file.path);
        let mut stamp = file.stamp.lock().unwrap_or_else(|p| p.into_inner());
        if now == *stamp {
            return;
        }
        // A half-written or damaged file keeps the keys we have.
        if let Some(ring) = std::fs::read_to_string(&file.path)
            .ok()
            .and_then(|t| Keyring::parse_list(&t).ok())
        {
            *self.inner.ring.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ring);
            *stamp = now;
        }
    }

    /// The current keyring.
    pub fn keyring(&self) -> Arc<Keyring> {
        self.refresh();
        self.inner
            .ring
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn active_key_id(&self) -> String {
        self.keyring().active().id().to_string()
    }

    /// Encrypts `plaintext`, binding it to `aad` (which is not stored).
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> String {
        let ring = self.keyring();
        let key = ring.active();
        let cipher = XChaCha20Poly1305::new(key.bytes.as_ref().into());
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ct = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
        let mut blob = Vec::with_capacity(NONCE_LEN + ct.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ct);
        format!("{PREFIX}:{}:{}", key.id, URL_SAFE_NO_PAD.encode(blob))
    }

    /// Decrypts a value produced by [`Vault::seal`] with the same `aad`.
    pub fn open(&self, sealed: &str, aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let key_id = sealed_key_id(sealed)?;
        let ring = self.keyring();
        let key = ring
            .get(key_id)
            .ok_or_else(|| VaultError::UnknownKey(key_id.to_string()))?;
        let b64 = sealed.rsplit(':').next().ok_or(VaultError::Malformed)?;
        let blob = URL_SAFE_NO_PAD
            .decode(b64)
            .map_err(|_| VaultError::Malformed)?;
        if blob.len() < NONCE_LEN + 16 {
            return Err(VaultError::Malformed);
        }
        let (nonce, ct) = blob.split_at(NONCE_LEN);
        let cipher = XChaCha20Poly1305::new(key.bytes.as_ref().into());
        cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
            .map(Zeroizing::new)
            .map_err(|_| VaultError::Decrypt)
    }

    /// Whether `sealed` was sealed under a key other than the active one.
    pub fn needs_reseal(&self, sealed: &str) -> bool {
        sealed_key_id(sealed).map_or(true, |id| id != self.active_key_id())
    }

    /// A key for MACs (cursors, OAuth state), derived from the oldest master
    /// key so that no second secret has to be managed and adding a key does
    /// not invalidate outstanding cursors.
    pub fn derive_subkey(&self, purpose: &str) -> Zeroizing<[u8; 32]> {
        let mut h = Sha256::new();
        h.update(b"berth-subkey\0");
        h.update(purpose.as_bytes());
        h.update([0]);
        h.update(self.keyring().keys()[0].bytes.as_ref());
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(&h.finalize());
        out
    }
}

/// The key id a sealed value names.
pub fn sealed_key_id(sealed: &str) -> Result<&str, VaultError> {
    let mut parts = sealed.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(PREFIX), Some(id), Some(_)) if !id.is_empty() => Ok(id),
        _ => Err(VaultError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_roundtrip_and_aad_binding() {
        let v = Vault::new(Keyring::new(vec![MasterKey::generate()]).unwrap());
        let s = v.seal(b"sk_live_secret", b"env1/conn1");
        assert!(!s.contains("sk_live_secret"));
        assert_eq!(&*v.open(&s, b"env1/conn1").unwrap(), b"sk_live_secret");
        assert!(matches!(
            v.open(&s, b"env2/conn1"),
            Err(VaultError::Decrypt)
        ));
        // two seals of the same plaintext differ (random nonce)
        assert_ne!(s, v.seal(b"sk_live_secret", b"env1/conn1"));
    }

    #[test]
    fn tampering_is_detected() {
        let v = Vault::new(Keyring::new(vec![MasterKey::generate()]).unwrap());
        let s = v.seal(b"abc", b"");
        let mut bytes = s.into_bytes();
        let last = bytes.len() - 3;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let s = String::from_utf8(bytes).unwrap();
        assert!(v.open(&s, b"").is_err());
        assert!(matches!(v.open("garbage", b""), Err(VaultError::Malformed)));
        assert!(v.open("bv1:x:", b"").is_err());
    }

    #[test]
    fn rotation_keeps_old_ciphertexts_readable() {
        let old = Vault::new(Keyring::new(vec![MasterKey::generate()]).unwrap());
        let s = old.seal(b"token", b"a");
        let rotated = Vault::new(old.keyring().with_new_key(MasterKey::generate()));
        assert!(rotated.needs_reseal(&s));
        assert_eq!(&*rotated.open(&s, b"a").unwrap(), b"token");
        let resealed = rotated.seal(b"token", b"a");
        assert!(!rotated.needs_reseal(&resealed));
        let pruned = Vault::new(rotated.keyring().only_active());
        assert_eq!(pruned.active_key_id(), rotated.active_key_id());
        assert!(matches!(
            pruned.open(&s, b"a"),
            Err(VaultError::UnknownKey(_))
        ));
        assert_eq!(&*pruned.open(&resealed, b"a").unwrap(), b"token");
    }

    #[test]
    fn key_file_is_created_private_and_reloaded() {
        let dir = std::env::temp_dir().join(format!("berth-vault-{}", rand::random::<u64>()));
        let (ring, created) = Keyring::load_or_create_file(&dir).unwrap();
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(KEY_FILE_NAME))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (again, created) = Keyring::load_or_create_file(&dir).unwrap();
        assert!(!created);
        assert_eq!(ring.active().id(), again.active().id());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn file_vault_follows_rotation_by_another_process() {
        let dir = std::env::temp_dir().join(format!("berth-vault-{}", rand::random::<u64>()));
        let (server, _) = Vault::from_data_dir(&dir).unwrap();
        let old = server.seal(b"x", b"a");
        // another process rotates: new key appended, row re-sealed
        let (cli, _) = Vault::from_data_dir(&dir).unwrap();
        let ring = cli.keyring().with_new_key(MasterKey::generate());
        std::thread::sleep(std::time::Duration::from_millis(20));
        ring.write_file(&dir.join(KEY_FILE_NAME)).unwrap();
        let cli = Vault::new(ring);
        let resealed = cli.seal(b"x", b"a");
        assert_eq!(&*server.open(&resealed, b"a").unwrap(), b"x");
        assert_eq!(&*server.open(&old, b"a").unwrap(), b"x");
        assert!(
            !server.needs_reseal(&server.seal(b"y", b"a"))
                && !cli.needs_reseal(&server.seal(b"y", b"a"))
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn parse_rejects_bad_keys() {
        assert!(MasterKey::parse("short").is_err());
        assert!(MasterKey::parse(&STANDARD.encode([1u8; 16])).is_err());
        let k = MasterKey::generate();
        assert_eq!(MasterKey::parse(&k.encode()).unwrap().id(), k.id());
        let list = format!(
            "{}, {}",
            MasterKey::generate().encode().as_str(),
            k.encode().as_str()
        );
        assert_eq!(Keyring::parse_list(&list).unwrap().active().id(), k.id());
    }
}
