//! The one checksummed frame format behind every crash-safe append: WAL
//! records, span blocks and search tables, and the metric store's series log
//! and chunk files.
//!
//! A frame is `[payload len u32][crc32 of the payload u32][payload]`, little
//! endian. Files of frames are only ever appended to, so a crash can leave
//! at most one torn frame, at the end; [`read_prefix`] (or [`Reader`])
//! returns the intact frames before it and where it starts, and the owner of
//! the file cuts it there. What a payload holds is up to its owner.
//!
//! Also here: [`read_u32_le`] and friends, the one place byte slices become
//! integers, so no parser indexes past a slice's end.

use std::io::{self, Read};

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

/// Reads frames one after the other from a stream.
pub struct Reader<R> {
    inner: R,
    offset: u64,
    payload: Vec<u8>,
}

impl<R: Read> Reader<R> {
    pub fn new(inner: R) -> Reader<R> {
        Reader {
            inner,
            offset: 0,
            payload: Vec::new(),
        }
    }

    /// Bytes of the intact frames read so far; once [`Reader::next`] has
    /// failed other than with `Io`, where the damaged tail starts.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next frame's payload, `None` at a clean end. Any error but `Io`
    /// means the frame at [`Reader::offset`] is torn or corrupt: nothing from
    /// there on can be trusted, so stop reading.
    pub fn next(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let mut header = [0u8; HEADER_LEN];
        match read_full(&mut self.inner, &mut header)? {
            0 => return Ok(None),
            HEADER_LEN => {}
            _ => return Err(FrameError::Truncated),
        }
        let (len, crc) = parse_header(&header)?;
        self.payload.clear();
        // `take` + `read_to_end` grows the buffer as bytes arrive, rather
        // than trusting the length with one allocation up front.
        (&mut self.inner)
            .take(len as u64)
            .read_to_end(&mut self.payload)?;
        if self.payload.len() < len {
            return Err(FrameError::Truncated);
        }
        if crc32fast::hash(&self.payload) != crc {
            return Err(FrameError::Checksum);
        }
        self.offset += (HEADER_LEN + len) as u64;
        Ok(Some(&self.payload))
    }
}

/// Fills `buf` as far as the stream allows; returns how much it filled.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The intact start of a stream of frames, as [`read_prefix`] found it.
#[derive(Debug)]
pub struct Prefix {
    /// Bytes of whole, intact frames: the stream's length, or where a torn or
    /// corrupt tail starts, which the caller cuts.
    pub len: u64,
    /// What is wrong at `len`, when the stream does not end there.
    pub damage: Option<FrameError>,
}

/// Calls `each` with every intact frame's payload and the payload's offset in
/// the stream, from the start up to the end or the first damaged frame.
/// I/O errors and errors from `each` end the read and are returned.
pub fn read_prefix<E: From<io::Error>>(
    stream: impl Read,
    mut each: impl FnMut(u64, &[u8]) -> Result<(), E>,
) -> Result<Prefix, E> {
    let mut reader = Reader::new(stream);
    loop {
        let start = reader.offset();
        match reader.next() {
            Ok(Some(payload)) => each(start + HEADER_LEN as u64, payload)?,
            Ok(None) => {
                return Ok(Prefix {
                    len: start,
                    damage: None,
                });
            }
            Err(FrameError::Io(error)) => return Err(error.into()),
            Err(damage) => {
                return Ok(Prefix {
                    len: start,
                    damage: Some(damage),
                });
            }
        }
    }
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

    /// What `read_prefix` returns for `bytes`: payloads, their offsets, and
    /// the intact length.
    fn read_all(bytes: &[u8]) -> (Vec<Vec<u8>>, Vec<u64>, Prefix) {
        let (mut payloads, mut offsets) = (Vec::new(), Vec::new());
        let prefix = read_prefix(bytes, |offset, payload| {
            offsets.push(offset);
            payloads.push(payload.to_vec());
            Ok::<_, io::Error>(())
        })
        .unwrap();
        (payloads, offsets, prefix)
    }

    #[test]
    fn an_impossible_length_is_refused_before_reading_the_payload() {
        let mut bytes = vec![0xff; HEADER_LEN];
        bytes.extend_from_slice(b"payload");
        assert!(matches!(decode(&bytes), Err(FrameError::TooLong(_))));
        let (payloads, _, prefix) = read_all(&bytes);
        assert!(payloads.is_empty());
        assert_eq!(prefix.len, 0);
        assert!(matches!(prefix.damage, Some(FrameError::TooLong(_))));
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

    proptest! {
        /// Cut anywhere, a stream reads back exactly the frames that are whole
        /// before the cut, and the intact length is where the last one ends.
        #[test]
        fn truncation_keeps_exactly_the_whole_frames(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..6),
        ) {
            let (bytes, ends) = encode(&payloads);
            for cut in 0..=bytes.len() {
                let whole = ends.iter().take_while(|&&end| end <= cut).count();
                let intact = if whole == 0 { 0 } else { ends[whole - 1] };
                let (got, offsets, prefix) = read_all(&bytes[..cut]);
                prop_assert_eq!(&got[..], &payloads[..whole]);
                prop_assert_eq!(prefix.len, intact as u64);
                prop_assert_eq!(prefix.damage.is_some(), cut != intact);
                let starts = std::iter::once(0).chain(ends.iter().copied());
                for (offset, start) in offsets.iter().zip(starts) {
                    prop_assert_eq!(*offset, (start + HEADER_LEN) as u64);
                }
                match decode(&bytes[..cut]) {
                    Ok((payload, len)) => {
                        prop_assert_eq!(payload, &payloads[0][..]);
                        prop_assert_eq!(len, ends[0]);
                    }
                    Err(_) => prop_assert!(ends.first().is_none_or(|&end| cut < end)),
                }
            }
        }

        /// Bytes changed from some frame on: the frames before it are read
        /// back, nothing from it on.
        #[test]
        fn corruption_ends_the_intact_prefix_where_it_starts(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..6),
            damaged in any::<prop::sample::Index>(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), 1..=255u8), 1..4),
        ) {
            let (mut bytes, ends) = encode(&payloads);
            let frame = damaged.index(payloads.len());
            let start = if frame == 0 { 0 } else { ends[frame - 1] };
            let (first, rest) = flips.split_first().expect("at least one");
            // The first flip lands in the damaged frame itself, the others
            // anywhere after it (so none undoes it).
            let first_at = start + first.0.index(ends[frame] - start);
            bytes[first_at] ^= first.1;
            let after = first_at + 1;
            let len = bytes.len();
            if after < len {
                for (at, mask) in rest {
                    bytes[after + at.index(len - after)] ^= mask;
                }
            }
            let (got, _, prefix) = read_all(&bytes);
            prop_assert_eq!(&got[..], &payloads[..frame]);
            prop_assert_eq!(prefix.len, start as u64);
            prop_assert!(prefix.damage.is_some());
        }
    }
}
