//! Tails the log files of one directory into the hub.
//!
//! ```text
//! inotify events ─┐                     ┌─ rename rotation: keep reading the old inode to EOF,
//! stat poll tick ─┼─► scan / read_all ──┤  then release it when deleted or idle
//! shutdown ───────┘        │            ├─ copytruncate: size < offset → restart at 0
//!                          ▼            └─ new files matching the globs are picked up
//!                    hub.publish(batch)
//! ```
//!
//! Files are identified by (device, inode), never by name, so a rotated file is
//! neither lost nor read twice; a released file's remembered offset is used
//! again only for a file with the same inode *and* the same first bytes, and
//! a deleted file's is forgotten (its inode number is soon reused). Paths are
//! found by walking the directory without following symlinks; symlinks are
//! refused, so nothing outside the directory is ever opened.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use globset::{GlobSet, GlobSetBuilder};
use inotify::{EventMask, Inotify, WatchMask};
use tokio::sync::watch;

use crate::hub::{Hub, Pending, SourceInfo, now_ns};
use crate::lines::{Line, LineSplitter};
use crate::metrics::{Metrics, ReasonLabel};
use crate::parse::{ParseMode, detect_level};
use crate::protocol::{Source, SplitPart};

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("log directory {path}: {source}")]
    Root {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("glob {glob:?}: {reason}")]
    Glob { glob: String, reason: String },
}

#[derive(Clone, Debug)]
pub struct TailConfig {
    pub root: PathBuf,
    /// Globs relative to `root` (`*.log`, `**/*.log`).
    pub globs: Vec<String>,
    /// Namespace, pod and container stamped on every record.
    pub origin: Source,
    pub max_line: usize,
    pub partial_timeout: Duration,
    /// Stat fallback period (also catches what inotify cannot see).
    pub poll: Duration,
    /// A rotated file that is still linked is released after this long without growth.
    pub rotate_wait: Duration,
    pub parse: ParseMode,
    pub level_key: Option<String>,
    /// Files present at start that are larger than this are read from this
    /// many bytes before their end (history), not from the beginning.
    pub initial_bytes: u64,
    /// Deepest directory level searched below `root`.
    pub max_depth: usize,
    /// Files held open at most (active and rotated): the share of the
    /// descriptor limit the server leaves to the tailer (fds.rs). Past it,
    /// files are reported as not tailed (`fd_budget`).
    pub max_files: usize,
    /// Where positions are kept across restarts (positions.rs); `None`: a
    /// restart reads the end of each file again under new ids.
    pub state_file: Option<PathBuf>,
}

impl TailConfig {
    pub fn new(root: impl Into<PathBuf>) -> TailConfig {
        TailConfig {
            root: root.into(),
            globs: vec!["**/*.log".into()],
            origin: Source {
                namespace: String::new(),
                pod: String::new(),
                container: String::new(),
                file: String::new(),
                service: String::new(),
            },
            max_line: 64 << 10,
            partial_timeout: Duration::from_millis(1000),
            poll: Duration::from_millis(1000),
            rotate_wait: Duration::from_secs(10),
            parse: ParseMode::Auto,
            level_key: None,
            initial_bytes: 8 << 20,
            max_depth: 8,
            max_files: usize::MAX,
            state_file: None,
        }
    }
}

/// A path under the log directory that matches but is not tailed, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NotTailed {
    /// Relative to the log directory.
    pub path: String,
    /// `open_failed`, `unreadable_dir`, `not_regular`, `symlink`,
    /// `outside_volume`, `non_utf8_name`, `fd_budget`.
    pub reason: &'static str,
    pub detail: String,
}

/// What the tailer reads and what it cannot, after its last scan: served on
/// `/readyz?verbose` and read by the operator for the LogStream's status.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FileReport {
    /// Files being read.
    pub tailed: usize,
    /// At most [`REPORT_LISTED`] entries, sorted by path.
    pub not_tailed: Vec<NotTailed>,
    /// All paths not tailed (may exceed the list).
    pub not_tailed_total: usize,
}

/// Entries listed in a [`FileReport`]; the rest is counted.
pub const REPORT_LISTED: usize = 50;

/// Where a released file was left, and what it began with: an inode
/// number alone does not name a file for long (ext4 hands a freed one to the
/// next file created).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mark {
    offset: u64,
    /// Hash of the first [`MARK_BYTES`] bytes (fewer when the file was shorter).
    head: u64,
}

/// Bytes of a file's start compared before resuming it at a remembered offset.
const MARK_BYTES: usize = 1024;

impl Mark {
    fn of(file: &File, offset: u64) -> Mark {
        use std::hash::{Hash, Hasher};
        let mut buf = [0u8; MARK_BYTES];
        let want = offset.min(MARK_BYTES as u64) as usize;
        let mut got = 0;
        while got < want {
            match file.read_at(&mut buf[got..want], got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        buf[..got].hash(&mut h);
        Mark {
            offset,
            head: h.finish(),
        }
    }
}

/// What becomes of a file after a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Release {
    Keep,
    /// Rotated away and idle for `rotate_wait`: its place is remembered.
    Idle,
    /// Rotated away and deleted: its inode number will name another file.
    Deleted,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FileId {
    dev: u64,
    ino: u64,
}

struct Tracked {
    file: File,
    source: Arc<SourceInfo>,
    offset: u64,
    splitter: LineSplitter,
    /// Still reachable under a matching path.
    active: bool,
    last_growth: Instant,
    /// Order of discovery: older files of a source are read first.
    generation: u64,
    /// The offset the head hash was last taken at, and the hash (positions).
    head: Option<(u64, u64)>,
}

/// Upper bound on remembered offsets of released files.
const KNOWN_LIMIT: usize = 4096;
const CHUNK: usize = 64 << 10;
/// Lines published at a time while reading a backlog.
const PUBLISH_LINES: usize = 4096;

pub struct Tailer {
    cfg: TailConfig,
    root: PathBuf,
    /// Opens files below the root without following any symlink.
    beneath: Beneath,
    globs: GlobSet,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    files: HashMap<FileId, Tracked>,
    /// Where released files were left, in case they show up again under a
    /// matching name.
    known: HashMap<FileId, Mark>,
    known_order: VecDeque<FileId>,
    sources: HashMap<String, Arc<SourceInfo>>,
    /// Paths refused during the current scan, and during the one before
    /// (a refusal is logged and counted once, when it starts).
    refused: BTreeMap<PathBuf, (&'static str, String)>,
    refused_before: BTreeMap<PathBuf, (&'static str, String)>,
    report: watch::Sender<FileReport>,
    dirs: Vec<PathBuf>,
    scanned_once: bool,
    generation: u64,
    buf: Vec<u8>,
    out: Vec<Pending>,
    /// Positions an earlier process saved, by path, not yet continued.
    restored: HashMap<String, crate::positions::Saved>,
    /// What the state file holds now (nothing is written when unchanged).
    saved: Option<crate::positions::Positions>,
}

impl Tailer {
    pub fn new(cfg: TailConfig, hub: Arc<Hub>, metrics: Arc<Metrics>) -> Result<Tailer, TailError> {
        let root = cfg.root.canonicalize().map_err(|source| TailError::Root {
            path: cfg.root.clone(),
            source,
        })?;
        if !root.is_dir() {
            return Err(TailError::Root {
                path: cfg.root.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
        let mut b = GlobSetBuilder::new();
        for g in &cfg.globs {
            if g.starts_with('/') || g.split('/').any(|c| c == "..") {
                return Err(TailError::Glob {
                    glob: g.clone(),
                    reason: "must be relative and stay inside the directory".into(),
                });
            }
            let glob = globset::GlobBuilder::new(g)
                .literal_separator(true)
                .build()
                .map_err(|e| TailError::Glob {
                    glob: g.clone(),
                    reason: e.kind().to_string(),
                })?;
            b.add(glob);
        }
        let globs = b.build().map_err(|e| TailError::Glob {
            glob: cfg.globs.join(","),
            reason: e.to_string(),
        })?;
        let beneath = Beneath::new(&root).map_err(|source| TailError::Root {
            path: cfg.root.clone(),
            source,
        })?;
        let previous = cfg
            .state_file
            .as_deref()
            .map(crate::positions::Positions::load)
            .unwrap_or_default();
        let mut t = Tailer {
            cfg,
            beneath,
            root,
            globs,
            hub,
            metrics,
            files: HashMap::new(),
            known: HashMap::new(),
            known_order: VecDeque::new(),
            sources: HashMap::new(),
            refused: BTreeMap::new(),
            refused_before: BTreeMap::new(),
            report: watch::channel(FileReport::default()).0,
            dirs: Vec::new(),
            scanned_once: false,
            generation: 0,
            buf: vec![0; CHUNK],
            out: Vec::new(),
            restored: HashMap::new(),
            saved: None,
        };
        // An earlier process's places count as released files: a file
        // found again with the same identity continues there.
        for f in &previous.files {
            let id = FileId {
                dev: f.dev,
                ino: f.ino,
            };
            t.remember(
                id,
                Mark {
                    offset: f.offset,
                    head: f.head,
                },
            );
            t.restored.insert(f.rel.clone(), f.clone());
        }
        t.saved = Some(previous);
        Ok(t)
    }

    /// Number of open files (active and rotated).
    pub fn open_files(&self) -> usize {
        self.files.len()
    }

    /// The report after each scan.
    pub fn file_report(&self) -> watch::Receiver<FileReport> {
        self.report.subscribe()
    }

    /// Finds files, notices rotations, reads everything new and publishes it.
    pub fn scan(&mut self) {
        self.refused_before = std::mem::take(&mut self.refused);
        let found = self.walk();
        let mut seen = Vec::with_capacity(found.len());
        for (path, rel) in found {
            if let Some(id) = self.track(&path, rel) {
                seen.push(id);
            }
        }
        for (id, t) in self.files.iter_mut() {
            let now_active = seen.contains(id);
            if t.active && !now_active {
                self.metrics
                    .rotations
                    .get_or_create(&ReasonLabel { reason: "rename" })
                    .inc();
            }
            t.active = now_active;
        }
        self.scanned_once = true;
        self.read_all(true);
        self.publish_report();
    }

    /// Refusals that ended are forgotten (file gone, or readable now); the
    /// gauge and the report show the current ones.
    fn publish_report(&mut self) {
        let mut by_reason: BTreeMap<&'static str, i64> = BTreeMap::new();
        for (reason, _) in self.refused_before.values() {
            by_reason.insert(reason, 0);
        }
        for (reason, _) in self.refused.values() {
            *by_reason.entry(reason).or_default() += 1;
        }
        let over_budget = |m: &BTreeMap<PathBuf, (&'static str, String)>| {
            m.values().filter(|(r, _)| *r == "fd_budget").count()
        };
        let (now, before) = (
            over_budget(&self.refused),
            over_budget(&self.refused_before),
        );
        if now > 0 && before == 0 {
            tracing::warn!(
                files = now,
                open = self.files.len(),
                "descriptor budget for files reached: files not tailed (listed on /readyz?verbose)"
            );
        }
        for (reason, n) in by_reason {
            self.metrics
                .files_not_tailed
                .get_or_create(&ReasonLabel { reason })
                .set(n);
        }
        let report = FileReport {
            tailed: self.files.len(),
            not_tailed: self
                .refused
                .iter()
                .take(REPORT_LISTED)
                .map(|(path, (reason, detail))| NotTailed {
                    path: match path.strip_prefix(&self.root) {
                        Ok(rel) if rel.as_os_str().is_empty() => ".".into(),
                        Ok(rel) => rel.to_string_lossy().into_owned(),
                        Err(_) => path.to_string_lossy().into_owned(),
                    },
                    reason,
                    detail: detail.clone(),
                })
                .collect(),
            not_tailed_total: self.refused.len(),
        };
        self.report.send_if_modified(|r| {
            let changed = *r != report;
            *r = report;
            changed
        });
    }

    /// Reads every tracked file to EOF and publishes; `stat` also checks for
    /// truncation, deletion and partial-line timeouts.
    pub fn read_all(&mut self, stat: bool) {
        let mut ids: Vec<FileId> = self.files.keys().copied().collect();
        // Rotated files first, so the tail of an old file precedes the start
        // of its successor.
        ids.sort_by_key(|id| self.files.get(id).map(|t| (t.active, t.generation)));
        for id in ids {
            // Release right after the last read, so a rotated file's held
            // partial line precedes its successor's lines.
            let Some(release @ (Release::Idle | Release::Deleted)) = self.read_file(id, stat)
            else {
                continue;
            };
            if let Some(mut t) = self.files.remove(&id) {
                let mut lines = Vec::new();
                t.splitter.flush(&mut lines);
                self.emit(&t.source, lines);
                // A deleted file never comes back; its inode number soon
                // names a new file, which must not start at this offset.
                if release == Release::Idle {
                    let mark = Mark::of(&t.file, t.offset);
                    self.remember(id, mark);
                }
            }
        }
        self.metrics.files_tracked.set(self.files.len() as i64);
        self.flush_out();
    }

    /// Writes where each file is (at its last whole line) to the state
    /// file, when configured and changed since the last write.
    pub fn save_positions(&mut self) {
        let Some(path) = self.cfg.state_file.clone() else {
            return;
        };
        let mut files: Vec<crate::positions::Saved> = self
            .files
            .iter_mut()
            .filter(|(_, t)| t.active)
            .map(|(id, t)| {
                let offset = t.offset - t.splitter.pending() as u64;
                // The head hash only changes while the file is shorter than
                // what it covers.
                let head = match t.head {
                    Some((at, head))
                        if at.min(MARK_BYTES as u64) == offset.min(MARK_BYTES as u64) =>
                    {
                        head
                    }
                    _ => Mark::of(&t.file, offset).head,
                };
                t.head = Some((offset, head));
                crate::positions::Saved {
                    rel: t.source.source.file.clone(),
                    dev: id.dev,
                    ino: id.ino,
                    offset,
                    head,
                    sid: t.source.sid,
                    seq: t.source.last_seq(),
                }
            })
            .collect();
        files.sort_by(|a, b| a.rel.cmp(&b.rel));
        let now = crate::positions::Positions::new(files);
        if self.saved.as_ref() == Some(&now) {
            return;
        }
        match now.save(&path) {
            Ok(()) => self.saved = Some(now),
            Err(e) => tracing::warn!(error = %e, "positions not saved"),
        }
    }

    /// Flushes every held partial line (shutdown).
    pub fn flush_partials(&mut self) {
        let mut all = Vec::new();
        for t in self.files.values_mut() {
            let mut lines = Vec::new();
            t.splitter.flush(&mut lines);
            all.push((t.source.clone(), lines));
        }
        for (s, lines) in all {
            self.emit(&s, lines);
        }
        self.flush_out();
    }

    /// Reads one file; returns whether (and why) it should be released.
    fn read_file(&mut self, id: FileId, stat: bool) -> Option<Release> {
        let t = self.files.get_mut(&id)?;
        let meta = if stat { t.file.metadata().ok() } else { None };
        if let Some(m) = &meta
            && m.len() < t.offset
        {
            // copytruncate: what we held is the end of the old content.
            self.metrics
                .rotations
                .get_or_create(&ReasonLabel { reason: "truncate" })
                .inc();
            let mut lines = Vec::new();
            t.splitter.reset(&mut lines);
            t.offset = 0;
            let source = t.source.clone();
            self.emit(&source, lines);
        }
        let mut lines: Vec<Line> = Vec::new();
        let mut grew = false;
        let mut older_flushed = false;
        let mut read_bytes = 0u64;
        loop {
            let t = self.files.get_mut(&id)?;
            match t.file.read_at(&mut self.buf, t.offset) {
                Ok(0) => break,
                Ok(n) => {
                    t.splitter.push(&self.buf[..n], &mut lines);
                    t.offset += n as u64;
                    read_bytes += n as u64;
                    grew = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(file = %t.source.source.file, error = %e, "read failed");
                    break;
                }
            }
            // A backlog is published in slices: memory stays bounded and
            // clients see the first lines before the last ones are read.
            if lines.len() >= PUBLISH_LINES {
                let (source, generation) = (t.source.clone(), t.generation);
                if !older_flushed {
                    self.flush_older(&source, generation);
                    older_flushed = true;
                }
                self.emit(&source, std::mem::take(&mut lines));
                self.flush_out();
            }
        }
        self.metrics.bytes_read.inc_by(read_bytes);
        let t = self.files.get_mut(&id)?;
        let now = Instant::now();
        if grew {
            t.last_growth = now;
        } else if !stat && read_bytes == 0 {
            // An event without new bytes may be a truncation: check now.
            if t.file.metadata().is_ok_and(|m| m.len() < t.offset) {
                let source = t.source.clone();
                self.emit(&source, lines);
                return self.read_file(id, true);
            }
        }
        let mut release = Release::Keep;
        if stat {
            let idle = now.duration_since(t.last_growth);
            if t.splitter.pending() > 0 && idle >= self.cfg.partial_timeout {
                t.splitter.flush(&mut lines);
            }
            if !t.active {
                let deleted = meta.as_ref().is_some_and(|m| m.nlink() == 0);
                if deleted {
                    self.metrics
                        .rotations
                        .get_or_create(&ReasonLabel { reason: "delete" })
                        .inc();
                }
                release = if deleted {
                    Release::Deleted
                } else if idle >= self.cfg.rotate_wait {
                    Release::Idle
                } else {
                    Release::Keep
                };
            }
        }
        let source = t.source.clone();
        if grew && !older_flushed {
            // The app writes to a successor now: a line held from an older
            // file of the same source will never be finished.
            let generation = t.generation;
            self.flush_older(&source, generation);
        }
        self.emit(&source, lines);
        Some(release)
    }

    fn flush_older(&mut self, source: &Arc<SourceInfo>, generation: u64) {
        let mut older: Vec<&mut Tracked> = self
            .files
            .values_mut()
            .filter(|t| t.generation < generation && Arc::ptr_eq(&t.source, source))
            .collect();
        older.sort_by_key(|t| t.generation);
        let mut lines = Vec::new();
        for t in older {
            t.splitter.flush(&mut lines);
        }
        self.emit(source, lines);
    }

    fn emit(&mut self, source: &Arc<SourceInfo>, lines: Vec<Line>) {
        for l in lines {
            self.metrics.lines_read.inc();
            if l.partial {
                self.metrics.partial_flushes.inc();
            }
            if matches!(l.split, Some(SplitPart::First)) {
                self.metrics.lines_split.inc();
            }
            let level = detect_level(&l.text, self.cfg.parse, self.cfg.level_key.as_deref());
            self.out.push(Pending {
                source: source.clone(),
                seq: source.next_seq(),
                ts_ns: now_ns(),
                level,
                line: l.text,
                partial: l.partial,
                split: l.split,
            });
        }
    }

    fn flush_out(&mut self) {
        if !self.out.is_empty() {
            self.hub.publish(std::mem::take(&mut self.out));
            let ring = self.hub.lock();
            self.metrics.history_records.set(ring.len() as i64);
            self.metrics.history_bytes.set(ring.bytes() as i64);
        }
    }

    fn remember(&mut self, id: FileId, mark: Mark) {
        if self.known.insert(id, mark).is_none() {
            self.known_order.push_back(id);
        }
        while self.known_order.len() > KNOWN_LIMIT {
            if let Some(old) = self.known_order.pop_front() {
                self.known.remove(&old);
            }
        }
    }

    /// Runs until `shutdown` turns true, then reads every file to EOF,
    /// flushes partial lines and closes the hub.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>, ready: watch::Sender<bool>) {
        self.scan();
        let _ = ready.send(true);
        let mut events = match self.inotify() {
            Ok((ino, watched)) => match ino.into_event_stream(vec![0u8; 64 << 10]) {
                Ok(s) => Some((s, watched)),
                Err(e) => {
                    tracing::warn!(error = %e, "inotify unavailable, polling only");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "inotify unavailable, polling only");
                None
            }
        };
        let tick = self
            .cfg
            .poll
            .min(self.cfg.partial_timeout)
            .max(Duration::from_millis(10));
        let mut poll = tokio::time::interval(tick);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => break,
                ev = async {
                    match events.as_mut() {
                        Some((s, _)) => s.next().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let Some(ev) = ev else { events = None; continue };
                    let mut structural = false;
                    let mut handle = |ev: Result<inotify::Event<std::ffi::OsString>, std::io::Error>| {
                        match ev {
                            Ok(ev) => {
                                if ev.mask.intersects(EventMask::Q_OVERFLOW) {
                                    self.metrics.inotify_overflows.inc();
                                }
                                if !ev.mask.intersects(EventMask::MODIFY) {
                                    structural = true;
                                }
                            }
                            Err(_) => structural = true,
                        }
                    };
                    handle(ev);
                    // Coalesce whatever else is already queued into one pass.
                    if let Some((s, _)) = events.as_mut() {
                        while let Some(Some(ev)) = futures::FutureExt::now_or_never(s.next()) {
                            handle(ev);
                        }
                    }
                    if structural {
                        self.scan();
                        if let Some((s, watched)) = events.as_mut() {
                            self.watch_new_dirs(s.watches(), watched);
                        }
                    } else {
                        self.read_all(false);
                    }
                }
                _ = poll.tick() => {
                    self.scan();
                    self.save_positions();
                    if let Some((s, watched)) = events.as_mut() {
                        self.watch_new_dirs(s.watches(), watched);
                    }
                }
            }
        }
        // Drain: read to EOF, flush partial lines, then end the stream.
        self.scan();
        self.flush_partials();
        self.save_positions();
        self.hub.close();
        tracing::info!("tailer drained");
    }

    fn inotify(&self) -> std::io::Result<(Inotify, Vec<PathBuf>)> {
        let ino = Inotify::init()?;
        let mut watched = Vec::new();
        self.watch_new_dirs(ino.watches(), &mut watched);
        Ok((ino, watched))
    }

    fn watch_new_dirs(&self, mut w: inotify::Watches, watched: &mut Vec<PathBuf>) {
        let mask = WatchMask::MODIFY
            | WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::MOVED_FROM
            | WatchMask::MOVED_TO
            | WatchMask::DELETE_SELF
            | WatchMask::ONLYDIR
            | WatchMask::DONT_FOLLOW;
        for d in &self.dirs {
            if !watched.contains(d) {
                match w.add(d, mask) {
                    Ok(_) => watched.push(d.clone()),
                    Err(e) => tracing::warn!(dir = %d.display(), error = %e, "cannot watch"),
                }
            }
        }
    }
}

/// Offset of the first line that starts at or after `from`.
fn start_of_line_after(file: &File, from: u64) -> u64 {
    if from == 0 {
        return 0;
    }
    let mut buf = vec![0u8; 8192];
    let mut pos = from - 1;
    loop {
        match file.read_at(&mut buf, pos) {
            Ok(0) | Err(_) => return pos,
            Ok(n) => {
                if let Some(i) = memchr::memchr(b'\n', &buf[..n]) {
                    return pos + i as u64 + 1;
                }
                pos += n as u64;
            }
        }
    }
}

mod discover;
use discover::Beneath;

#[cfg(test)]
mod tests;
