//! Every stored fuzz input through its target, in every `cargo test`: the
//! seeds and the inputs that once crashed stay fixed.
#![allow(clippy::unwrap_used)] // test code

use logstream::fuzzing::TARGETS;

#[test]
fn every_corpus_input_passes_its_target() {
    let mut ran = 0;
    for (name, target) in TARGETS {
        let dir = logstream_fuzz::corpus_dir(name);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut count = 0;
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            eprintln!("{name}: {}", path.display());
            target(&data);
            count += 1;
        }
        assert!(count > 0, "no seeds for {name} in {}", dir.display());
        ran += count;
    }
    eprintln!("{ran} inputs");
}
