//! Replays the fuzz corpus (`fuzz/corpus/<target>/`, minimised with
//! `cargo fuzz cmin`) through the fuzz entry points, so every input the
//! fuzzers kept, crashes found and fixed among them, is tried on every
//! test run. Takes well under a second.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 6] = [
    ("client_frame", hrrt_server::fuzz::client_frame),
    ("publish_body", hrrt_server::fuzz::publish_body),
    ("cursor", hrrt_server::fuzz::cursor),
    ("query", hrrt_server::fuzz::query),
    ("token", hrrt_server::fuzz::token),
    ("claims", hrrt_server::fuzz::claims),
];

#[test]
fn every_corpus_input_runs_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (target, run) in TARGETS {
        let dir = root.join(target);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect::<Vec<_>>();
        assert!(!entries.is_empty(), "{} is empty", dir.display());
        for path in entries {
            let data = std::fs::read(&path).unwrap();
            run(&data);
        }
    }
}
