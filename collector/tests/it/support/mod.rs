//! Helpers only the daemon's tests need.

pub mod prom;
pub mod prometheus;
pub mod remote_write;
pub mod shop_fixture;

/// The `strand` binary Cargo built for these tests, for `Strand::spawn`.
pub const STRAND_BINARY: &str = env!("CARGO_BIN_EXE_strand");
