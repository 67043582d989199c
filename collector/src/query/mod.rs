//! Query semantics on top of the stores: what matches, in which order.

pub mod logs;
pub mod traces;
