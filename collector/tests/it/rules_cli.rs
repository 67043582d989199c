//! `strand rules check` and `strand rules test` against promtool (Debian's
//! prometheus package, 2.42) on the rule files and rule unit-test files of
//! `fixtures/rules`, deliberately failing ones included: both programs give
//! every file the same verdict, the verdict it was written for, and
//! failures read alike.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
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
    run_in(&fixtures(), program, args)
}

fn run_in(dir: &Path, program: &Path, args: &[&str]) -> Run {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
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

/// A unit-test fixture and what both programs must make of it.
struct UnitTestCase {
    file: &'static str,
    passes: bool,
    /// Text both failure reports contain: why the file fails.
    why: &'static [&'static str],
    /// Strand's failure report is promtool's, word for word.
    same_report: bool,
}

const fn case(
    file: &'static str,
    passes: bool,
    why: &'static [&'static str],
    same_report: bool,
) -> UnitTestCase {
    UnitTestCase {
        file,
        passes,
        why,
        same_report,
    }
}

/// The unit-test files, deliberately failing ones included.
const UNIT_TESTS: &[UnitTestCase] = &[
    case(
        "fail_bad_rule_file.test.yml",
        false,
        &["bad_expr.rules.yml", "could not parse expression"],
        false,
    ),
    case(
        "fail_missing_alert.test.yml",
        false,
        &["alertname: InstanceDown, time: 5m", "got:[]"],
        true,
    ),
    case(
        "fail_pending_only.test.yml",
        false,
        &["alertname: InstanceDown, time: 5m", "got:[]"],
        true,
    ),
    case(
        "fail_wrong_annotation.test.yml",
        false,
        &[
            "Annotations:{summary=\"backlog of 1500 messages\"}",
            "Annotations:{summary=\"backlog of 1.5k messages\"}",
        ],
        true,
    ),
    case(
        "fail_wrong_labels.test.yml",
        false,
        &[
            "Labels:{alertname=\"InstanceDown\", instance=\"s1:8080\", job=\"search\", severity=\"page\"}",
            "Labels:{alertname=\"InstanceDown\", instance=\"s1:8080\", job=\"search\", severity=\"ticket\"}",
        ],
        true,
    ),
    case(
        "fail_wrong_value.test.yml",
        false,
        &[
            "exp: {__name__=\"job:http_requests:rate5m\", job=\"checkout\"} 4E+00",
            "got: {__name__=\"job:http_requests:rate5m\", job=\"checkout\"} 3E+00",
        ],
        true,
    ),
    case("pass_alerts.test.yml", true, &[], true),
    case("pass_keep_firing_stale_absent.test.yml", true, &[], true),
    case("pass_recording.test.yml", true, &[], true),
    case("pass_template_edges.test.yml", true, &[], true),
];

#[test]
fn unit_tests_get_the_same_verdict_as_promtool() {
    let promtool = promtool();
    let strand = Path::new(STRAND_BINARY);
    let listed: Vec<&str> = UNIT_TESTS.iter().map(|case| case.file).collect();
    assert_eq!(
        fixture_files(".test.yml"),
        listed,
        "every unit-test fixture has its expected verdict here"
    );
    for &UnitTestCase {
        file,
        passes,
        why,
        same_report,
    } in UNIT_TESTS
    {
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
    // promtool's default lint: reported, not fatal, in the same words.
    let duplicates = ["rules", "check", "duplicate_rules.rules.yml"];
    let (ours, theirs) = (
        run(strand, &duplicates),
        run(&promtool, &["check", "rules", "duplicate_rules.rules.yml"]),
    );
    assert!(ours.passed && theirs.passed);
    assert!(
        ours.stderr.contains(
            "1 duplicate rule(s) found.\nMetric: job:up:sum\nLabel(s):\n\tsource: rules\n"
        ),
        "{}",
        ours.stderr
    );
    assert_eq!(
        (&ours.stdout, &ours.stderr),
        (&theirs.stdout, &theirs.stderr)
    );
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

/// A random rule file and unit-test file over a few series (random walks
/// with gaps and staleness markers, counters): recording rules, alerts with
/// and without `for` and `keep_firing_for`, templated labels, groups with
/// their own intervals, evaluated in a given order. Every test expects
/// nothing, so every alert that fires and every sample of `ALERTS`,
/// `ALERTS_FOR_STATE` and the recorded series, minute by minute, is in the
/// failure report: comparing the reports compares all of it.
fn random_case(rng: &mut StdRng) -> (String, String) {
    let points = rng.random_range(8..=25);
    let (interval, interval_secs) = *[("15s", 15), ("30s", 30), ("1m", 60), ("2m", 120)]
        .choose(rng)
        .unwrap();
    let evaluation = ["15s", "30s", "1m", "90s"].choose(rng).unwrap();
    let mut series = String::new();
    for job in &["a", "b", "c"][..rng.random_range(1..=3)] {
        let mut level: i64 = *[0, 1, 5, 10].choose(rng).unwrap();
        let values: Vec<String> = (0..points)
            .map(|_| match rng.random_range(0..20) {
                0 | 1 => "_".to_owned(),
                2 => "stale".to_owned(),
                _ => {
                    level = (level + [-3, -1, 0, 1, 2, 5].choose(rng).unwrap()).max(0);
                    level.to_string()
                }
            })
            .collect();
        let step = rng.random_range(0..=5);
        let _ = write!(
            series,
            "      - series: 'm{{job=\"{job}\"}}'\n        values: '{}'\n      - series: 'c_total{{job=\"{job}\"}}'\n        values: '0+{step}x{points}'\n",
            values.join(" ")
        );
    }
    let group_interval = |rng: &mut StdRng| match rng.random_range(0..6) {
        0 => "    interval: 10s\n",
        1 => "    interval: 5m\n",
        _ => "",
    };
    let mut rules = format!(
        "groups:\n  - name: g1\n{}    rules:\n      - record: job:m:max\n        expr: max by (job) (m)\n      - record: job:c:rate\n        expr: sum by (job) (rate(c_total[3m]))\n      - record: job:m:hi\n        expr: m > 4\n  - name: g2\n{}    rules:\n",
        group_interval(rng),
        group_interval(rng)
    );
    let alerts = rng.random_range(1..=4);
    for n in 0..alerts {
        let threshold = rng.random_range(2..=8);
        let expr = [
            format!("m > {threshold}"),
            format!("m < {threshold}"),
            format!("job:m:max >= {threshold}"),
            format!("avg_over_time(m[2m]) > {threshold}"),
            "job:c:rate > 0.02".to_owned(),
            "job:m:hi".to_owned(),
            "count(job:m:hi) > 1".to_owned(),
            "absent(m{job=\"z\"})".to_owned(),
        ]
        .choose(rng)
        .unwrap()
        .clone();
        let _ = write!(rules, "      - alert: A{n}\n        expr: {expr}\n");
        if let Some(hold) = ["", "30s", "1m", "2m", "3m", "5m"]
            .choose(rng)
            .filter(|h| !h.is_empty())
        {
            let _ = writeln!(rules, "        for: {hold}");
        }
        if let Some(keep) = ["", "", "30s", "1m", "2m", "5m"]
            .choose(rng)
            .filter(|k| !k.is_empty())
        {
            let _ = writeln!(rules, "        keep_firing_for: {keep}");
        }
        match rng.random_range(0..3) {
            0 => rules.push_str("        labels:\n          sev: '{{ if eq $labels.job \"b\" }}high{{ else }}low{{ end }}'\n"),
            1 => rules.push_str("        labels:\n          team: x\n"),
            _ => {}
        }
        rules.push_str("        annotations:\n          value: '{{ $value | humanize }}'\n");
    }
    let order = if rng.random_bool(0.5) {
        "g1, g2"
    } else {
        "g2, g1"
    };
    let mut test = format!(
        "rule_files: [rules.yml]\nevaluation_interval: {evaluation}\ngroup_eval_order: [{order}]\ntests:\n  - interval: {interval}\n    input_series:\n{series}    alert_rule_test:\n"
    );
    let minutes = points * interval_secs / 60 + 3;
    for minute in 0..minutes {
        for n in 0..alerts {
            let _ = write!(
                test,
                "      - eval_time: {minute}m\n        alertname: A{n}\n        exp_alerts: []\n"
            );
        }
    }
    test.push_str("    promql_expr_test:\n");
    for minute in 0..minutes {
        for expr in [
            "ALERTS",
            "ALERTS_FOR_STATE",
            "job:m:max",
            "job:c:rate",
            "job:m:hi",
        ] {
            let _ = write!(test, "      - expr: {expr}\n        eval_time: {minute}m\n");
        }
    }
    (rules, test)
}

/// The first line where two reports differ, with the lines before it.
fn first_difference(ours: &str, theirs: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (ours.lines().collect(), theirs.lines().collect());
    let at = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let from = at.saturating_sub(8);
    format!(
        "same until line {at}:\n{}\nstrand:   {:?}\npromtool: {:?}",
        a[from..at].join("\n"),
        a.get(at),
        b.get(at)
    )
}

#[test]
fn random_rules_and_series_evaluate_as_promtool_evaluates_them() {
    let promtool = promtool();
    let strand = Path::new(STRAND_BINARY);
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(17);
    let mut fired = 0;
    for case in 0..30 {
        let (rules, test) = random_case(&mut rng);
        std::fs::write(dir.path().join("rules.yml"), &rules).unwrap();
        std::fs::write(dir.path().join("test.yml"), &test).unwrap();
        let ours = run_in(dir.path(), strand, &["rules", "test", "test.yml"]);
        let theirs = run_in(dir.path(), &promtool, &["test", "rules", "test.yml"]);
        assert!(
            ours.passed == theirs.passed && ours.stderr == theirs.stderr,
            "case {case}: {}\n\nrules.yml:\n{rules}",
            first_difference(&ours.stderr, &theirs.stderr)
        );
        fired += usize::from(theirs.stderr.contains("got:[\n"));
    }
    assert!(fired >= 20, "alerts fired in only {fired} of 30 cases");
}
