//! `strand rules check` and `strand rules test` against promtool (Debian's
//! prometheus package, 2.42) on the rule files and rule unit-test files of
//! `fixtures/rules`, deliberately failing ones included: both programs give
//! every file the same verdict, the verdict it was written for, and
//! failures read alike.

use std::path::{Path, PathBuf};
use std::process::Command;

use strand_testkit::require_tool;

use crate::support::STRAND_BINARY;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures/rules")
}

/// The fixture files whose names end with `suffix`, sorted.
fn fixture_files(suffix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(suffix))
        .collect();
    names.sort();
    names
}

/// What a run printed and whether it passed (exit 0) or failed (exit 1;
/// anything else, a crash or a usage error, fails the test).
struct Run {
    passed: bool,
    stdout: String,
    stderr: String,
}

/// Runs `program args...` in the fixtures directory, so both programs name
/// the files alike.
fn run(program: &Path, args: &[&str]) -> Run {
    let output = Command::new(program)
        .args(args)
        .current_dir(fixtures())
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", program.display()));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let passed = match output.status.code() {
        Some(0) => true,
        Some(1) => false,
        other => panic!(
            "{} {args:?} exited with {other:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            program.display()
        ),
    };
    Run {
        passed,
        stdout,
        stderr,
    }
}

fn promtool() -> PathBuf {
    require_tool(
        "promtool",
        "these tests compare with promtool (Debian: `sudo apt-get install prometheus`)",
    )
}

/// The unit-test files: whether each passes, and text the failure report of
/// both programs must contain (why it fails). `same_report`: Strand's
/// report is promtool's, word for word.
const UNIT_TESTS: &[(&str, bool, &[&str], bool)] = &[
    (
        "fail_bad_rule_file.test.yml",
        false,
        &["bad_expr.rules.yml", "could not parse expression"],
        false,
    ),
    (
        "fail_missing_alert.test.yml",
        false,
        &["alertname: InstanceDown, time: 5m", "got:[]"],
        true,
    ),
    (
        "fail_pending_only.test.yml",
        false,
        &["alertname: InstanceDown, time: 5m", "got:[]"],
        true,
    ),
    (
        "fail_wrong_annotation.test.yml",
        false,
        &[
            "Annotations:{summary=\"backlog of 1500 messages\"}",
            "Annotations:{summary=\"backlog of 1.5k messages\"}",
        ],
        true,
    ),
    (
        "fail_wrong_labels.test.yml",
        false,
        &[
            "Labels:{alertname=\"InstanceDown\", instance=\"s1:8080\", job=\"search\", severity=\"page\"}",
            "Labels:{alertname=\"InstanceDown\", instance=\"s1:8080\", job=\"search\", severity=\"ticket\"}",
        ],
        true,
    ),
    (
        "fail_wrong_value.test.yml",
        false,
        &[
            "exp: {__name__=\"job:http_requests:rate5m\", job=\"checkout\"} 4E+00",
            "got: {__name__=\"job:http_requests:rate5m\", job=\"checkout\"} 3E+00",
        ],
        true,
    ),
    ("pass_alerts.test.yml", true, &[], true),
    ("pass_keep_firing_stale_absent.test.yml", true, &[], true),
    ("pass_recording.test.yml", true, &[], true),
];

#[test]
fn unit_tests_get_the_same_verdict_as_promtool() {
    let promtool = promtool();
    let strand = Path::new(STRAND_BINARY);
    let listed: Vec<&str> = UNIT_TESTS.iter().map(|(file, ..)| *file).collect();
    assert_eq!(
        fixture_files(".test.yml"),
        listed,
        "every unit-test fixture has its expected verdict here"
    );
    for &(file, passes, why, same_report) in UNIT_TESTS {
        let ours = run(strand, &["rules", "test", file]);
        let theirs = run(&promtool, &["test", "rules", file]);
        assert_eq!(
            (ours.passed, theirs.passed),
            (passes, passes),
            "{file}: strand passed: {}, promtool passed: {}\nstrand:\n{}{}\npromtool:\n{}{}",
            ours.passed,
            theirs.passed,
            ours.stdout,
            ours.stderr,
            theirs.stdout,
            theirs.stderr
        );
        assert!(ours.stdout.starts_with(&format!("Unit Testing:  {file}\n")));
        if passes {
            assert!(
                ours.stdout.contains("  SUCCESS\n"),
                "{file}: {}",
                ours.stdout
            );
            assert!(ours.stderr.is_empty(), "{file}: {}", ours.stderr);
        } else {
            assert!(
                ours.stderr.starts_with("  FAILED:\n"),
                "{file}: {}",
                ours.stderr
            );
        }
        for text in why {
            assert!(
                ours.stderr.contains(text),
                "{file}: strand: {text:?} in\n{}",
                ours.stderr
            );
            assert!(
                theirs.stderr.contains(text),
                "{file}: promtool: {text:?} in\n{}",
                theirs.stderr
            );
        }
        if same_report {
            assert_eq!(
                ours.stderr, theirs.stderr,
                "{file}: the failures read as promtool's"
            );
        }
    }

    // Several files at once: the verdict is the worst of them.
    let passing = ["pass_alerts.test.yml", "pass_recording.test.yml"];
    assert!(run(strand, &[&["rules", "test"][..], &passing].concat()).passed);
    let with_failure = [
        &["rules", "test"][..],
        &passing,
        &["fail_wrong_value.test.yml"],
    ]
    .concat();
    let mixed = run(strand, &with_failure);
    assert!(!mixed.passed);
    assert_eq!(
        mixed.stdout.matches("  SUCCESS\n").count(),
        2,
        "{}",
        mixed.stdout
    );
}

#[test]
fn rule_checks_get_the_same_verdict_as_promtool() {
    let promtool = promtool();
    let strand = Path::new(STRAND_BINARY);
    let files = fixture_files(".rules.yml");
    assert!(files.len() >= 6, "{files:?}");
    for file in &files {
        let passes = !file.starts_with("bad_");
        let ours = run(strand, &["rules", "check", file]);
        let theirs = run(&promtool, &["check", "rules", file]);
        assert_eq!(
            (ours.passed, theirs.passed),
            (passes, passes),
            "{file}\nstrand:\n{}{}\npromtool:\n{}{}",
            ours.stdout,
            ours.stderr,
            theirs.stdout,
            theirs.stderr
        );
        assert!(ours.stdout.starts_with(&format!("Checking {file}\n")));
        if !passes {
            assert!(
                ours.stderr.starts_with("  FAILED:\n"),
                "{file}: {}",
                ours.stderr
            );
        }
    }
    let shop = run(strand, &["rules", "check", "shop.rules.yml"]);
    assert!(
        shop.stdout.contains("  SUCCESS: 6 rules found\n"),
        "{}",
        shop.stdout
    );
    // The refusal names the file, the line of the rule and the reason.
    let bad = run(
        strand,
        &["rules", "check", "shop.rules.yml", "bad_expr.rules.yml"],
    );
    assert!(!bad.passed);
    assert!(
        bad.stdout.contains("  SUCCESS: 6 rules found\n"),
        "{}",
        bad.stdout
    );
    assert!(
        bad.stderr
            .contains("bad_expr.rules.yml:4: group \"broken\": rule 1: could not parse expression"),
        "{}",
        bad.stderr
    );
}
