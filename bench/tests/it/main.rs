//! End-to-end tests of `strand-bench`: the bench binary drives the strand
//! binary of this build.

mod idle;
