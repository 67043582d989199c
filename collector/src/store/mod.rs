//! Embedded storage engines, one per signal. Stores know nothing about HTTP,
//! OTLP or each other; they take `model` types and own their on-disk formats.

pub mod logs;
pub mod metrics;
pub mod traces;

use crate::codec::CodecError;
use crate::frame::FrameError;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store i/o failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("index failed: {0}")]
    Index(#[from] sled::Error),
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// Data that cannot be framed (too large); damaged frames read back are
    /// `Corrupt` or cut as torn tails instead.
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("search index failed: {0}")]
    Search(String),
    #[error("corrupt store data: {0}")]
    Corrupt(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
