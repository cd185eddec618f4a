//! The file format under the spool and the journal: an append-only log of
//! records, each framed as `len: u32 LE | crc32(payload): u32 LE | payload`,
//! fsync'd before an append is reported done.
//!
//! This module owns the bytes on disk and nothing about what they mean:
//! the spool and the journal put their own JSON records in it and decide
//! which are live. It guarantees:
//!
//! - an append returns `Ok` only after the record and everything before it
//!   reached the disk (`fdatasync`); appends that arrive together share one
//!   sync (group commit on a thread of its own, so no async task blocks);
//! - a record cut short by a crash, or whose checksum does not match, ends
//!   the log: it and anything after it are ignored and cut off at open;
//! - a failed write (disk full, I/O error) leaves the file as it was before
//!   the failed batch, and a log file that was removed or replaced under the
//!   process fails every append instead of writing to an unlinked inode;
//! - one process at a time owns a log directory (an exclusive lock on
//!   `<name>.lock`); readers that only list it take no lock.
//!
//! Compaction ([`Log::rewrite`]) replaces the file with the given records
//! atomically (a new file, fsync'd, renamed over the old one, directory
//! fsync'd), or truncates it when nothing is live.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::mpsc,
};

use tokio::sync::oneshot;

/// Largest record accepted (a record is one JSON object of a few hundred
/// bytes; anything near this is a bug or a corrupt length).
pub const MAX_RECORD: usize = 1 << 20;

const HEADER: usize = 8;

/// Why a log cannot be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0} is in use by another process")]
    Locked(PathBuf),
    #[error("{0} was removed or replaced while open")]
    Replaced(PathBuf),
    #[error("the log's writer thread is gone")]
    Closed,
    #[error("record of {0} bytes is too large")]
    TooLarge(usize),
}

impl LogError {
    fn io(path: &Path, source: io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// Frames one payload.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Splits `bytes` into the payloads of its whole, intact records; returns
/// them and the length of the valid prefix (where a torn or corrupt record,
/// if any, starts).
pub fn parse(bytes: &[u8]) -> (Vec<Vec<u8>>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= HEADER {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        if len > MAX_RECORD || bytes.len() - at - HEADER < len {
            break;
        }
        let payload = &bytes[at + HEADER..at + HEADER + len];
        if crc32fast::hash(payload) != crc {
            break;
        }
        out.push(payload.to_vec());
        at += HEADER + len;
    }
    (out, at)
}

/// Reads the intact records of `dir/<name>.log` without taking its lock
/// (for listing a log another process owns). A missing file is empty.
pub fn read(dir: &Path, name: &str) -> Result<Vec<Vec<u8>>, LogError> {
    let path = dir.join(format!("{name}.log"));
    match fs::read(&path) {
        Ok(bytes) => Ok(parse(&bytes).0),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(LogError::io(&path, e)),
    }
}

type Reply = oneshot::Sender<Result<(), LogError>>;

enum Req {
    Append { bytes: Vec<u8>, reply: Reply },
    Rewrite { records: Vec<Vec<u8>>, reply: Reply },
}

/// An open log, owned by this process.
pub struct Log {
    tx: mpsc::Sender<Req>,
    path: PathBuf,
    // Held for the process's lifetime: the directory's exclusive lock.
    _lock: File,
}

impl Log {
    /// Opens (creating the directory and file if needed) `dir/<name>.log`,
    /// taking the directory's lock, cutting off a torn tail; returns the
    /// log and the payloads of its intact records, oldest first.
    pub fn open(dir: &Path, name: &str) -> Result<(Self, Vec<Vec<u8>>), LogError> {
        fs::create_dir_all(dir).map_err(|e| LogError::io(dir, e))?;
        let lock_path = dir.join(format!("{name}.lock"));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| LogError::io(&lock_path, e))?;
        if lock.try_lock().is_err() {
            return Err(LogError::Locked(dir.to_owned()));
        }
        let path = dir.join(format!("{name}.log"));
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| LogError::io(&path, e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| LogError::io(&path, e))?;
        let (records, valid) = parse(&bytes);
        if valid < bytes.len() {
            tracing::warn!(path = %path.display(), valid, len = bytes.len(),
                "log ends in a torn or corrupt record; cutting it off");
            file.set_len(valid as u64)
                .and_then(|()| file.sync_all())
                .map_err(|e| LogError::io(&path, e))?;
        }
        sync_dir(dir).map_err(|e| LogError::io(dir, e))?;
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            path: path.clone(),
            dir: dir.to_owned(),
            file,
            good_len: valid as u64,
        };
        std::thread::Builder::new()
            .name(format!("log-{name}"))
            .spawn(move || writer.run(rx))
            .map_err(|e| LogError::io(&path, e))?;
        Ok((
            Self {
                tx,
                path,
                _lock: lock,
            },
            records,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record; returns once it is on disk.
    pub async fn append(&self, payload: &[u8]) -> Result<(), LogError> {
        if payload.len() > MAX_RECORD {
            return Err(LogError::TooLarge(payload.len()));
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Req::Append {
                bytes: frame(payload),
                reply,
            })
            .map_err(|_| LogError::Closed)?;
        rx.await.map_err(|_| LogError::Closed)?
    }

    /// Replaces the whole log with `records` (compaction), atomically.
    pub async fn rewrite(&self, records: Vec<Vec<u8>>) -> Result<(), LogError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Req::Rewrite { records, reply })
            .map_err(|_| LogError::Closed)?;
        rx.await.map_err(|_| LogError::Closed)?
    }
}

struct Writer {
    path: PathBuf,
    dir: PathBuf,
    file: File,
    /// Length of the file up to its last durable record.
    good_len: u64,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Req>) {
        while let Ok(first) = rx.recv() {
            let mut appends = Vec::new();
            let mut next = Some(first);
            while let Some(req) = next.take() {
                match req {
                    Req::Append { bytes, reply } => appends.push((bytes, reply)),
                    Req::Rewrite { records, reply } => {
                        // Appends that came first are written first.
                        self.flush(std::mem::take(&mut appends));
                        let _ = reply.send(self.rewrite(&records));
                    }
                }
                next = rx.try_recv().ok();
            }
            self.flush(appends);
        }
    }

    /// Writes a batch of appends with one sync, and answers each.
    fn flush(&mut self, batch: Vec<(Vec<u8>, Reply)>) {
        if batch.is_empty() {
            return;
        }
        let mut buf = Vec::with_capacity(batch.iter().map(|(b, _)| b.len()).sum());
        for (b, _) in &batch {
            buf.extend_from_slice(b);
        }
        let outcome = self.write(&buf);
        for (_, reply) in batch {
            let _ = reply.send(match &outcome {
                Ok(()) => Ok(()),
                Err(e) => Err(copy_err(e)),
            });
        }
    }

    fn write(&mut self, buf: &[u8]) -> Result<(), LogError> {
        self.check_identity()?;
        let done = (|| {
            // A failed batch may have left bytes behind: cut them first.
            if self.file.metadata()?.len() != self.good_len {
                self.file.set_len(self.good_len)?;
            }
            self.file.write_all(buf)?;
            self.file.sync_data()
        })();
        match done {
            Ok(()) => {
                self.good_len += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                let _ = self.file.set_len(self.good_len);
                Err(LogError::io(&self.path, e))
            }
        }
    }

    /// The path still names the file this writer holds open.
    fn check_identity(&self) -> Result<(), LogError> {
        let open = self
            .file
            .metadata()
            .map_err(|e| LogError::io(&self.path, e))?;
        match fs::metadata(&self.path) {
            Ok(m) if m.ino() == open.ino() && m.dev() == open.dev() => Ok(()),
            _ => Err(LogError::Replaced(self.path.clone())),
        }
    }

    fn rewrite(&mut self, records: &[Vec<u8>]) -> Result<(), LogError> {
        self.check_identity()?;
        if records.is_empty() {
            return self
                .file
                .set_len(0)
                .and_then(|()| self.file.sync_all())
                .map(|()| self.good_len = 0)
                .map_err(|e| LogError::io(&self.path, e));
        }
        let tmp = self.path.with_extension("log.tmp");
        let mut len = 0u64;
        let written = (|| {
            let mut f = File::create(&tmp)?;
            for r in records {
                let b = frame(r);
                f.write_all(&b)?;
                len += b.len() as u64;
            }
            f.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            sync_dir(&self.dir)?;
            OpenOptions::new().read(true).append(true).open(&self.path)
        })();
        match written {
            Ok(f) => {
                self.file = f;
                self.good_len = len;
                Ok(())
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(LogError::io(&self.path, e))
            }
        }
    }
}

fn copy_err(e: &LogError) -> LogError {
    match e {
        LogError::Io { path, source } => LogError::Io {
            path: path.clone(),
            source: io::Error::new(source.kind(), source.to_string()),
        },
        LogError::Locked(p) => LogError::Locked(p.clone()),
        LogError::Replaced(p) => LogError::Replaced(p.clone()),
        LogError::Closed => LogError::Closed,
        LogError::TooLarge(n) => LogError::TooLarge(*n),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_back() {
        let mut bytes = frame(b"one");
        bytes.extend(frame(b""));
        bytes.extend(frame(b"three"));
        let (recs, valid) = parse(&bytes);
        assert_eq!(recs, vec![b"one".to_vec(), vec![], b"three".to_vec()]);
        assert_eq!(valid, bytes.len());
    }

    #[test]
    fn a_torn_tail_is_ignored_at_every_cut() {
        let mut bytes = frame(b"first record");
        let whole = bytes.len();
        bytes.extend(frame(b"second record"));
        for cut in whole..bytes.len() {
            let (recs, valid) = parse(&bytes[..cut]);
            assert_eq!(recs, vec![b"first record".to_vec()], "cut at {cut}");
            assert_eq!(valid, whole);
        }
    }

    #[test]
    fn a_flipped_bit_ends_the_log() {
        let mut bytes = frame(b"first");
        let whole = bytes.len();
        bytes.extend(frame(b"second"));
        bytes.extend(frame(b"third"));
        bytes[whole + HEADER + 2] ^= 0x10;
        let (recs, valid) = parse(&bytes);
        assert_eq!(recs, vec![b"first".to_vec()]);
        assert_eq!(valid, whole);
    }

    #[tokio::test]
    async fn appends_survive_reopening_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (log, recs) = Log::open(dir.path(), "t").unwrap();
            assert!(recs.is_empty());
            log.append(b"a").await.unwrap();
            log.append(b"b").await.unwrap();
        }
        // A crash mid-append: half a record at the end.
        let path = dir.path().join("t.log");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&frame(b"torn")[..6]).unwrap();
        drop(f);
        let (log, recs) = Log::open(dir.path(), "t").unwrap();
        assert_eq!(recs, vec![b"a".to_vec(), b"b".to_vec()]);
        log.append(b"c").await.unwrap();
        log.rewrite(vec![b"c".to_vec()]).await.unwrap();
        log.append(b"d").await.unwrap();
        drop(log);
        let (_log, recs) = Log::open(dir.path(), "t").unwrap();
        assert_eq!(recs, vec![b"c".to_vec(), b"d".to_vec()]);
    }

    #[tokio::test]
    async fn one_owner_per_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (_a, _) = Log::open(dir.path(), "t").unwrap();
        assert!(matches!(
            Log::open(dir.path(), "t"),
            Err(LogError::Locked(_))
        ));
    }

    #[tokio::test]
    async fn a_removed_file_fails_appends() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = Log::open(dir.path(), "t").unwrap();
        log.append(b"a").await.unwrap();
        fs::remove_file(dir.path().join("t.log")).unwrap();
        assert!(matches!(log.append(b"b").await, Err(LogError::Replaced(_))));
    }
}
