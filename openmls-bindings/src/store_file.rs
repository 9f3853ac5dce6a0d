//! The encrypted state file: one file holds a client's whole store.
//!
//! Format (version 1), all integers big-endian:
//!
//! ```text
//! magic    8  "QPC-MLS\0"
//! version  1  1
//! suite    1  1 = HKDF-SHA256 + ChaCha20-Poly1305
//! salt    32  random, fresh for every write
//! nonce   12  random, fresh for every write
//! check   16  HKDF-Expand(prk, "... key check", 16): tells a wrong key from damage
//! body     *  ChaCha20-Poly1305(aead_key, nonce, aad = the 70 header bytes above)
//! tag     16
//!
//! prk      = HKDF-Extract(salt, storage_key)
//! aead_key = HKDF-Expand(prk, "quicnprotochat mls state v1 aead key", 32)
//! body     = u32 count, then per entry (sorted by key): u32 len, key, u32 len, value
//! ```
//!
//! Atomicity: the whole file is rewritten for every successful call — written
//! to `<path>.tmp`, fsynced, renamed over `<path>`, then the directory is
//! fsynced. `rename` is the commit point: a process killed at any instruction
//! leaves `<path>` holding either the state before the call or after it, and
//! a stale `.tmp` is deleted on the next open.
//!
//! One writer: `<path>.lock` holds an exclusive advisory lock (flock) while
//! any client of this process has the file open, so another process cannot
//! open it. Within one process a newer open *takes over* instead (how a node
//! restarted in-process, e.g. in a simulation, finds its state): the older
//! client can no longer write — its calls fail and are undone — so it can
//! never overwrite what the newer one saved.
//!
//! Nothing is written in cleartext: the plaintext body exists only in memory
//! and is encrypted in place before the buffer is written.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use hkdf::Hkdf;
use openmls_traits::random::OpenMlsRand;
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};
use crate::provider::Entries;

/// Length of the caller's storage key.
pub const STORAGE_KEY_LEN: usize = 32;

const MAGIC: &[u8; 8] = b"QPC-MLS\0";
const VERSION: u8 = 1;
const SUITE_HKDF_SHA256_CHACHA20POLY1305: u8 = 1;
const SALT_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const CHECK_LEN: usize = 16;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = MAGIC.len() + 2 + SALT_LEN + NONCE_LEN + CHECK_LEN;
const AEAD_KEY_INFO: &[u8] = b"quicnprotochat mls state v1 aead key";
const CHECK_INFO: &[u8] = b"quicnprotochat mls state v1 key check";

/// The process's hold on one state file: the flock, and which of the
/// process's clients may write.
struct Lock {
    // Held for its flock; released when the last client of the file is gone.
    _file: File,
    writer: Mutex<u64>,
}

impl Lock {
    fn writer(&self) -> MutexGuard<'_, u64> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Locks held by this process, by canonical lock-file path.
fn held_locks() -> MutexGuard<'static, HashMap<PathBuf, Weak<Lock>>> {
    static HELD: OnceLock<Mutex<HashMap<PathBuf, Weak<Lock>>>> = OnceLock::new();
    HELD.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// This process's lock on `lock_path`, taking the flock if no client of the
/// process holds it yet.
fn acquire(lock_path: &Path, dir: &Path) -> Result<Arc<Lock>> {
    let dir = fs::canonicalize(dir)
        .map_err(|e| io_error("cannot open the MLS state file's directory", &e))?;
    let key = dir.join(lock_path.file_name().unwrap_or_default());
    let mut held = held_locks();
    if let Some(lock) = held.get(&key).and_then(Weak::upgrade) {
        return Ok(lock);
    }
    held.retain(|_, lock| lock.strong_count() > 0);
    let lock = Arc::new(Lock {
        _file: lock_file(lock_path)?,
        writer: Mutex::new(0),
    });
    held.insert(key, Arc::downgrade(&lock));
    Ok(lock)
}

/// An open state file.
pub struct StateFile {
    path: PathBuf,
    tmp_path: PathBuf,
    dir: PathBuf,
    key: Zeroizing<[u8; STORAGE_KEY_LEN]>,
    lock: Arc<Lock>,
    /// This client's writer id; it may write while the lock names it.
    id: u64,
}

impl StateFile {
    /// Locks and opens the state file at `path`. Returns the stored entries,
    /// or `None` if there is no file yet (a new client). `check` vets the
    /// entries before this client becomes the file's writer.
    pub fn open(
        path: &Path,
        storage_key: &[u8],
        check: impl FnOnce(Option<&Entries>) -> Result<()>,
    ) -> Result<(Self, Option<Entries>)> {
        let key: [u8; STORAGE_KEY_LEN] = storage_key.try_into().map_err(|_| {
            Error::invalid_input(format!(
                "storage key must be {STORAGE_KEY_LEN} bytes, got {}",
                storage_key.len()
            ))
        })?;
        let key = Zeroizing::new(key);
        if path.as_os_str().is_empty() {
            return Err(Error::invalid_input("storage path must not be empty"));
        }
        let dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let lock = acquire(&with_suffix(path, ".lock"), &dir)?;
        let file = Self {
            path: path.to_path_buf(),
            tmp_path: with_suffix(path, ".tmp"),
            dir,
            key,
            lock,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        };
        // Read, vet and take over as one step: no older client of this
        // process writes in between.
        let mut writer = file.lock.writer();
        // A leftover from a write that never reached its rename.
        match fs::remove_file(&file.tmp_path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("cannot remove a stale temporary state file", &e)),
        }
        let entries = match fs::read(&file.path) {
            Ok(bytes) => Some(open_sealed(&file.key, Zeroizing::new(bytes))?),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(io_error("cannot read the MLS state file", &e)),
        };
        check(entries.as_ref())?;
        *writer = file.id;
        drop(writer);
        Ok((file, entries))
    }

    /// Encrypts `entries` and atomically replaces the file with them.
    pub fn save(&self, entries: &Entries, rand: &impl OpenMlsRand) -> Result<()> {
        let writer = self.lock.writer();
        if *writer != self.id {
            return Err(Error::storage(
                "the MLS state file was opened again by a newer client; this one can no longer change it",
            ));
        }
        let sealed = seal(&self.key, entries, rand)?;
        self.replace(&sealed)
    }

    fn replace(&self, bytes: &[u8]) -> Result<()> {
        let write = || -> std::io::Result<()> {
            let mut options = OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut tmp = options.open(&self.tmp_path)?;
            tmp.write_all(bytes)?;
            tmp.sync_all()?;
            drop(tmp);
            fs::rename(&self.tmp_path, &self.path)?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| {
            // Best effort: the old file is still in place.
            let _ = fs::remove_file(&self.tmp_path);
            io_error("cannot write the MLS state file", &e)
        })
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn lock_file(path: &Path) -> Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options
        .open(path)
        .map_err(|e| io_error("cannot open the MLS state lock file", &e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(Error::storage(
            "the MLS state file is already open in another client or process",
        )),
        Err(TryLockError::Error(e)) => Err(io_error("cannot lock the MLS state file", &e)),
    }
}

fn io_error(what: &str, err: &std::io::Error) -> Error {
    // io::Error's text is the OS reason ("No such file or directory"); it
    // carries no state.
    Error::storage(format!("{what}: {err}"))
}

/// The AEAD key and the key-check value for one salt.
fn derive(storage_key: &[u8; STORAGE_KEY_LEN], salt: &[u8]) -> (Key, [u8; CHECK_LEN]) {
    let hkdf = Hkdf::<Sha256>::new(Some(salt), storage_key);
    let mut key = Key::default();
    let mut check = [0u8; CHECK_LEN];
    // Both lengths are far below HKDF-SHA256's 8160-byte limit.
    hkdf.expand(AEAD_KEY_INFO, &mut key)
        .and_then(|()| hkdf.expand(CHECK_INFO, &mut check))
        .unwrap_or_else(|_| unreachable!("HKDF output length is valid"));
    (key, check)
}

fn len_u32(len: usize) -> Result<[u8; 4]> {
    u32::try_from(len)
        .map(u32::to_be_bytes)
        .map_err(|_| Error::storage("a stored value is too large for the state file"))
}

/// Serializes and encrypts `entries` into the file format above.
fn seal(
    storage_key: &[u8; STORAGE_KEY_LEN],
    entries: &Entries,
    rand: &impl OpenMlsRand,
) -> Result<Vec<u8>> {
    let no_randomness = |_| Error::storage("no randomness for the state file");
    let salt: [u8; SALT_LEN] = rand.random_array().map_err(no_randomness)?;
    let nonce: [u8; NONCE_LEN] = rand.random_array().map_err(no_randomness)?;
    let (mut aead_key, check) = derive(storage_key, &salt);

    let mut keys: Vec<&Vec<u8>> = entries.keys().collect();
    keys.sort_unstable();
    let body_len = 4 + entries
        .iter()
        .map(|(k, v)| 8 + k.len() + v.len())
        .sum::<usize>();
    // Allocated once at its final size, so the plaintext is never copied by
    // a reallocation before it is encrypted in place.
    let mut out = Vec::with_capacity(HEADER_LEN + body_len + TAG_LEN);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(SUITE_HKDF_SHA256_CHACHA20POLY1305);
    out.extend_from_slice(&salt);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&check);
    let sealed = (|| -> Result<Tag> {
        out.extend_from_slice(&len_u32(keys.len())?);
        for key in keys {
            let value = &entries[key];
            out.extend_from_slice(&len_u32(key.len())?);
            out.extend_from_slice(key);
            out.extend_from_slice(&len_u32(value.len())?);
            out.extend_from_slice(value);
        }
        let (header, body) = out.split_at_mut(HEADER_LEN);
        ChaCha20Poly1305::new(&aead_key)
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), header, body)
            .map_err(|_| Error::storage("cannot encrypt the MLS state"))
    })();
    aead_key.zeroize();
    match sealed {
        Ok(tag) => {
            out.extend_from_slice(&tag);
            Ok(out)
        }
        Err(e) => {
            out.zeroize();
            Err(e)
        }
    }
}

/// Checks, decrypts and parses a state file's bytes.
fn open_sealed(
    storage_key: &[u8; STORAGE_KEY_LEN],
    mut bytes: Zeroizing<Vec<u8>>,
) -> Result<Entries> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(Error::storage("the file is not an MLS state file"));
    }
    if bytes.len() < HEADER_LEN + TAG_LEN {
        return Err(Error::storage("the MLS state file is truncated"));
    }
    if bytes[8] != VERSION {
        return Err(Error::storage(format!(
            "the MLS state file has unsupported version {}",
            bytes[8]
        )));
    }
    if bytes[9] != SUITE_HKDF_SHA256_CHACHA20POLY1305 {
        return Err(Error::storage(
            "the MLS state file uses an unsupported cipher",
        ));
    }
    let salt_at = MAGIC.len() + 2;
    let nonce_at = salt_at + SALT_LEN;
    let check_at = nonce_at + NONCE_LEN;
    let (mut aead_key, check) = derive(storage_key, &bytes[salt_at..nonce_at]);
    if !constant_time_eq(&check, &bytes[check_at..HEADER_LEN]) {
        aead_key.zeroize();
        return Err(Error::storage(
            "wrong storage key for the MLS state file (or its header is damaged)",
        ));
    }
    let nonce = *Nonce::from_slice(&bytes[nonce_at..check_at]);
    let tag_at = bytes.len() - TAG_LEN;
    let tag = *Tag::from_slice(&bytes[tag_at..]);
    let (header, rest) = bytes.split_at_mut(HEADER_LEN);
    let body = &mut rest[..tag_at - HEADER_LEN];
    let opened =
        ChaCha20Poly1305::new(&aead_key).decrypt_in_place_detached(&nonce, header, body, &tag);
    aead_key.zeroize();
    opened.map_err(|_| Error::storage("the MLS state file is corrupted or truncated"))?;
    parse_body(body)
}

fn malformed() -> Error {
    Error::storage("the MLS state file's contents are malformed")
}

/// Reads length-prefixed fields off a decrypted body.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(malformed());
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn length(&mut self) -> Result<usize> {
        let raw: [u8; 4] = self.take(4)?.try_into().map_err(|_| malformed())?;
        usize::try_from(u32::from_be_bytes(raw)).map_err(|_| malformed())
    }
}

fn parse_body(body: &[u8]) -> Result<Entries> {
    let mut reader = Reader(body);
    let count = reader.length()?;
    // Every entry takes at least 8 bytes: bound the allocation by the input.
    let mut entries = Entries::with_capacity(count.min(body.len() / 8));
    for _ in 0..count {
        let key_len = reader.length()?;
        let key = reader.take(key_len)?.to_vec();
        let value_len = reader.length()?;
        let value = reader.take(value_len)?.to_vec();
        if entries.insert(key, value).is_some() {
            return Err(malformed());
        }
    }
    if !reader.0.is_empty() {
        return Err(malformed());
    }
    Ok(entries)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::shared_crypto;

    fn sample() -> Entries {
        let mut entries = Entries::new();
        entries.insert(b"k1".to_vec(), b"secret value".to_vec());
        entries.insert(b"k2".to_vec(), vec![]);
        entries.insert(vec![], vec![0; 1000]);
        entries
    }

    #[test]
    fn seal_and_open_round_trip() {
        let key = [7u8; 32];
        let sealed = seal(&key, &sample(), shared_crypto().unwrap()).unwrap();
        assert!(!sealed.windows(12).any(|w| w == b"secret value"));
        let opened = open_sealed(&key, Zeroizing::new(sealed)).unwrap();
        assert_eq!(opened, sample());
    }

    #[test]
    fn every_damage_is_a_storage_error() {
        let key = [7u8; 32];
        let sealed = seal(&key, &sample(), shared_crypto().unwrap()).unwrap();
        let wrong = open_sealed(&[8u8; 32], Zeroizing::new(sealed.clone())).unwrap_err();
        assert!(wrong.message().contains("wrong storage key"), "{wrong}");
        for cut in [0, 5, HEADER_LEN, sealed.len() - 1] {
            let err = open_sealed(&key, Zeroizing::new(sealed[..cut].to_vec())).unwrap_err();
            assert_eq!(err.python_class(), "StorageError");
        }
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            let err = open_sealed(&key, Zeroizing::new(bad)).unwrap_err();
            assert_eq!(err.python_class(), "StorageError", "byte {i}");
        }
    }

    #[test]
    fn malformed_bodies_are_rejected() {
        assert!(parse_body(&[0, 0, 0, 0]).unwrap().is_empty());
        for body in [
            &[][..],
            &[0, 0, 0, 1],
            &[0, 0, 0, 0, 9],
            &[0, 0, 0, 1, 0, 0, 0, 9, 1],
        ] {
            assert_eq!(parse_body(body).unwrap_err().python_class(), "StorageError");
        }
        // A duplicated key.
        let dup = [0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(parse_body(&dup).is_err());
    }
}
