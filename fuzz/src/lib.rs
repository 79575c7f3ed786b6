//! Where the corpora of the fuzz targets live; the targets themselves are
//! `logstream::fuzzing` (they reach inside the crate).

use std::path::PathBuf;

/// `fuzz/corpus/TARGET`: the seeds each fuzz run starts from and the
/// inputs worth keeping (crashes found, once fixed, go here too).
pub fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}
