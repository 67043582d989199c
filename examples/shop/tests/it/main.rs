//! The shop's tests in one binary: the four services end to end, with a real
//! Strand (in-process) receiving their telemetry (`end_to_end`), and the
//! deployment files checked against the code (`deploy`).

mod deploy;
mod end_to_end;
mod support;
