//! The `strand` binary: parses flags, sets up logging, runs the daemon until
//! SIGINT or SIGTERM.

use std::process::ExitCode;

use strand::{Config, Listeners};
use tracing_subscriber::EnvFilter;

/// Ingest allocates and frees millions of small attribute strings per second
/// across threads; mimalloc does that with far less time and fragmentation
/// than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let config = match Config::from_command_line(std::env::args_os()) {
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
