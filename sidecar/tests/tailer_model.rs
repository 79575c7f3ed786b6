//! Model-based test of the tailer: random sequences of writes, rename
//! rotations, copytruncates and deletions on real files, run against the real
//! tailer and a model of what was written. Every line written must come out
//! exactly once, in order, per source.
#![allow(clippy::unwrap_used)] // test code

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use logstream::hub::{Hub, HubLimits};
use logstream::metrics::Metrics;
use logstream::protocol::SplitPart;
use logstream::tailer::{TailConfig, Tailer};
use proptest::prelude::*;

const FILES: [&str; 2] = ["a.log", "sub/b.log"];
const MAX_LINE: usize = 64;

#[derive(Clone, Debug)]
enum Op {
    /// Lines appended to a file; the last one may lack its newline. A
    /// write that creates the file is seen by the tailer before the bytes
    /// land, or (`late`) only after them, as when inotify lags.
    Write {
        file: usize,
        lines: Vec<String>,
        terminated: bool,
        late: bool,
    },
    /// logrotate `create`: rename away (out of the glob), create anew.
    Rotate { file: usize },
    /// logrotate `copytruncate`: truncate in place.
    Truncate { file: usize },
    /// The app deletes its file (and later writes create it again).
    Delete { file: usize },
    /// The tailer wakes up (inotify or stat tick).
    Scan,
    /// Only a read of known files (an IN_MODIFY wake-up).
    Read,
}

fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[a-z ]{0,12}",
        1 => "[é€a]{1,30}",           // multi-byte characters
        1 => "[x]{60,200}",           // longer than MAX_LINE: split
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..FILES.len(), prop::collection::vec(line(), 1..5), any::<bool>(), any::<bool>())
            .prop_map(|(file, lines, terminated, late)| Op::Write { file, lines, terminated, late }),
        1 => (0..FILES.len()).prop_map(|file| Op::Rotate { file }),
        1 => (0..FILES.len()).prop_map(|file| Op::Truncate { file }),
        1 => (0..FILES.len()).prop_map(|file| Op::Delete { file }),
        2 => Just(Op::Scan),
        2 => Just(Op::Read),
    ]
}

/// What should come out, per source: whole logical lines and whether each was
/// cut short (flushed without a newline).
/// Logical lines per source: (text, flushed without newline).
type Lines = BTreeMap<String, Vec<(String, bool)>>;

#[derive(Default, Debug)]
struct Model {
    lines: Lines,
    /// The last line of the file's current content has no newline yet.
    open: BTreeMap<String, bool>,
}

impl Model {
    fn write(&mut self, file: &str, lines: &[String], terminated: bool) {
        let out = self.lines.entry(file.to_string()).or_default();
        let open = self.open.entry(file.to_string()).or_default();
        for (i, l) in lines.iter().enumerate() {
            if i == 0 && *open {
                if let Some(last) = out.last_mut() {
                    last.0.push_str(l);
                }
            } else {
                out.push((l.clone(), false));
            }
        }
        *open = !terminated;
    }

    /// The file's content ends here: an open line is flushed as partial.
    fn cut(&mut self, file: &str) {
        if self.open.insert(file.to_string(), false) == Some(true)
            && let Some(lines) = self.lines.get_mut(file)
        {
            // An open line without a byte yet was never written at all.
            if lines.last().is_some_and(|l| l.0.is_empty()) {
                lines.pop();
            } else if let Some(last) = lines.last_mut() {
                last.1 = true;
            }
        }
    }
}

struct World {
    dir: tempfile::TempDir,
    tailer: Tailer,
    hub: Arc<Hub>,
    model: Model,
    rotations: usize,
}

impl World {
    fn new() -> World {
        World::with(|_| {})
    }

    /// A world whose tailer settings `tune` changes first.
    fn with(tune: impl FnOnce(&mut TailConfig)) -> World {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        let hub = Hub::new(
            HubLimits {
                max_lines: 1 << 20,
                max_bytes: 1 << 30,
            },
            "model",
        );
        let mut cfg = TailConfig::new(dir.path());
        cfg.globs = vec!["*.log".into(), "sub/*.log".into()];
        cfg.max_line = MAX_LINE;
        // Timers never fire inside a case: the ops decide what happens.
        cfg.partial_timeout = Duration::from_secs(3600);
        cfg.rotate_wait = Duration::from_secs(3600);
        tune(&mut cfg);
        let mut tailer = Tailer::new(cfg, hub.clone(), Arc::new(Metrics::new())).unwrap();
        tailer.scan();
        World {
            dir,
            tailer,
            hub,
            model: Model::default(),
            rotations: 0,
        }
    }

    fn path(&self, file: usize) -> std::path::PathBuf {
        self.dir.path().join(FILES[file])
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Write {
                file,
                lines,
                terminated,
                late,
            } => {
                let path = self.path(*file);
                let created = !path.exists();
                let mut f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .unwrap();
                if created && !late {
                    // The tailer learns of new files from inotify at once.
                    self.tailer.scan();
                }
                let mut buf = lines.join("\n");
                if *terminated {
                    buf.push('\n');
                }
                f.write_all(buf.as_bytes()).unwrap();
                self.model.write(FILES[*file], lines, *terminated);
                if created && *late {
                    self.tailer.scan();
                }
            }
            Op::Rotate { file } => {
                let path = self.path(*file);
                if path.exists() {
                    self.rotations += 1;
                    let to = path.with_extension(format!("log.{}", self.rotations));
                    std::fs::rename(&path, &to).unwrap();
                    self.model.cut(FILES[*file]);
                    std::fs::File::create(&path).unwrap();
                    self.tailer.scan();
                }
            }
            Op::Truncate { file } => {
                let path = self.path(*file);
                if path.exists() {
                    // copytruncate copies first: the tailer has caught up with
                    // what the copy holds, and sees the truncation at once
                    // through inotify (IN_MODIFY).
                    self.tailer.scan();
                    OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .unwrap()
                        .set_len(0)
                        .unwrap();
                    self.model.cut(FILES[*file]);
                    self.tailer.read_all(false);
                }
            }
            Op::Delete { file } => {
                let path = self.path(*file);
                if path.exists() {
                    std::fs::remove_file(&path).unwrap();
                    self.model.cut(FILES[*file]);
                }
            }
            Op::Scan => self.tailer.scan(),
            Op::Read => self.tailer.read_all(false),
        }
    }

    /// Ends the run: rotated files are deleted, then everything is read and
    /// held partial lines are flushed (as at shutdown).
    fn finish(mut self) -> (Lines, Model, usize) {
        for f in FILES {
            self.model.cut(f);
        }
        for entry in walk(self.dir.path()) {
            if entry.extension().is_some_and(|e| e != "log") {
                std::fs::remove_file(entry).unwrap();
            }
        }
        self.tailer.scan();
        self.tailer.flush_partials();
        let open = self.tailer.open_files();
        let ring = self.hub.lock();
        let mut got: BTreeMap<String, Vec<(String, bool)>> = BTreeMap::new();
        let mut seqs: BTreeMap<String, u64> = BTreeMap::new();
        let mut joining: BTreeMap<String, String> = BTreeMap::new();
        for e in ring.iter_from(ring.first_idx()) {
            let file = e.source.source.file.clone();
            let prev = seqs.insert(file.clone(), e.seq).unwrap_or(0);
            assert_eq!(
                e.seq,
                prev + 1,
                "sequence numbers of {file} have a hole or repeat"
            );
            assert!(e.line.len() <= MAX_LINE, "part longer than the limit");
            match e.split {
                Some(SplitPart::First) | Some(SplitPart::Middle) => {
                    joining.entry(file).or_default().push_str(&e.line);
                }
                Some(SplitPart::Last) | None => {
                    let mut text = joining.remove(&file).unwrap_or_default();
                    text.push_str(&e.line);
                    got.entry(file).or_default().push((text, e.partial));
                }
            }
        }
        assert!(joining.is_empty(), "a split line never ended: {joining:?}");
        drop(ring);
        (got, self.model, open)
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_line_exactly_once_in_order(ops in prop::collection::vec(op(), 1..40)) {
        let mut w = World::new();
        for op in &ops {
            w.apply(op);
        }
        let (got, model, open) = w.finish();
        let want: BTreeMap<String, Vec<(String, bool)>> =
            model.lines.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        prop_assert_eq!(got, want);
        // Deleted and rotated-then-deleted files are released: only the
        // files still present may stay open.
        prop_assert!(open <= FILES.len(), "{open} files still open");
    }
}

/// Regression: a rotated file's held partial line must come before the first
/// line of its successor.
#[test]
fn rotated_partial_precedes_successor() {
    let mut w = World::new();
    w.apply(&Op::Write {
        file: 0,
        lines: vec!["one".into(), "tw".into()],
        terminated: false,
        late: false,
    });
    w.apply(&Op::Scan);
    w.apply(&Op::Rotate { file: 0 });
    w.apply(&Op::Write {
        file: 0,
        lines: vec!["three".into()],
        terminated: true,
        late: false,
    });
    let (got, _, _) = w.finish();
    assert_eq!(
        got["a.log"],
        vec![
            ("one".to_string(), false),
            ("tw".to_string(), true),
            ("three".to_string(), false)
        ]
    );
}

/// Symlinks are refused, even when their name matches the glob, and a
/// symlinked directory is not entered.
#[test]
fn symlinks_never_followed() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.log"), "top secret\n").unwrap();
    let mut w = World::new();
    std::os::unix::fs::symlink(
        outside.path().join("secret.log"),
        w.dir.path().join("evil.log"),
    )
    .unwrap();
    std::os::unix::fs::symlink(outside.path(), w.dir.path().join("sub").join("linked")).unwrap();
    w.tailer.scan();
    let (got, _, open) = w.finish();
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(open, 0);
}

/// Regression: two rotations in a row, each leaving a partial line; the older
/// file's partial must come out first.
#[test]
fn partials_of_successive_rotations_keep_their_order() {
    let mut w = World::new();
    w.apply(&Op::Write {
        file: 1,
        lines: vec!["a".into()],
        terminated: false,
        late: false,
    });
    w.apply(&Op::Rotate { file: 1 });
    w.apply(&Op::Write {
        file: 1,
        lines: vec!["b".into()],
        terminated: false,
        late: false,
    });
    w.apply(&Op::Rotate { file: 1 });
    w.apply(&Op::Write {
        file: 1,
        lines: vec!["".into()],
        terminated: true,
        late: false,
    });
    let (got, _, _) = w.finish();
    let want = [("a", true), ("b", true), ("", false)].map(|(l, p)| (l.to_string(), p));
    assert_eq!(got["sub/b.log"], want);
}

/// A backlog larger than one publish slice still comes out whole and in
/// order, after the held partial line of the file it replaced.
#[test]
fn large_backlog_after_rotation_keeps_order() {
    let mut w = World::new();
    w.apply(&Op::Write {
        file: 0,
        lines: vec!["held".into()],
        terminated: false,
        late: false,
    });
    w.apply(&Op::Scan);
    w.apply(&Op::Rotate { file: 0 });
    let many: Vec<String> = (0..10_000).map(|i| format!("l{i}")).collect();
    w.apply(&Op::Write {
        file: 0,
        lines: many.clone(),
        terminated: true,
        late: false,
    });
    w.apply(&Op::Read);
    let (got, _, _) = w.finish();
    let mut want = vec![("held".to_string(), true)];
    want.extend(many.into_iter().map(|l| (l, false)));
    assert_eq!(got["a.log"].len(), want.len());
    assert!(got["a.log"] == want);
}

/// Regression: a file deleted and released, then created anew with content
/// before the tailer looks (ext4 hands the new file the freed inode number),
/// was read from the deleted file's remembered offset: its first lines were
/// lost and the next one cut.
#[test]
fn a_new_file_on_a_reused_inode_is_read_from_its_start() {
    let mut w = World::new();
    w.apply(&Op::Write {
        file: 0,
        lines: vec!["inc 0 A 0000000000".into(), "inc 0 B".into()],
        terminated: true,
        late: false,
    });
    w.apply(&Op::Scan);
    w.apply(&Op::Delete { file: 0 });
    w.apply(&Op::Scan);
    w.apply(&Op::Write {
        file: 0,
        lines: vec!["inc 1 A 00000000000000000000".into(), "inc 1 B".into()],
        terminated: true,
        late: true,
    });
    let (got, _, _) = w.finish();
    let lines: Vec<&str> = got["a.log"].iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(
        lines,
        [
            "inc 0 A 0000000000",
            "inc 0 B",
            "inc 1 A 00000000000000000000",
            "inc 1 B"
        ]
    );
}

/// Regression: logrotate renames a file away; the tailer releases it once it
/// stops growing and remembers where it was; logrotate later deletes it
/// unseen, and the next file created gets its inode number. That file
/// starts at 0, not at the old offset.
#[test]
fn a_released_files_offset_is_not_used_for_a_different_file() {
    let mut w = World::with(|cfg| cfg.rotate_wait = Duration::ZERO);
    let old = "old content that is longer than what follows\n".repeat(4);
    std::fs::write(w.path(0), &old).unwrap();
    w.tailer.scan();
    let rotated = w.dir.path().join("a.log.1");
    std::fs::rename(w.path(0), &rotated).unwrap();
    w.tailer.scan(); // no longer under a matching name, idle: released
    w.tailer.scan();
    assert_eq!(w.tailer.open_files(), 0);
    std::fs::remove_file(&rotated).unwrap(); // out of sight
    let new = "fresh line one\n".repeat(20);
    std::fs::write(w.path(0), &new).unwrap();
    w.tailer.scan();
    let (got, _, _) = w.finish();
    let lines: Vec<&str> = got["a.log"].iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(lines.len(), 24, "{lines:?}");
    assert!(
        lines[4..].iter().all(|l| *l == "fresh line one"),
        "{lines:?}"
    );
}
