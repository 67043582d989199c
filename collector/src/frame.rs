//! The one checksummed frame format behind every crash-safe append: WAL
//! records, span blocks and search tables, and the metric store's series log
//! and chunk files.
//!
//! A frame is `[payload len u32][crc32 of the payload u32][payload]`, little
//! endian. Files of frames are only ever appended to, so a crash can leave
//! at most one torn frame, at the end. Damage elsewhere (a flipped bit, a
//! lost page) is not a torn tail: [`scan`] skips it and resynchronises on the
//! next intact frame, so valid data after it is never cut; only damage no
//! intact frame follows is a tail the owner of the file cuts. What a payload
//! holds is up to its owner.
//!
//! Also here: [`read_u32_le`] and friends, the one place byte slices become
//! integers, so no parser indexes past a slice's end.

use std::io;
use std::ops::Range;

/// Bytes before the payload: its length and its checksum.
pub const HEADER_LEN: usize = 8;
/// Longer payloads are never written, so a longer length read back is
/// corruption. Readers also allocate only as payload bytes actually arrive,
/// so a corrupt length near this limit costs no memory either.
pub const MAX_PAYLOAD_LEN: usize = 1 << 30;

/// Why a frame could not be written or read back.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The input ends inside the frame: a torn write.
    #[error("frame is cut short")]
    Truncated,
    #[error("frame payload of {0} bytes is over the limit of {MAX_PAYLOAD_LEN}")]
    TooLong(u64),
    #[error("frame checksum mismatch")]
    Checksum,
    #[error("reading frames failed: {0}")]
    Io(#[from] io::Error),
}

/// Appends one frame holding `payload` to `out`.
pub fn append(out: &mut Vec<u8>, payload: &[u8]) -> Result<(), FrameError> {
    out.extend_from_slice(&header(&[payload])?);
    out.extend_from_slice(payload);
    Ok(())
}

/// The header of a frame whose payload is `parts` one after the other, for
/// writers that stream the parts rather than copy them together first.
pub fn header(parts: &[&[u8]]) -> Result<[u8; HEADER_LEN], FrameError> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let len = u32::try_from(len)
        .ok()
        .filter(|&l| l as usize <= MAX_PAYLOAD_LEN)
        .ok_or(FrameError::TooLong(len as u64))?;
    let mut crc = crc32fast::Hasher::new();
    for part in parts {
        crc.update(part);
    }
    let mut header = [0u8; HEADER_LEN];
    header[0..4].copy_from_slice(&len.to_le_bytes());
    header[4..8].copy_from_slice(&crc.finalize().to_le_bytes());
    Ok(header)
}

/// The payload length and checksum a header holds, the length checked
/// against the limit.
fn parse_header(header: &[u8]) -> Result<(usize, u32), FrameError> {
    let (Some(len), Some(crc)) = (read_u32_le(header, 0), read_u32_le(header, 4)) else {
        return Err(FrameError::Truncated);
    };
    let len = len as usize;
    if len > MAX_PAYLOAD_LEN {
        return Err(FrameError::TooLong(len as u64));
    }
    Ok((len, crc))
}

/// Checks the frame at the start of `bytes`; returns its payload and the
/// frame's whole length (where the next frame would start).
pub fn decode(bytes: &[u8]) -> Result<(&[u8], usize), FrameError> {
    let (len, crc) = parse_header(bytes)?;
    let payload = bytes
        .get(HEADER_LEN..HEADER_LEN + len)
        .ok_or(FrameError::Truncated)?;
    if crc32fast::hash(payload) != crc {
        return Err(FrameError::Checksum);
    }
    Ok((payload, HEADER_LEN + len))
}

/// Where the frames of a whole file are, as [`scan`] found them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// The payload of every intact frame, in file order.
    pub frames: Vec<Range<usize>>,
    /// Damaged bytes in the middle of the file, each followed by an intact
    /// frame: skipped, never cut, since what follows is good data.
    pub skipped: Vec<Range<usize>>,
    /// Where a damaged tail starts that no intact frame follows (a torn
    /// write, or damage in the last frames): the owner cuts the file here.
    pub torn_tail: Option<usize>,
}

/// Finds every intact frame of a file held in `bytes`, resynchronising past
/// damage in the middle rather than stopping at it: after a bad checksum or
/// an impossible length, the next frame is the first offset where a whole
/// frame checks out — its length within the file, its checksum right, and
/// `plausible(payload)` true (the owner's decoder, which makes a false
/// resynchronisation on a chance checksum match over random bytes, already 1
/// in 2^32, rarer still). Only damage with no intact frame after it is a torn
/// tail.
pub fn scan(bytes: &[u8], plausible: impl Fn(&[u8]) -> bool) -> Scan {
    let intact_at = |at: usize| -> Option<usize> {
        let (payload, len) = decode(bytes.get(at..)?).ok()?;
        plausible(payload).then_some(at + len)
    };
    let mut scan = Scan::default();
    let mut at = 0;
    while at < bytes.len() {
        if let Some(end) = intact_at(at) {
            scan.frames.push(at + HEADER_LEN..end);
            at = end;
            continue;
        }
        // A length past the end of the file cannot start a frame: checking
        // it first keeps the search from hashing most offsets at all.
        let next = (at + 1..bytes.len().saturating_sub(HEADER_LEN - 1)).find(|&candidate| {
            read_u32_le(bytes, candidate)
                .is_some_and(|len| len as usize <= bytes.len() - candidate - HEADER_LEN)
                && intact_at(candidate).is_some()
        });
        match next {
            Some(next) => {
                scan.skipped.push(at..next);
                at = next;
            }
            None => {
                scan.torn_tail = Some(at);
                break;
            }
        }
    }
    scan
}

/// `N` bytes of `bytes` from `offset`, if it has them.
fn array_at<const N: usize>(bytes: &[u8], offset: usize) -> Option<[u8; N]> {
    bytes.get(offset..offset.checked_add(N)?)?.try_into().ok()
}

/// The little-endian `u32` at `offset`, if `bytes` is long enough.
pub fn read_u32_le(bytes: &[u8], offset: usize) -> Option<u32> {
    array_at(bytes, offset).map(u32::from_le_bytes)
}

/// The little-endian `u64` at `offset`, if `bytes` is long enough.
pub fn read_u64_le(bytes: &[u8], offset: usize) -> Option<u64> {
    array_at(bytes, offset).map(u64::from_le_bytes)
}

/// The big-endian `u32` at `offset` (index keys sort by their bytes), if
/// `bytes` is long enough.
pub fn read_u32_be(bytes: &[u8], offset: usize) -> Option<u32> {
    array_at(bytes, offset).map(u32::from_be_bytes)
}

/// The big-endian `u64` at `offset`, if `bytes` is long enough.
pub fn read_u64_be(bytes: &[u8], offset: usize) -> Option<u64> {
    array_at(bytes, offset).map(u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Frames for `payloads` one after the other, and where each one ends.
    fn encode(payloads: &[Vec<u8>]) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for payload in payloads {
            append(&mut bytes, payload).unwrap();
            ends.push(bytes.len());
        }
        (bytes, ends)
    }

    /// The payloads `scan` finds in `bytes`.
    fn scanned(bytes: &[u8], scan: &Scan) -> Vec<Vec<u8>> {
        scan.frames
            .iter()
            .map(|r| bytes[r.clone()].to_vec())
            .collect()
    }

    #[test]
    fn an_impossible_length_is_refused_before_reading_the_payload() {
        let mut bytes = vec![0xff; HEADER_LEN];
        bytes.extend_from_slice(b"payload");
        assert!(matches!(decode(&bytes), Err(FrameError::TooLong(_))));
        let scan = scan(&bytes, |_| true);
        assert!(scan.frames.is_empty());
        assert_eq!(scan.torn_tail, Some(0));
    }

    #[test]
    fn a_header_covers_its_parts_as_one_payload() {
        let mut streamed = header(&[b"ab", b"", b"cde"]).unwrap().to_vec();
        streamed.extend_from_slice(b"abcde");
        let mut whole = Vec::new();
        append(&mut whole, b"abcde").unwrap();
        assert_eq!(streamed, whole);
        assert_eq!(decode(&whole).unwrap(), (&b"abcde"[..], whole.len()));
    }

    #[test]
    fn integers_are_read_only_from_inside_the_slice() {
        let bytes = [1, 0, 0, 0, 0, 0, 0, 2];
        assert_eq!(read_u32_le(&bytes, 0), Some(1));
        assert_eq!(read_u32_be(&bytes, 4), Some(2));
        assert_eq!(read_u64_le(&bytes, 0), Some(0x0200_0000_0000_0001));
        assert_eq!(read_u64_be(&bytes, 0), Some(0x0100_0000_0000_0002));
        assert_eq!(read_u32_le(&bytes, 5), None);
        assert_eq!(read_u64_be(&bytes, usize::MAX), None);
    }

    #[test]
    fn scan_skips_damage_in_the_middle_and_cuts_only_a_torn_tail() {
        let payloads: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i + 1; 30]).collect();
        let (mut bytes, ends) = encode(&payloads);
        // Flip bytes inside the second frame's payload, then tear the last.
        bytes[ends[0] + HEADER_LEN + 3] ^= 0x40;
        bytes.truncate(ends[4] - 5);
        let scan = scan(&bytes, |p| !p.is_empty());
        let got: Vec<&[u8]> = scan.frames.iter().map(|r| &bytes[r.clone()]).collect();
        assert_eq!(got, [&payloads[0][..], &payloads[2], &payloads[3]]);
        assert_eq!(
            scan.skipped,
            vec![Range {
                start: ends[0],
                end: ends[1]
            }]
        );
        assert_eq!(scan.torn_tail, Some(ends[3]));
    }

    #[test]
    fn scan_resynchronises_after_a_damaged_length() {
        let payloads: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i + 1; 20]).collect();
        let (mut bytes, ends) = encode(&payloads);
        bytes[ends[0]..ends[0] + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let scan = scan(&bytes, |p| !p.is_empty());
        assert_eq!(scan.frames.len(), 2);
        assert_eq!(
            scan.skipped,
            vec![Range {
                start: ends[0],
                end: ends[1]
            }]
        );
        assert_eq!(scan.torn_tail, None);
    }

    proptest! {
        /// Any run of changed bytes and any cut: the scan never panics,
        /// returns every frame that is whole before the cut and does not
        /// overlap the damage, and returns nothing that was not written.
        #[test]
        fn scan_keeps_every_intact_frame_around_damage(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..60), 1..12),
            damage_at in any::<prop::sample::Index>(),
            masks in prop::collection::vec(1..=255u8, 0..64),
            cut in any::<prop::sample::Index>(),
        ) {
            let (mut bytes, ends) = encode(&payloads);
            let cut = bytes.len() - cut.index(bytes.len() / 2 + 1);
            let damage_start = damage_at.index(bytes.len());
            let damage_end = (damage_start + masks.len()).min(bytes.len());
            for (byte, mask) in bytes[damage_start..damage_end].iter_mut().zip(&masks) {
                *byte ^= mask;
            }
            bytes.truncate(cut);
            let scan = scan(&bytes, |p| !p.is_empty());
            let got: Vec<Range<usize>> = scan.frames.clone();
            let starts = std::iter::once(0).chain(ends.iter().copied());
            let written: Vec<Range<usize>> = starts.zip(ends.iter().copied()).map(|(s, e)| s..e).collect();
            for frame in &written {
                let damaged = frame.start < damage_end && damage_start < frame.end;
                if frame.end <= cut && !damaged {
                    prop_assert!(got.contains(&(frame.start + HEADER_LEN..frame.end)), "lost {:?}", frame);
                }
            }
            for payload in &got {
                prop_assert!(written.iter().any(|f| f.start + HEADER_LEN == payload.start && f.end == payload.end));
            }
            let cut_inside_a_frame = !ends.contains(&cut);
            if cut_inside_a_frame {
                prop_assert!(scan.torn_tail.is_some());
            }
        }

        /// Cut anywhere, a file reads back exactly the frames that are whole
        /// before the cut, and the torn tail is where the last one ends.
        #[test]
        fn truncation_keeps_exactly_the_whole_frames(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..40), 0..6),
        ) {
            let (bytes, ends) = encode(&payloads);
            for cut in 0..=bytes.len() {
                let whole = ends.iter().take_while(|&&end| end <= cut).count();
                let intact = if whole == 0 { 0 } else { ends[whole - 1] };
                let scan = scan(&bytes[..cut], |p| !p.is_empty());
                prop_assert_eq!(&scanned(&bytes, &scan)[..], &payloads[..whole]);
                prop_assert_eq!(scan.torn_tail, (cut != intact).then_some(intact));
                prop_assert!(scan.skipped.is_empty());
                match decode(&bytes[..cut]) {
                    Ok((payload, len)) => {
                        prop_assert_eq!(payload, &payloads[0][..]);
                        prop_assert_eq!(len, ends[0]);
                    }
                    Err(_) => prop_assert!(ends.first().is_none_or(|&end| cut < end)),
                }
            }
        }
    }
}
