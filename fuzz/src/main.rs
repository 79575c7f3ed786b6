//! One AFL++ binary for every target: `logstream-fuzz TARGET` (names in
//! `logstream::fuzzing::TARGETS`), fed by `afl-fuzz` in persistent mode.

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(&(_, target)) = logstream::fuzzing::TARGETS.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = logstream::fuzzing::TARGETS
            .iter()
            .map(|(n, _)| *n)
            .collect();
        eprintln!("usage: logstream-fuzz TARGET (one of {})", names.join(", "));
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| {
        target(data);
    });
}
