//! Which files the tailer may read: the directory walk (no symlinks), the
//! confinement of every open to the log directory ([`Beneath`]), and the
//! reasons a file is refused, with the ids that explain a permission error.

use super::*;

/// The log directory, held open: files are opened relative to it with
/// `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so a folder swapped for
/// a symlink between the walk and the open (a race a compromised app can
/// win) fails with `ELOOP` instead of reaching outside. Kernels without
/// `openat2` (before 5.6, or a seccomp profile that refuses it) get the same
/// rule one component at a time (`openat` with `O_NOFOLLOW` each).
pub(super) struct Beneath {
    dir: std::os::fd::OwnedFd,
    dev: u64,
    /// `openat2` answered ENOSYS/EPERM once: use the fallback from then on.
    pub(super) no_openat2: std::cell::Cell<bool>,
}

impl Beneath {
    pub(super) fn new(root: &Path) -> std::io::Result<Beneath> {
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
    pub(super) fn open(&self, rel: &str) -> std::io::Result<File> {
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

/// Why the streamer may not read `meta`'s file: its owner and mode against
/// the streamer's own ids (`/proc/self/status`), and the setting that helps.
pub(super) fn permission_hint(meta: &std::fs::Metadata) -> String {
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
pub(super) struct ProcessIds {
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) groups: Vec<u32>,
}

impl ProcessIds {
    pub(super) fn parse(status: &str) -> ProcessIds {
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

impl Tailer {
    /// Starts tracking `path` unless it is already tracked; returns its id.
    pub(super) fn track(&mut self, path: &Path, rel: String) -> Option<FileId> {
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

    pub(super) fn refuse(&mut self, path: &Path, reason: &'static str, detail: &str) {
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
    pub(super) fn walk(&mut self) -> Vec<(PathBuf, String)> {
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
}
