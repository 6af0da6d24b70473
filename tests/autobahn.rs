//! Autobahn|Testsuite conformance: the fuzzingclient's server cases against `ringcast serve
//! --on-message relay` with a single client (relay is then an echo). Compression cases
//! (12.*, 13.*) are excluded while permessage-deflate is not offered; every other case must be
//! OK, NON-STRICT or INFORMATIONAL.
//!
//! Needs `.autobahn/venv/bin/wstest`, which `scripts/install-test-deps.sh` installs (CI runs it
//! before the tests). The run takes well under a minute against a release build.
//!
//! This writes its summary and reports under the target dir; the committed
//! `results/autobahn/` is refreshed by running `scripts/autobahn.sh` by hand.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

const OK_BEHAVIOR: &[&str] = &["OK", "NON-STRICT", "INFORMATIONAL"];
const BAD_CLOSE: &[&str] = &["FAILED", "UNCLEAN"];

fn unique_dir(base: &Path) -> PathBuf {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    base.join(format!("autobahn-{}-{}", std::process::id(), nanos))
}

/// Value of `"key": "VALUE"` within one line of the script's summary.json.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\": \"");
    let start = line.find(&pat)? + pat.len();
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

#[test]
fn autobahn_fuzzingclient_relay_echo() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let wstest = root.join(".autobahn/venv/bin/wstest");
    assert!(
        wstest.exists(),
        "{} is missing: run scripts/install-test-deps.sh first (it installs Autobahn|Testsuite \
         into .autobahn/venv); this test does not skip without it",
        wstest.display()
    );

    let dir = unique_dir(Path::new(env!("CARGO_TARGET_TMPDIR")));
    let out = dir.join("summary");
    let reports = dir.join("reports");
    fs::create_dir_all(&out).unwrap();

    let started = Instant::now();
    let output = Command::new("bash")
        .arg(root.join("scripts/autobahn.sh"))
        .arg("--ringcast")
        .arg(env!("CARGO_BIN_EXE_ringcast"))
        .arg("--out")
        .arg(&out)
        .arg("--reports")
        .arg(&reports)
        .current_dir(root)
        .output()
        .expect("failed to run bash scripts/autobahn.sh");
    let log = format!(
        "--- scripts/autobahn.sh stdout ---\n{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{log}\n(took {:.1?}; reports in {})", started.elapsed(), reports.display());
    let summary_md = fs::read_to_string(out.join("SUMMARY.md")).unwrap_or_default();

    assert!(
        output.status.success(),
        "scripts/autobahn.sh failed ({}); reports in {}\n{log}\n--- SUMMARY.md ---\n{summary_md}",
        output.status,
        reports.display()
    );

    // Check the summary ourselves rather than trusting the exit status alone.
    let summary = fs::read_to_string(out.join("summary.json"))
        .unwrap_or_else(|e| panic!("no summary.json in {}: {e}\n{log}", out.display()));
    for needle in
        ["\"passed\": true,", "\"failed_count\": 0,", "\"failed\": [],", "\"missing\": [],"]
    {
        assert!(summary.contains(needle), "summary.json lacks {needle}:\n{summary}");
    }
    let mut total = 0;
    let mut failed = Vec::new();
    for line in summary.lines() {
        let (Some(behavior), Some(close)) = (field(line, "behavior"), field(line, "behaviorClose"))
        else {
            continue;
        };
        total += 1;
        let case = line.trim().split('"').nth(1).unwrap_or("?").to_string();
        if case.starts_with("12.") || case.starts_with("13.") {
            failed.push(format!("{case}: compression case ran although it is excluded"));
        }
        if !OK_BEHAVIOR.contains(&behavior) || BAD_CLOSE.contains(&close) {
            failed.push(format!("{case}: behavior {behavior}, close {close}"));
        }
    }
    assert!(total > 200, "summary.json lists only {total} cases:\n{summary}");
    assert!(
        failed.is_empty(),
        "{} Autobahn case(s) failed:\n{}\n--- SUMMARY.md ---\n{summary_md}",
        failed.len(),
        failed.join("\n")
    );

    // Passed: drop the reports (they are ~10 MB of HTML/JSON); keep them when anything failed.
    let _ = fs::remove_dir_all(&dir);
}
