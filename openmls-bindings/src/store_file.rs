//! The encrypted state file: one file holds a client's whole store, as a
//! base image followed by a log of the calls made since.
//!
//! Format (version 3), all integers big-endian:
//!
//! ```text
//! magic     8  "QPC-MLS\0"
//! version   1  3
//! suite     1  1 = HKDF-SHA256 + ChaCha20-Poly1305
//! salt     32  random, fresh for every base image
//! nonce    12  random, the base image's nonce
//! check    16  HKDF-Expand(prk, "... key check", 16): tells a wrong key from damage
//! base_len  8  length of the base body
//! base      *  ChaCha20-Poly1305(aead_key, nonce, aad = the 78 header bytes above)
//! tag      16
//! then, once per successful call since the base was written:
//!   len     4  length of the record body
//!   nonce  12  random
//!   body    *  ChaCha20-Poly1305(aead_key, nonce, aad = header ‖ u64 record index ‖ len)
//!   tag    16
//!
//! prk      = HKDF-Extract(salt, storage_key)
//! aead_key = HKDF-Expand(prk, "quicnprotochat mls state v1 aead key", 32)
//! base     = u32 count, then per entry (sorted by key): u32 len, key, u32 len, value
//! record   = u32 count, then per changed entry (sorted by key): u32 len, key,
//!            u8 1 + u32 len + value (written) or u8 0 (deleted)
//! ```
//!
//! Files of earlier versions (1: one whole-store image, no records; 2: JSON
//! values, see [`crate::storage`]) are refused with a StorageError.
//!
//! A call's record holds only the entries it changed, so a call costs what
//! it changes, not the size of the store. When the records outgrow the base
//! (or 256 KiB), the next save writes a new base instead — to
//! `<path>.tmp`, fsynced, renamed over `<path>`, directory fsynced — so the
//! file stays within about twice the store's size.
//!
//! Atomicity: a call is durable once its record is appended and fsynced (or
//! its new base renamed into place). A process killed mid-append leaves a
//! torn last record, which the next open recognises (its tag fails and it
//! reaches the end of the file) and cuts off: the store is then as it was
//! before that call. A damaged record with valid data after it is not a torn
//! write but damage, and opening fails. Records are bound to their base and
//! position by the AAD, so they cannot be reordered or moved to another file;
//! dropping records from the end is indistinguishable from an older file,
//! like replacing the whole file with an older copy (see the threat model).
//!
//! One writer: `<path>.lock` holds an exclusive advisory lock (flock) while
//! any client of this process has the file open, so another process cannot
//! open it. Within one process a newer open *takes over* instead (how a node
//! restarted in-process, e.g. in a simulation, finds its state): the older
//! client can no longer write — its calls fail and are undone — so it can
//! never overwrite what the newer one saved.
//!
//! Nothing is written in cleartext: plaintext exists only in memory and is
//! encrypted in place before the buffer is written.

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
use crate::provider::{Entries, Store};
use crate::storage::Change;

/// Length of the caller's storage key.
pub const STORAGE_KEY_LEN: usize = 32;

const MAGIC: &[u8; 8] = b"QPC-MLS\0";
const VERSION: u8 = 3;
const SUITE_HKDF_SHA256_CHACHA20POLY1305: u8 = 1;
const SALT_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const CHECK_LEN: usize = 16;
const TAG_LEN: usize = 16;
const SALT_AT: usize = MAGIC.len() + 2;
const NONCE_AT: usize = SALT_AT + SALT_LEN;
const CHECK_AT: usize = NONCE_AT + NONCE_LEN;
const BASE_LEN_AT: usize = CHECK_AT + CHECK_LEN;
const HEADER_LEN: usize = BASE_LEN_AT + 8;
/// A record's length and nonce.
const RECORD_PREFIX_LEN: usize = 4 + NONCE_LEN;
/// The records may grow to the base's size, and at least to this, before
/// the next save writes a new base.
const MIN_LOG_BYTES: usize = 256 * 1024;
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

/// The base image now in the file, and how far its records reach: what an
/// append needs.
struct Log {
    header: [u8; HEADER_LEN],
    aead_key: Key,
    /// Length of the file up to the end of the last good record.
    len: usize,
    base_end: usize,
    records: u64,
}

// Never prints the key.
impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("len", &self.len)
            .field("records", &self.records)
            .finish_non_exhaustive()
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        self.aead_key.zeroize();
    }
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
    /// `None`: the next save writes a new base (no file yet, a torn record
    /// at its end, or a failed append).
    log: Option<Log>,
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
        let mut file = Self {
            path: path.to_path_buf(),
            tmp_path: with_suffix(path, ".tmp"),
            dir,
            key,
            lock,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            log: None,
        };
        // Read, vet and take over as one step: no older client of this
        // process writes in between.
        let lock = Arc::clone(&file.lock);
        let mut writer = lock.writer();
        // A leftover from a write that never reached its rename.
        match fs::remove_file(&file.tmp_path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("cannot remove a stale temporary state file", &e)),
        }
        let entries = match fs::read(&file.path) {
            Ok(bytes) => {
                let (entries, log) = open_sealed(&file.key, Zeroizing::new(bytes))?;
                file.log = log;
                Some(entries)
            }
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(io_error("cannot read the MLS state file", &e)),
        };
        check(entries.as_ref())?;
        *writer = file.id;
        drop(writer);
        Ok((file, entries))
    }

    /// Makes what the running transaction changed in `store` durable: a
    /// record appended to the file, or a new base holding every entry.
    pub fn save(&mut self, store: &Store, rand: &impl OpenMlsRand) -> Result<()> {
        let lock = Arc::clone(&self.lock);
        let writer = lock.writer();
        if *writer != self.id {
            return Err(Error::storage(
                "the MLS state file was opened again by a newer client; this one can no longer change it",
            ));
        }
        if let Some(log) = &self.log {
            let record = store.changes(|changes| {
                (!changes.is_empty())
                    .then(|| seal_record(log, changes, rand))
                    .transpose()
            })?;
            let Some(record) = record else {
                return Ok(()); // nothing changed: nothing to write
            };
            let base_len = log.base_end - HEADER_LEN - TAG_LEN;
            if log.len - log.base_end + record.len() <= base_len.max(MIN_LOG_BYTES) {
                return self.append(&record);
            }
        }
        let (bytes, log) = store.with_entries(|entries| seal_base(&self.key, entries, rand))?;
        self.replace(&bytes)?;
        self.log = Some(log);
        Ok(())
    }

    fn append(&mut self, record: &[u8]) -> Result<()> {
        let Some(log) = &mut self.log else {
            return Err(Error::state("no base to append to"));
        };
        let mut file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| io_error("cannot open the MLS state file", &e))?;
        match file.write_all(record).and_then(|()| file.sync_data()) {
            Ok(()) => {
                log.len += record.len();
                log.records += 1;
                Ok(())
            }
            Err(e) => {
                // The call fails and is undone in memory; take its record
                // back off the file too, or rewrite the file next time.
                let len = u64::try_from(log.len).unwrap_or(u64::MAX);
                if file.set_len(len).and_then(|()| file.sync_data()).is_err() {
                    self.log = None;
                }
                Err(io_error("cannot write the MLS state file", &e))
            }
        }
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

fn random<const N: usize>(rand: &impl OpenMlsRand) -> Result<[u8; N]> {
    rand.random_array()
        .map_err(|_| Error::storage("no randomness for the state file"))
}

/// Encrypts `body` (after `prefix` bytes of `out`) in place and appends the
/// tag; wipes `out` if that fails.
fn encrypt_tail(
    out: &mut Vec<u8>,
    prefix: usize,
    aead_key: &Key,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
) -> Result<()> {
    let (_, body) = out.split_at_mut(prefix);
    match ChaCha20Poly1305::new(aead_key).encrypt_in_place_detached(
        Nonce::from_slice(nonce),
        aad,
        body,
    ) {
        Ok(tag) => {
            out.extend_from_slice(&tag);
            Ok(())
        }
        Err(_) => {
            out.zeroize();
            Err(Error::storage("cannot encrypt the MLS state"))
        }
    }
}

/// Serializes and encrypts every entry as a new file (header and base).
fn seal_base(
    storage_key: &[u8; STORAGE_KEY_LEN],
    entries: &Entries,
    rand: &impl OpenMlsRand,
) -> Result<(Vec<u8>, Log)> {
    let salt: [u8; SALT_LEN] = random(rand)?;
    let nonce: [u8; NONCE_LEN] = random(rand)?;
    let (aead_key, check) = derive(storage_key, &salt);
    let mut keys: Vec<&Vec<u8>> = entries.keys().collect();
    keys.sort_unstable();
    let body_len = 4 + entries
        .iter()
        .map(|(k, v)| 8 + k.len() + v.len())
        .sum::<usize>();

    let mut header = [0u8; HEADER_LEN];
    header[..MAGIC.len()].copy_from_slice(MAGIC);
    header[MAGIC.len()] = VERSION;
    header[MAGIC.len() + 1] = SUITE_HKDF_SHA256_CHACHA20POLY1305;
    header[SALT_AT..NONCE_AT].copy_from_slice(&salt);
    header[NONCE_AT..CHECK_AT].copy_from_slice(&nonce);
    header[CHECK_AT..BASE_LEN_AT].copy_from_slice(&check);
    header[BASE_LEN_AT..].copy_from_slice(&(body_len as u64).to_be_bytes());
    let log = Log {
        header,
        aead_key,
        len: HEADER_LEN + body_len + TAG_LEN,
        base_end: HEADER_LEN + body_len + TAG_LEN,
        records: 0,
    };

    // Allocated once at its final size, so the plaintext is never copied by
    // a reallocation before it is encrypted in place.
    let mut out = Vec::with_capacity(log.len);
    out.extend_from_slice(&header);
    out.extend_from_slice(&len_u32(keys.len())?);
    for key in keys {
        let value = &entries[key];
        out.extend_from_slice(&len_u32(key.len())?);
        out.extend_from_slice(key);
        out.extend_from_slice(&len_u32(value.len())?);
        out.extend_from_slice(value);
    }
    encrypt_tail(&mut out, HEADER_LEN, &log.aead_key, &nonce, &header)?;
    Ok((out, log))
}

/// The additional data of record `index`: binds it to its base and place.
fn record_aad(header: &[u8; HEADER_LEN], index: u64, len: [u8; 4]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(HEADER_LEN + 12);
    aad.extend_from_slice(header);
    aad.extend_from_slice(&index.to_be_bytes());
    aad.extend_from_slice(&len);
    aad
}

/// Serializes and encrypts one call's changes as the next record.
fn seal_record(log: &Log, changes: &[Change<'_>], rand: &impl OpenMlsRand) -> Result<Vec<u8>> {
    let nonce: [u8; NONCE_LEN] = random(rand)?;
    let body_len = 4 + changes
        .iter()
        .map(|(k, v)| 5 + k.len() + v.map_or(0, |v| 4 + v.len()))
        .sum::<usize>();
    let len = len_u32(body_len)?;
    let mut out = Vec::with_capacity(RECORD_PREFIX_LEN + body_len + TAG_LEN);
    out.extend_from_slice(&len);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&len_u32(changes.len())?);
    for (key, value) in changes {
        out.extend_from_slice(&len_u32(key.len())?);
        out.extend_from_slice(key);
        match value {
            Some(value) => {
                out.push(1);
                out.extend_from_slice(&len_u32(value.len())?);
                out.extend_from_slice(value);
            }
            None => out.push(0),
        }
    }
    let aad = record_aad(&log.header, log.records, len);
    encrypt_tail(&mut out, RECORD_PREFIX_LEN, &log.aead_key, &nonce, &aad)?;
    Ok(out)
}

/// Checks, decrypts and parses a state file's bytes: the entries, and where
/// the next record goes (`None` if the last record was torn).
fn open_sealed(
    storage_key: &[u8; STORAGE_KEY_LEN],
    mut bytes: Zeroizing<Vec<u8>>,
) -> Result<(Entries, Option<Log>)> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(Error::storage("the file is not an MLS state file"));
    }
    if bytes.len() < HEADER_LEN + TAG_LEN {
        return Err(Error::storage("the MLS state file is truncated"));
    }
    if bytes[MAGIC.len()] != VERSION {
        return Err(Error::storage(format!(
            "the MLS state file has unsupported version {}",
            bytes[MAGIC.len()]
        )));
    }
    if bytes[MAGIC.len() + 1] != SUITE_HKDF_SHA256_CHACHA20POLY1305 {
        return Err(Error::storage(
            "the MLS state file uses an unsupported cipher",
        ));
    }
    let (aead_key, check) = derive(storage_key, &bytes[SALT_AT..NONCE_AT]);
    let mut log = Log {
        header: bytes[..HEADER_LEN]
            .try_into()
            .map_err(|_| Error::storage("the MLS state file is truncated"))?,
        aead_key,
        len: 0,
        base_end: 0,
        records: 0,
    };
    if !constant_time_eq(&check, &bytes[CHECK_AT..BASE_LEN_AT]) {
        return Err(Error::storage(
            "wrong storage key for the MLS state file (or its header is damaged)",
        ));
    }
    let truncated = || Error::storage("the MLS state file is truncated");
    let base_len: [u8; 8] = bytes[BASE_LEN_AT..HEADER_LEN]
        .try_into()
        .map_err(|_| truncated())?;
    let base_end = usize::try_from(u64::from_be_bytes(base_len))
        .ok()
        .and_then(|len| len.checked_add(HEADER_LEN + TAG_LEN))
        .filter(|end| *end <= bytes.len())
        .ok_or_else(truncated)?;
    let nonce = *Nonce::from_slice(&bytes[NONCE_AT..CHECK_AT]);
    let (header, rest) = bytes.split_at_mut(HEADER_LEN);
    let (body, tag) = rest[..base_end - HEADER_LEN].split_at_mut(base_end - HEADER_LEN - TAG_LEN);
    ChaCha20Poly1305::new(&log.aead_key)
        .decrypt_in_place_detached(&nonce, header, body, Tag::from_slice(tag))
        .map_err(|_| Error::storage("the MLS state file is corrupted"))?;
    let mut entries = parse_body(body)?;

    let mut at = base_end;
    while at < bytes.len() {
        // A record that fails and reaches the end of the file is an append
        // that never completed (its call was never reported done): leave it
        // out, and write a new base next time so that it is cut off.
        let end = bytes
            .get(at..at + 4)
            .and_then(|len| <[u8; 4]>::try_from(len).ok())
            .and_then(|len| usize::try_from(u32::from_be_bytes(len)).ok())
            .and_then(|len| len.checked_add(at + RECORD_PREFIX_LEN + TAG_LEN));
        let Some(end) = end.filter(|end| *end <= bytes.len()) else {
            return Ok((entries, None));
        };
        let len: [u8; 4] = bytes[at..at + 4].try_into().map_err(|_| truncated())?;
        let nonce = *Nonce::from_slice(&bytes[at + 4..at + RECORD_PREFIX_LEN]);
        let aad = record_aad(&log.header, log.records, len);
        let record = &mut bytes[at + RECORD_PREFIX_LEN..end];
        let (body, tag) = record.split_at_mut(record.len() - TAG_LEN);
        let opened = ChaCha20Poly1305::new(&log.aead_key).decrypt_in_place_detached(
            &nonce,
            &aad,
            body,
            Tag::from_slice(tag),
        );
        if opened.is_err() {
            if end == bytes.len() {
                return Ok((entries, None));
            }
            return Err(Error::storage("the MLS state file is corrupted"));
        }
        apply_record(&mut entries, body)?;
        log.records += 1;
        at = end;
    }
    log.len = at;
    log.base_end = base_end;
    Ok((entries, Some(log)))
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

/// Applies one decrypted record to the entries.
fn apply_record(entries: &mut Entries, body: &[u8]) -> Result<()> {
    let mut reader = Reader(body);
    let count = reader.length()?;
    for _ in 0..count {
        let key_len = reader.length()?;
        let key = reader.take(key_len)?.to_vec();
        let replaced = match reader.take(1)? {
            [1] => {
                let value_len = reader.length()?;
                entries.insert(key, reader.take(value_len)?.to_vec())
            }
            [0] => entries.remove(&key),
            _ => return Err(malformed()),
        };
        if let Some(mut old) = replaced {
            old.zeroize();
        }
    }
    if !reader.0.is_empty() {
        return Err(malformed());
    }
    Ok(())
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

    fn rand() -> &'static impl OpenMlsRand {
        shared_crypto().unwrap()
    }

    /// A file holding `base`, then one record per step (each a set of
    /// changes made in one transaction); returns its bytes and the length
    /// before each record.
    fn file_with(
        key: &[u8; 32],
        base: &Entries,
        steps: &[&[Change<'static>]],
    ) -> (Vec<u8>, Vec<usize>) {
        let store = Store::new(base.clone());
        let (mut bytes, mut log) = seal_base(key, base, rand()).unwrap();
        let mut starts = Vec::new();
        for step in steps {
            store.begin();
            for (k, v) in *step {
                store.set(k.to_vec(), v.map(<[u8]>::to_vec));
            }
            let record = store
                .changes(|changes| seal_record(&log, changes, rand()))
                .unwrap();
            store.commit();
            starts.push(bytes.len());
            bytes.extend_from_slice(&record);
            log.len = bytes.len();
            log.records += 1;
        }
        (bytes, starts)
    }

    fn open(key: &[u8; 32], bytes: &[u8]) -> Result<(Entries, Option<Log>)> {
        open_sealed(key, Zeroizing::new(bytes.to_vec()))
    }

    const STEPS: &[&[Change<'static>]] = &[
        &[(b"k1", Some(b"second secret")), (b"new", Some(b"x"))],
        &[(b"k2", None), (b"new", Some(b"y"))],
    ];

    fn after_steps(n: usize) -> Entries {
        let mut entries = sample();
        for step in &STEPS[..n] {
            for (k, v) in *step {
                match v {
                    Some(v) => entries.insert(k.to_vec(), v.to_vec()),
                    None => entries.remove(*k),
                };
            }
        }
        entries
    }

    #[test]
    fn base_and_records_round_trip() {
        let key = [7u8; 32];
        let (bytes, _) = file_with(&key, &sample(), STEPS);
        for secret in [&b"secret value"[..], b"second secret"] {
            assert!(!bytes.windows(secret.len()).any(|w| w == secret));
        }
        let (entries, log) = open(&key, &bytes).unwrap();
        assert_eq!(entries, after_steps(2));
        let log = log.unwrap();
        assert_eq!((log.len, log.records), (bytes.len(), 2));
    }

    #[test]
    fn a_torn_last_record_is_left_out() {
        let key = [7u8; 32];
        let (bytes, starts) = file_with(&key, &sample(), STEPS);
        for cut in starts[1] + 1..bytes.len() {
            let (entries, log) = open(&key, &bytes[..cut]).unwrap();
            assert_eq!(entries, after_steps(1), "cut at {cut}");
            assert!(log.is_none(), "a torn file is rewritten on the next save");
        }
        // Cut exactly between records: a clean file.
        let (entries, log) = open(&key, &bytes[..starts[1]]).unwrap();
        assert_eq!(entries, after_steps(1));
        assert_eq!(log.unwrap().records, 1);
        // Garbage past the end (a torn append whose length reaches EOF).
        let mut damaged = bytes.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert_eq!(open(&key, &damaged).unwrap().0, after_steps(1));
    }

    #[test]
    fn damage_before_the_last_record_is_an_error() {
        let key = [7u8; 32];
        let (bytes, starts) = file_with(&key, &sample(), STEPS);
        // Every byte of the base and of the first record, except the first
        // record's length (which may then point past the end, like a torn
        // append, or at a wrong boundary: both fail or leave it out).
        for i in (0..starts[0]).chain(starts[0] + 4..starts[1]) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            match open(&key, &bad) {
                Err(err) => assert_eq!(err.python_class(), "StorageError", "byte {i}"),
                Ok(_) => panic!("damage at byte {i} went unnoticed"),
            }
        }
    }

    #[test]
    fn records_do_not_move_between_files() {
        let key = [7u8; 32];
        let (one, starts) = file_with(&key, &sample(), STEPS);
        let (mut other, _) = seal_base(&key, &sample(), rand()).unwrap();
        other.extend_from_slice(&one[starts[0]..]);
        // The moved records fail to open under the other base: left out as
        // torn at best, never applied.
        match open(&key, &other) {
            Ok((entries, _)) => assert_eq!(entries, sample()),
            Err(err) => assert_eq!(err.python_class(), "StorageError"),
        }
        // Swapping the two records fails too.
        let mut swapped = one[..starts[0]].to_vec();
        swapped.extend_from_slice(&one[starts[1]..]);
        swapped.extend_from_slice(&one[starts[0]..starts[1]]);
        match open(&key, &swapped) {
            Ok((entries, _)) => assert_eq!(entries, sample()),
            Err(err) => assert_eq!(err.python_class(), "StorageError"),
        }
    }

    #[test]
    fn every_damage_to_the_base_is_a_storage_error() {
        let key = [7u8; 32];
        let (sealed, _) = seal_base(&key, &sample(), rand()).unwrap();
        let wrong = open(&[8u8; 32], &sealed).unwrap_err();
        assert!(wrong.message().contains("wrong storage key"), "{wrong}");
        for cut in [0, 5, HEADER_LEN, sealed.len() - 1] {
            let err = open(&key, &sealed[..cut]).unwrap_err();
            assert_eq!(err.python_class(), "StorageError");
        }
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            let err = open(&key, &bad).unwrap_err();
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
