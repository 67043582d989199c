//! The `strand` binary: parses flags, sets up logging, runs the daemon until
//! SIGINT or SIGTERM; `strand rules check|test` are promtool's offline rule
//! tools and exit once done.

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use strand::config::{Cli, Command, RulesCommand};
use strand::{Config, Listeners};
use tracing_subscriber::EnvFilter;

/// Ingest allocates and frees millions of small attribute strings per second
/// across threads; mimalloc does that with far less time and fragmentation
/// than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    strand::prepare_process_memory();
    let argv: Vec<_> = std::env::args_os().collect();
    if let Ok(Cli {
        command: Command::Rules(command),
    }) = Cli::try_parse_from(&argv)
    {
        return rules(command);
    }
    let config = match Config::from_command_line(argv) {
        Ok(config) => config,
        Err(error) => match error.downcast::<clap::Error>() {
            // Usage errors, --help and --version, as clap prints them.
            Ok(usage) => usage.exit(),
            Err(error) => {
                eprintln!("strand: {error:#}");
                return ExitCode::FAILURE;
            }
        },
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("STRAND_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(strand::release_if_asked)
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| {
            runtime.block_on(async {
                let shutdown = shutdown_signal()?;
                let listeners = Listeners::bind(&config).await?;
                strand::run(config, listeners, shutdown).await
            })
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("strand: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `strand rules check|test FILE...`: every file is checked or tested, in
/// promtool's words; exit status 1 if any failed.
fn rules(command: RulesCommand) -> ExitCode {
    let (files, run): (_, fn(&Path) -> bool) = match command {
        RulesCommand::Check { files } => (files, check_rule_file),
        RulesCommand::Test { files } => (files, test_rule_file),
    };
    let mut passed = true;
    for file in &files {
        passed &= run(file);
    }
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// As `promtool check rules`: `Checking FILE`, then `SUCCESS: N rules
/// found` or `FAILED:` and the reason with its line.
fn check_rule_file(file: &Path) -> bool {
    println!("Checking {}", file.display());
    let passed = match strand::rules::load_rule_files(&[file.display().to_string()]) {
        Ok(groups) => {
            // As promtool: a lint finding replaces the success line, and
            // the check still passes.
            match duplicates(&groups) {
                Some(lint) => eprintln!("  FAILED:\n{lint}"),
                None => {
                    let rules: usize = groups.iter().map(|g| g.rules.len()).sum();
                    println!("  SUCCESS: {rules} rules found");
                }
            }
            true
        }
        Err(error) => {
            eprintln!("  FAILED:\n{error}");
            false
        }
    };
    println!();
    passed
}

/// promtool's default lint, in its words: rules of the same name and
/// labels, which would write the same series.
fn duplicates(groups: &[strand::rules::GroupSpec]) -> Option<String> {
    let mut rules: Vec<_> = groups
        .iter()
        .flat_map(|g| &g.rules)
        .map(|r| (r.name(), r.labels()))
        .collect();
    rules.sort();
    let mut duplicates = Vec::new();
    for pair in rules.windows(2) {
        if pair[0] == pair[1] && duplicates.last() != Some(&pair[1]) {
            duplicates.push(pair[1]);
        }
    }
    if duplicates.is_empty() {
        return None;
    }
    let mut message = format!("lint error {} duplicate rule(s) found.\n", duplicates.len());
    for (name, labels) in duplicates {
        message.push_str(&format!("Metric: {name}\nLabel(s):\n"));
        for (label, value) in labels {
            message.push_str(&format!("\t{label}: {value}\n"));
        }
    }
    message.push_str("Might cause inconsistency while recording expressions");
    Some(message)
}

/// As `promtool test rules`: `Unit Testing:  FILE`, then `SUCCESS` or
/// `FAILED:` and every failure (expected against got).
fn test_rule_file(file: &Path) -> bool {
    println!("Unit Testing:  {}", file.display());
    let report = strand::rules::run_test_file(file);
    for warning in &report.warnings {
        eprintln!("{warning}");
    }
    let passed = report.failures.is_empty();
    if passed {
        println!("  SUCCESS");
    } else {
        eprintln!("  FAILED:");
        for failure in &report.failures {
            eprintln!("{failure}");
            println!();
        }
    }
    println!();
    passed
}

/// Listens for SIGINT and SIGTERM from the start, before the listeners bind
/// and the stores open: a signal that arrives while Strand starts stops it
/// cleanly once it runs, rather than killing it by the default action.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use anyhow::Context;
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
