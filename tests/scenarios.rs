//! Story files: every `tests/scenarios/*.story` replays on a simulated cluster and must
//! print exactly what the file records (see `causalkv::tools::sim::scenario`). Run with
//! `UPDATE_STORIES=1` to rewrite the files with what the code prints now, then review the
//! diff like any other change.

use std::path::Path;

use causalkv::tools::sim::scenario::run_script;

#[test]
fn every_story_plays_as_written() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let mut stories: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/scenarios exists")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "story"))
        .collect();
    stories.sort();
    assert!(!stories.is_empty(), "no story in {}", dir.display());
    let update = std::env::var_os("UPDATE_STORIES").is_some();
    let mut failed = Vec::new();
    for path in &stories {
        let text = std::fs::read_to_string(path).expect("story readable");
        let played = match run_script(&text) {
            Ok(played) => played,
            Err(error) => panic!("{}: {error}", path.display()),
        };
        if played == text {
            continue;
        }
        if update {
            std::fs::write(path, &played).expect("story writable");
            continue;
        }
        let first = text
            .lines()
            .zip(played.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        failed.push(format!(
            "{} line {}: expected {:?}, got {:?}",
            path.display(),
            first + 1,
            text.lines().nth(first).unwrap_or(""),
            played.lines().nth(first).unwrap_or("")
        ));
    }
    assert!(failed.is_empty(), "stories differ:\n{}", failed.join("\n"));
}
