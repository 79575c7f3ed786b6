use super::discover::ProcessIds;
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
