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

/// The log directory, held open: files are opened relative to it with
/// `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so a folder swapped for
/// a symlink between the walk and the open (a race a compromised app can
/// win) fails with `ELOOP` instead of reaching outside. Kernels without
/// `openat2` (before 5.6, or a seccomp profile that refuses it) get the same
/// rule one component at a time (`openat` with `O_NOFOLLOW` each).
struct Beneath {
    dir: std::os::fd::OwnedFd,
    dev: u64,
    /// `openat2` answered ENOSYS/EPERM once: use the fallback from then on.
    no_openat2: std::cell::Cell<bool>,
}

impl Beneath {
    fn new(root: &Path) -> std::io::Result<Beneath> {
        use rustix::fs::{Mode, OFlags};
        let dir = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let dev = rustix::fs::fstat(&dir)?.st_dev;
        Ok(Beneath {
            dir,
            dev,
            no_openat2: std::cell::Cell::new(false),
        })
    }

    /// Opens `rel` (relative to the root, `/`-separated) for reading.
    fn open(&self, rel: &str) -> std::io::Result<File> {
        use rustix::fs::{Mode, OFlags, ResolveFlags};
        let flags =
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
        if !self.no_openat2.get() {
            let resolve =
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            match rustix::fs::openat2(&self.dir, rel, flags, Mode::empty(), resolve) {
                Ok(fd) => return Ok(File::from(fd)),
                Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM) => {
                    self.no_openat2.set(true);
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut parts = rel.split('/').filter(|c| !c.is_empty()).peekable();
        let mut dir: Option<std::os::fd::OwnedFd> = None;
        while let Some(part) = parts.next() {
            if part == ".." || part == "." {
                return Err(std::io::Error::from_raw_os_error(libc::EXDEV));
            }
            let at = match &dir {
                Some(d) => std::os::fd::AsFd::as_fd(d),
                None => std::os::fd::AsFd::as_fd(&self.dir),
            };
            if parts.peek().is_none() {
                return Ok(File::from(rustix::fs::openat(
                    at,
                    part,
                    flags,
                    Mode::empty(),
                )?));
            }
            let dir_flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            match rustix::fs::openat(at, part, dir_flags, Mode::empty()) {
                Ok(d) => dir = Some(d),
                // O_PATH|O_NOFOLLOW on a symlink opens the link itself, and
                // O_DIRECTORY then refuses it: say what it is.
                Err(rustix::io::Errno::NOTDIR) => {
                    return Err(std::io::Error::from_raw_os_error(libc::ELOOP));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(std::io::ErrorKind::NotFound.into())
    }
}

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

/// Why the streamer may not read `meta`'s file: its owner and mode against
/// the streamer's own ids (`/proc/self/status`), and the setting that helps.
fn permission_hint(meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::PermissionsExt;
    let ids = std::fs::read_to_string("/proc/self/status")
        .map(|s| ProcessIds::parse(&s))
        .unwrap_or_default();
    format!(
        "owner {}:{} mode {:04o}; the streamer runs as uid {} gid {} groups {:?} (set the LogStream's sidecar.runAsGroup to the file's group, or have the app write group-readable files)",
        meta.uid(),
        meta.gid(),
        meta.permissions().mode() & 0o7777,
        ids.uid,
        ids.gid,
        ids.groups
    )
}

/// Effective ids of a process, from the text of `/proc/<pid>/status`.
#[derive(Debug, Default, PartialEq, Eq)]
struct ProcessIds {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
}

impl ProcessIds {
    fn parse(status: &str) -> ProcessIds {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|rest| {
                    rest.split_whitespace()
                        .filter_map(|v| v.parse::<u32>().ok())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        };
        // `Uid:` and `Gid:` list real, effective, saved and filesystem ids.
        ProcessIds {
            uid: field("Uid:").get(1).copied().unwrap_or_default(),
            gid: field("Gid:").get(1).copied().unwrap_or_default(),
            groups: field("Groups:"),
        }
    }
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

    /// Starts tracking `path` unless it is already tracked; returns its id.
    fn track(&mut self, path: &Path, rel: String) -> Option<FileId> {
        let meta = std::fs::symlink_metadata(path).ok()?;
        let id = FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        if self.files.contains_key(&id) {
            return Some(id);
        }
        if self.files.len() >= self.cfg.max_files {
            let detail = format!(
                "{} files open, the descriptor budget for files; raise the container's \
                 RLIMIT_NOFILE (the soft limit is raised to the hard one at start) or \
                 narrow the globs",
                self.files.len()
            );
            self.refuse(path, "fd_budget", &detail);
            return None;
        }
        let file = match self.beneath.open(&rel) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                // Any component, not only the last: the walk saw a folder
                // that has been swapped for a symlink since.
                self.refuse(path, "symlink", "a component of the path is a symlink");
                return None;
            }
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                self.refuse(path, "outside_volume", "resolves outside the log directory");
                return None;
            }
            Err(e) => {
                let detail = match e.kind() {
                    std::io::ErrorKind::PermissionDenied => {
                        format!("{e}; {}", permission_hint(&meta))
                    }
                    _ => e.to_string(),
                };
                self.refuse(path, "open_failed", &detail);
                return None;
            }
        };
        let fmeta = file.metadata().ok()?;
        if !fmeta.is_file() {
            self.refuse(path, "not_regular", "not a regular file");
            return None;
        }
        if fmeta.dev() != self.beneath.dev {
            // Another filesystem mounted below the folder, or an escape:
            // either way not the log volume.
            self.refuse(
                path,
                "outside_volume",
                "on another filesystem than the log directory",
            );
            return None;
        }
        let id = FileId {
            dev: fmeta.dev(),
            ino: fmeta.ino(),
        };
        let size = fmeta.len();
        let mut continued = false;
        let offset = match self.known.remove(&id) {
            // Same inode number, same first bytes, not shorter: the file we
            // released (or an earlier process saved). Anything else is a new
            // file on a reused inode.
            Some(mark) if mark.offset <= size && mark == Mark::of(&file, mark.offset) => {
                continued = true;
                mark.offset
            }
            _ if !self.scanned_once && size > self.cfg.initial_bytes => {
                start_of_line_after(&file, size - self.cfg.initial_bytes)
            }
            _ => 0,
        };
        // An earlier process's place in this very file: continue its source
        // id and sequence. Otherwise the source is new (new id), so no old
        // cursor can cover lines it never saw.
        let saved = self
            .restored
            .remove(&rel)
            .filter(|s| continued && s.dev == id.dev && s.ino == id.ino);
        let source = self
            .sources
            .entry(rel.clone())
            .or_insert_with(|| {
                let mut s = self.cfg.origin.clone();
                s.file = rel.clone();
                match &saved {
                    Some(saved) => {
                        let info = self.hub.source_with_id(s, saved.sid);
                        info.continue_after(saved.seq);
                        tracing::info!(file = %rel, seq = saved.seq, "continuing an earlier process's sequence");
                        info
                    }
                    None => self.hub.source(s),
                }
            })
            .clone();
        tracing::info!(file = %rel, offset, "tailing");
        self.generation += 1;
        self.files.insert(
            id,
            Tracked {
                file,
                source,
                offset,
                splitter: LineSplitter::new(self.cfg.max_line),
                active: true,
                last_growth: Instant::now(),
                generation: self.generation,
                head: None,
            },
        );
        Some(id)
    }

    fn refuse(&mut self, path: &Path, reason: &'static str, detail: &str) {
        self.refused
            .insert(path.to_path_buf(), (reason, detail.to_string()));
        if !self.refused_before.contains_key(path) {
            self.metrics
                .files_refused
                .get_or_create(&ReasonLabel { reason })
                .inc();
            // Over the budget, thousands of files may be refused at once:
            // one line for the lot (publish_report), not one each.
            if reason != "fd_budget" {
                tracing::warn!(path = %path.display(), reason, detail, "file refused");
            }
        }
    }

    /// Matching regular files below the root, never following symlinks.
    fn walk(&mut self) -> Vec<(PathBuf, String)> {
        let mut found = Vec::new();
        let mut dirs = vec![(self.root.clone(), 0usize)];
        self.dirs.clear();
        while let Some((dir, depth)) = dirs.pop() {
            self.dirs.push(dir.clone());
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                // A filesystem's own lost+found (root, 0700, on every ext4
                // volume) holds no app logs: not worth a warning.
                Err(_) if depth == 1 && dir.file_name().is_some_and(|n| n == "lost+found") => {
                    continue;
                }
                Err(e) => {
                    // Files below it may match: say so instead of skipping silently.
                    let detail = match std::fs::symlink_metadata(&dir) {
                        Ok(m) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                            format!("{e}; {}", permission_hint(&m))
                        }
                        _ => e.to_string(),
                    };
                    self.refuse(&dir, "unreadable_dir", &detail);
                    continue;
                }
            };
            for ent in rd.flatten() {
                let Ok(ft) = ent.file_type() else { continue };
                let path = ent.path();
                let Ok(rel) = path.strip_prefix(&self.root) else {
                    continue;
                };
                let Some(rel) = rel.to_str().map(str::to_owned) else {
                    // Only a name the globs select is a path "not tailed".
                    if !ft.is_dir() && self.globs.is_match(rel) {
                        self.refuse(&path, "non_utf8_name", "file name is not UTF-8");
                    }
                    continue;
                };
                if ft.is_dir() {
                    if depth < self.cfg.max_depth {
                        dirs.push((path, depth + 1));
                    }
                } else if self.globs.is_match(&rel) {
                    if ft.is_symlink() {
                        self.refuse(&path, "symlink", "symlinks are not followed");
                    } else if ft.is_file() {
                        found.push((path, rel));
                    }
                }
            }
        }
        found.sort();
        found
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tailer(dir: &Path) -> Tailer {
        let hub = Hub::new(
            crate::hub::HubLimits {
                max_lines: 1000,
                max_bytes: 1 << 20,
            },
            "test",
        );
        Tailer::new(TailConfig::new(dir), hub, Arc::new(Metrics::new())).unwrap()
    }

    /// The race of a folder swapped for a symlink between the walk and the
    /// open, at its worst moment: the walk saw `sub/x.log` in a real
    /// folder, the open finds `sub` pointing outside. Before, O_NOFOLLOW
    /// guarded only `x.log` and the file outside was tailed.
    #[test]
    fn a_folder_swapped_for_a_symlink_after_the_walk_is_not_followed() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("x.log"), "secret\n").unwrap();
        let logs = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), logs.path().join("sub")).unwrap();
        for fallback in [false, true] {
            let mut t = tailer(logs.path());
            t.beneath.no_openat2.set(fallback);
            let path = t.root.join("sub/x.log");
            assert!(t.track(&path, "sub/x.log".into()).is_none(), "{fallback}");
            assert_eq!(t.refused.get(&path).map(|r| r.0), Some("symlink"));
            assert_eq!(t.open_files(), 0);
        }
        // A real folder still works, through both ways of opening.
        std::fs::create_dir(logs.path().join("real")).unwrap();
        std::fs::write(logs.path().join("real/y.log"), "fine\n").unwrap();
        for fallback in [false, true] {
            let mut t = tailer(logs.path());
            t.beneath.no_openat2.set(fallback);
            let path = t.root.join("real/y.log");
            assert!(t.track(&path, "real/y.log".into()).is_some(), "{fallback}");
        }
    }

    #[test]
    fn process_ids_are_the_effective_ones() {
        let status = "Name:\tlogstream\nUid:\t0\t65532\t65532\t65532\nGid:\t0\t3000\t3000\t3000\nGroups:\t3000 4000 \n";
        assert_eq!(
            ProcessIds::parse(status),
            ProcessIds {
                uid: 65532,
                gid: 3000,
                groups: vec![3000, 4000]
            }
        );
        assert_eq!(ProcessIds::parse("Groups:\n"), ProcessIds::default());
    }
}
