//! The sled key layout of the trace store. One tree holds every key, each kind
//! under its own one-byte prefix. A flush commits its keys, with the WAL
//! checkpoint, in one atomic batch.
//!
//! | prefix | key                                              | value                  |
//! |--------|--------------------------------------------------|------------------------|
//! | `I`    | run id (u64 BE)                                  | `runs::RunMeta`        |
//! | `R`    | block number (u32 BE)                            | `BlockRef`             |
//! | `B`    | newest row start ns (u64 BE), table seq (u64 BE) | `search::TableRef`     |
//! | `O`    | service, 0, span kind byte, operation            | empty                  |
//! | `D`    | hour start ns (u64 BE), parent, 0, child         | calls u64, errors u64  |
//! | `M`    | name                                             | metadata               |
//! | `M`    | `segment/`, segment id (u32 BE)                  | committed length u64   |
//! | `M`    | `segment_newest/`, segment id (u32 BE)           | newest span ns u64     |
//!
//! Which blocks hold a trace is in run files (see `runs`), one `I` key per
//! run. Where a block is is said once, in its `R` key.
//!
//! Versions 2 and 3 held that in a `T` key per trace and block: trace id
//! (version 2: all of it, version 3: its first 8 bytes) and block number,
//! which sled wrote several times over in its log and held in memory.
//! `TraceStore::open` rewrites such an index into one run (version 2 by
//! way of version 3's keys).
//!
//! Names are stored with NUL bytes replaced at ingest, so 0 separates fields.
//!
//! Retention drops whole segments: one batch removes their `M` keys, the `R`
//! keys of the blocks and the `B` keys of the tables in them, and the `D`
//! keys of hours past the cutoff. Run entries of blocks without an `R` key
//! read as nothing until a merge leaves them out. Segments committed before
//! `segment_newest/` existed have none; their file's modification time
//! stands in.

use crate::frame;
use crate::model::{SpanKind, TraceId};
use crate::store::{Result, StoreError};

pub const TRACE_RUNS: u8 = b'I';
/// Versions 2 and 3's key per trace and block.
pub const TRACE_BLOCKS: u8 = b'T';
pub const BLOCK_REFS: u8 = b'R';
pub const SEARCH_TABLES: u8 = b'B';
pub const OPERATIONS: u8 = b'O';
pub const DEPENDENCIES: u8 = b'D';

pub const META_CHECKPOINT: &[u8] = b"Mcheckpoint";
pub const META_NEXT_BLOCK: &[u8] = b"Mnext_block";
/// Version 3: block numbers a flush in progress may have used in `T` keys.
pub const META_RESERVED_BLOCKS: &[u8] = b"Mreserved_blocks";
pub const META_FORMAT: &[u8] = b"Mformat";
pub const META_SEGMENT_PREFIX: &[u8] = b"Msegment/";
/// Per segment, the newest start or end time of a span in it: its age for
/// retention.
pub const META_SEGMENT_NEWEST_PREFIX: &[u8] = b"Msegment_newest/";
/// Version 3: where the sweep of `T` keys into dropped segments went on.
pub const META_TRACE_SWEEP: &[u8] = b"Mtrace_sweep";
/// Bumped when the layout above, or the block and search table format of
/// the segment files it points into, changes incompatibly.
pub const FORMAT_VERSION: u32 = 4;
/// The version whose `T` keys hold 8 bytes of the id; `TraceStore::open`
/// rewrites them into a run. Its segment files are read as they are.
pub const TRACE_KEYS_FORMAT_VERSION: u32 = 3;
/// The version whose `T` keys hold the whole id; `TraceStore::open`
/// rewrites them as version 3's first.
pub const WHOLE_ID_FORMAT_VERSION: u32 = 2;

/// How much of a trace id a version-3 `T` key holds.
const TRACE_KEY_ID_BYTES: usize = 8;
const TRACE_KEY_LEN: usize = 1 + TRACE_KEY_ID_BYTES + 4;

pub const HOUR_NANOS: u64 = 3_600 * 1_000_000_000;

pub fn trace_blocks_prefix(trace_id: &TraceId) -> [u8; 1 + TRACE_KEY_ID_BYTES] {
    let mut key = [0u8; 1 + TRACE_KEY_ID_BYTES];
    key[0] = TRACE_BLOCKS;
    key[1..].copy_from_slice(&trace_id[..TRACE_KEY_ID_BYTES]);
    key
}

pub fn trace_block_key(trace_id: &TraceId, block: u32) -> [u8; TRACE_KEY_LEN] {
    let mut key = [0u8; TRACE_KEY_LEN];
    key[..1 + TRACE_KEY_ID_BYTES].copy_from_slice(&trace_blocks_prefix(trace_id));
    key[1 + TRACE_KEY_ID_BYTES..].copy_from_slice(&block.to_be_bytes());
    key
}

/// A version-3 `T` key's entry in a run: the id's first 8 bytes (the key
/// of a `runs::RunKey::IdPrefix` run) and the block number.
pub fn parse_trace_key(key: &[u8]) -> Result<(u64, u32)> {
    let block = trace_key_block(key)?;
    let prefix = frame::read_u64_be(key, 1).expect("length checked");
    Ok((prefix, block))
}

/// The block number of a `T` key.
pub fn trace_key_block(key: &[u8]) -> Result<u32> {
    frame::read_u32_be(key, 1 + TRACE_KEY_ID_BYTES)
        .filter(|_| key.len() == TRACE_KEY_LEN)
        .ok_or_else(|| StoreError::Corrupt("trace key of the wrong length".into()))
}

/// A version-2 `T` key's trace id and block number, `None` for any other key.
pub fn parse_v2_trace_key(key: &[u8]) -> Option<(TraceId, u64)> {
    let body = key
        .strip_prefix(&[TRACE_BLOCKS])
        .filter(|b| b.len() == 24)?;
    let trace_id = body[..16].try_into().ok()?;
    Some((trace_id, frame::read_u64_be(body, 16)?))
}

/// A `T` key as version 2 wrote it, for tests of its rewrite.
#[cfg(test)]
pub fn v2_trace_key(trace_id: &TraceId, block_seq: u64) -> Vec<u8> {
    let mut key = vec![TRACE_BLOCKS];
    key.extend_from_slice(trace_id);
    key.extend_from_slice(&block_seq.to_be_bytes());
    key
}

pub fn block_ref_key(block: u32) -> [u8; 5] {
    let mut key = [BLOCK_REFS; 5];
    key[1..].copy_from_slice(&block.to_be_bytes());
    key
}

/// The block number of an `R` key.
pub fn block_of_ref_key(key: &[u8]) -> Result<u32> {
    frame::read_u32_be(key, 1)
        .filter(|_| key.len() == 5)
        .ok_or_else(|| StoreError::Corrupt("block key of the wrong length".into()))
}

pub fn run_key(run: u64) -> [u8; 9] {
    let mut key = [TRACE_RUNS; 9];
    key[1..].copy_from_slice(&run.to_be_bytes());
    key
}

/// The run id of an `I` key.
pub fn run_of_key(key: &[u8]) -> Result<u64> {
    frame::read_u64_be(key, 1)
        .filter(|_| key.len() == 9)
        .ok_or_else(|| StoreError::Corrupt("run key of the wrong length".into()))
}

/// A block's number as its keys hold it. Blocks are numbered from 0, two
/// or three a flush: 4 billion of them take decades, so a larger number
/// means a damaged `Mnext_block`.
pub fn block_number(seq: u64) -> Result<u32> {
    u32::try_from(seq)
        .map_err(|_| StoreError::Corrupt(format!("block number {seq} is past the index's range")))
}

pub fn search_table_key(max_start_nanos: u64, table_seq: u64) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = SEARCH_TABLES;
    key[1..9].copy_from_slice(&max_start_nanos.to_be_bytes());
    key[9..17].copy_from_slice(&table_seq.to_be_bytes());
    key
}

/// The newest start time in the table a `B` key points at.
pub fn parse_search_table_key(key: &[u8]) -> Result<u64> {
    frame::read_u64_be(key, 1)
        .ok_or_else(|| StoreError::Corrupt("search table key too short".into()))
}

pub fn operation_key(service: &str, kind: SpanKind, operation: &str) -> Vec<u8> {
    let mut key = vec![OPERATIONS];
    key.extend_from_slice(service.as_bytes());
    key.push(0);
    key.push(kind_byte(kind));
    key.extend_from_slice(operation.as_bytes());
    key
}

/// Splits an `O` key into service, kind and operation.
pub fn parse_operation_key(key: &[u8]) -> Option<(String, SpanKind, String)> {
    let body = key.strip_prefix(&[OPERATIONS])?;
    let nul = body.iter().position(|&b| b == 0)?;
    let service = std::str::from_utf8(&body[..nul]).ok()?;
    let kind = kind_from_byte(*body.get(nul + 1)?)?;
    let operation = std::str::from_utf8(body.get(nul + 2..)?).ok()?;
    Some((service.to_string(), kind, operation.to_string()))
}

pub fn dependency_key(hour_start_nanos: u64, parent: &str, child: &str) -> Vec<u8> {
    let mut key = vec![DEPENDENCIES];
    key.extend_from_slice(&hour_start_nanos.to_be_bytes());
    key.extend_from_slice(parent.as_bytes());
    key.push(0);
    key.extend_from_slice(child.as_bytes());
    key
}

/// Splits a `D` key into hour, parent and child.
pub fn parse_dependency_key(key: &[u8]) -> Option<(u64, String, String)> {
    let body = key.strip_prefix(&[DEPENDENCIES])?;
    let hour = frame::read_u64_be(body, 0)?;
    let names = &body[8..];
    let nul = names.iter().position(|&b| b == 0)?;
    let parent = std::str::from_utf8(&names[..nul]).ok()?;
    let child = std::str::from_utf8(&names[nul + 1..]).ok()?;
    Some((hour, parent.to_string(), child.to_string()))
}

pub fn encode_counts(calls: u64, errors: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&calls.to_be_bytes());
    out[8..].copy_from_slice(&errors.to_be_bytes());
    out
}

pub fn decode_counts(bytes: &[u8]) -> (u64, u64) {
    let read = |offset| frame::read_u64_be(bytes, offset).unwrap_or(0);
    (read(0), read(8))
}

pub fn segment_key(segment: u32) -> Vec<u8> {
    let mut key = META_SEGMENT_PREFIX.to_vec();
    key.extend_from_slice(&segment.to_be_bytes());
    key
}

pub fn segment_newest_key(segment: u32) -> Vec<u8> {
    let mut key = META_SEGMENT_NEWEST_PREFIX.to_vec();
    key.extend_from_slice(&segment.to_be_bytes());
    key
}

pub fn decode_u64(bytes: &[u8]) -> Result<u64> {
    frame::read_u64_be(bytes, 0)
        .filter(|_| bytes.len() == 8)
        .ok_or_else(|| StoreError::Corrupt("metadata value has the wrong length".into()))
}

fn kind_byte(kind: SpanKind) -> u8 {
    match kind {
        SpanKind::Unspecified => 0,
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn kind_from_byte(byte: u8) -> Option<SpanKind> {
    Some(match byte {
        0 => SpanKind::Unspecified,
        1 => SpanKind::Internal,
        2 => SpanKind::Server,
        3 => SpanKind::Client,
        4 => SpanKind::Producer,
        5 => SpanKind::Consumer,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        assert_eq!(trace_key_block(&trace_block_key(&[3; 16], 9)).unwrap(), 9);
        assert!(trace_key_block(&trace_blocks_prefix(&[3; 16])).is_err());
        assert!(trace_block_key(&[3; 16], u32::MAX).starts_with(&trace_blocks_prefix(&[3; 16])));
        assert_eq!(
            parse_trace_key(&trace_block_key(&[3; 16], 9)).unwrap(),
            (u64::from_be_bytes([3; 8]), 9)
        );
        assert_eq!(block_of_ref_key(&block_ref_key(9)).unwrap(), 9);
        assert_eq!(run_of_key(&run_key(11)).unwrap(), 11);
        assert!(run_of_key(&block_ref_key(9)).is_err());
        assert_eq!(block_number(7).unwrap(), 7);
        assert!(block_number(1 << 32).is_err());
        assert_eq!(
            parse_v2_trace_key(&v2_trace_key(&[4; 16], 9)),
            Some(([4; 16], 9))
        );
        assert_eq!(parse_v2_trace_key(&trace_block_key(&[4; 16], 9)), None);

        let key = search_table_key(42, 7);
        assert_eq!(parse_search_table_key(&key).unwrap(), 42);
        assert!(search_table_key(42, u64::MAX) < search_table_key(43, 0));

        let key = operation_key("order", SpanKind::Client, "GET /x");
        assert_eq!(
            parse_operation_key(&key),
            Some(("order".into(), SpanKind::Client, "GET /x".into()))
        );

        let key = dependency_key(HOUR_NANOS, "gateway", "order");
        assert_eq!(
            parse_dependency_key(&key),
            Some((HOUR_NANOS, "gateway".into(), "order".into()))
        );
        assert_eq!(decode_counts(&encode_counts(3, 1)), (3, 1));
    }
}
