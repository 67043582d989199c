//! Compressed sample chunks in the Gorilla encoding (Pelkonen et al., VLDB
//! 2015), as Prometheus uses it: timestamps as delta-of-deltas in
//! variable-width buckets, values XORed with their predecessor so that a
//! repeated value costs one bit and a slowly changing one a few.
//!
//! A chunk is self-describing: a 16-bit header (the sample count in the low
//! 12 bits, the encoding in the high 4), then the bit stream. Regular
//! scrapes of counters and gauges take one to two bytes per sample.
//!
//! Chunks in memory are always Gorilla (appends are cheap). When a flush
//! writes a sealed chunk or snapshots an open one, [`compact`] re-encodes it
//! in the smallest of the encodings that give back every value bit for bit:
//!
//! - [`XOR`] (0): Gorilla, for any values; every chunk of format version 1.
//! - [`DECIMAL`] (1): values that are integers at a decimal scale (`m /
//!   10^k`, as the text exposition format's parser makes them, or `m *
//!   10^-k`, as an exporter multiplying by its resolution makes them) are
//!   stored as those integers `m`, delta or delta-of-delta coded in
//!   variable-width buckets. Counters that grow by a few units and gauges
//!   with few distinct values take a few bits per sample instead of the
//!   dozens an XOR of their floats needs; a constant costs one bit.

use crate::model::MetricSample;

/// Samples per chunk before it is sealed (Prometheus's figure: beyond ~120
/// the compression gain is marginal and decoding a query range costs more).
pub const SAMPLES_PER_CHUNK: u16 = 120;

/// The Gorilla encoding (timestamps as delta-of-deltas, values XORed).
pub const XOR: u8 = 0;
/// Gorilla's timestamps, values as integers at a decimal scale.
pub const DECIMAL: u8 = 1;

/// Bits of the header holding the sample count; the rest is the encoding.
const COUNT_BITS: u32 = 12;
const COUNT_MASK: u16 = (1 << COUNT_BITS) - 1;

/// `10^k` for the decimal scales (exact in an `f64`).
const POWERS: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];
/// The `f64` nearest `10^-k`, as an exporter's resolution constant is.
const RESOLUTIONS: [f64; 16] = [
    1e0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10, 1e-11, 1e-12, 1e-13, 1e-14,
    1e-15,
];
/// Largest magnitude of a decimal chunk's integers: every integer up to it
/// is exact in an `f64`, and their deltas of deltas fit an `i64`.
const MAX_DECIMAL: f64 = 9_007_199_254_740_992.0;

/// An open chunk that samples are appended to, oldest first.
#[derive(Clone, Debug)]
pub struct ChunkWriter {
    bits: BitWriter,
    count: u16,
    min_t: i64,
    last_t: i64,
    last_delta: i64,
    last_value: u64,
    leading: u8,
    trailing: u8,
}

impl Default for ChunkWriter {
    fn default() -> Self {
        ChunkWriter {
            bits: BitWriter::default(),
            count: 0,
            min_t: 0,
            last_t: 0,
            last_delta: 0,
            last_value: 0,
            leading: u8::MAX,
            trailing: 0,
        }
    }
}

impl ChunkWriter {
    /// Appends a sample; the caller guarantees `t` is newer than the last one.
    pub fn push(&mut self, t: i64, v: f64) {
        let value = v.to_bits();
        if self.count == 0 {
            self.bits.write(t as u64, 64);
            self.bits.write(value, 64);
            self.min_t = t;
        } else {
            let delta = t.wrapping_sub(self.last_t);
            write_dod(&mut self.bits, delta.wrapping_sub(self.last_delta));
            self.last_delta = delta;
            self.write_value(value);
        }
        self.last_t = t;
        self.last_value = value;
        self.count += 1;
    }

    fn write_value(&mut self, value: u64) {
        let xor = value ^ self.last_value;
        if xor == 0 {
            self.bits.write(0, 1);
            return;
        }
        self.bits.write(1, 1);
        let leading = (xor.leading_zeros() as u8).min(31);
        let trailing = xor.trailing_zeros() as u8;
        if self.leading != u8::MAX && leading >= self.leading && trailing >= self.trailing {
            let significant = 64 - self.leading - self.trailing;
            self.bits.write(0, 1);
            self.bits
                .write(xor >> self.trailing, u32::from(significant));
        } else {
            self.leading = leading;
            self.trailing = trailing;
            let significant = 64 - leading - trailing;
            self.bits.write(1, 1);
            self.bits.write(u64::from(leading), 5);
            // 64 significant bits do not fit in 6 bits; 0 stands for 64.
            self.bits.write(u64::from(significant % 64), 6);
            self.bits.write(xor >> trailing, u32::from(significant));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether the chunk has reached its size and should be sealed.
    pub fn is_full(&self) -> bool {
        self.count >= SAMPLES_PER_CHUNK
    }

    /// The newest sample's time and value bits.
    pub fn last(&self) -> Option<(i64, u64)> {
        (self.count > 0).then_some((self.last_t, self.last_value))
    }

    /// Time of the first and the last sample; meaningless when empty.
    pub fn time_range(&self) -> (i64, i64) {
        (self.min_t, self.last_t)
    }

    /// The chunk's Gorilla encoding, readable by [`decode`]: cheap, for
    /// reading the open chunk.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + self.bits.bytes.len());
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&self.bits.bytes);
        out
    }

    /// Rebuilds a writer from an encoding, so appending can continue where a
    /// snapshot left off.
    pub fn resume(bytes: &[u8]) -> Result<ChunkWriter, ChunkError> {
        let mut writer = ChunkWriter::default();
        for sample in decode(bytes)? {
            writer.push(sample.timestamp_ms, sample.value);
        }
        Ok(writer)
    }
}

/// `chunk` in the smallest encoding that keeps every value's bits (see the
/// module documentation): what flushes write, sealed chunks and snapshots.
/// `None` when the chunk does not decode or is that small already, so the
/// caller keeps the bytes it has.
pub fn compact(chunk: &[u8]) -> Option<Vec<u8>> {
    let is_xor = chunk
        .first_chunk::<2>()
        .is_some_and(|header| u16::from_le_bytes(*header) >> COUNT_BITS == u16::from(XOR));
    if !is_xor {
        return None;
    }
    let samples = decode(chunk).ok()?;
    encode_decimal(&samples).filter(|decimal| decimal.len() < chunk.len())
}

/// A chunk whose bytes do not decode.
#[derive(Debug, thiserror::Error)]
#[error("corrupt chunk: {0}")]
pub struct ChunkError(&'static str);

/// Decodes every sample of a chunk, in any encoding.
pub fn decode(bytes: &[u8]) -> Result<Vec<MetricSample>, ChunkError> {
    let (header, stream) = bytes
        .split_first_chunk::<2>()
        .ok_or(ChunkError("shorter than its header"))?;
    let header = u16::from_le_bytes(*header);
    let count = header & COUNT_MASK;
    let reader = BitReader::new(stream);
    match (header >> COUNT_BITS) as u8 {
        XOR => decode_xor(count, reader),
        DECIMAL => decode_decimal(count, reader),
        _ => Err(ChunkError("unknown encoding")),
    }
}

/// The integers `m` and scale of a decimal chunk: `(m, k, multiply)` such
/// that every value is `m / 10^k` (or `m * 10^-k` with `multiply`) to the
/// bit; `None` when no scale fits every value.
fn decimal_scale(samples: &[MetricSample]) -> Option<(Vec<i64>, u8, bool)> {
    let fits = |k: usize, multiply: bool| -> Option<Vec<i64>> {
        samples
            .iter()
            .map(|s| {
                let v = s.value;
                let scaled = if multiply {
                    v / RESOLUTIONS[k]
                } else {
                    v * POWERS[k]
                };
                let rounded = scaled.round();
                if rounded.is_nan() || rounded.abs() > MAX_DECIMAL {
                    return None;
                }
                let m = rounded as i64;
                let back = if multiply {
                    m as f64 * RESOLUTIONS[k]
                } else {
                    m as f64 / POWERS[k]
                };
                // -0.0 comes back as 0.0, and is left to XOR.
                (back.to_bits() == v.to_bits()).then_some(m)
            })
            .collect()
    };
    (0..POWERS.len()).find_map(|k| {
        let found = fits(k, false).map(|m| (m, k as u8, false));
        found.or_else(|| (k > 0).then(|| fits(k, true).map(|m| (m, k as u8, true)))?)
    })
}

/// How a [`DECIMAL`] chunk codes its integers' deltas (each divided by
/// their greatest common divisor): in [`write_int`]'s buckets, the same for
/// their deltas (delta-of-delta), or packed at one width above their
/// minimum (frame of reference).
#[derive(Clone, Copy)]
enum Coding {
    Deltas = 0,
    DeltasOfDeltas = 1,
    Packed = 2,
}

/// A chunk of [`DECIMAL`] encoding, or `None` when the values are not
/// decimals: the first timestamp, a byte naming the scale (bit 7: multiply,
/// bits 4 to 6: the [`Coding`], low four bits: `k`), the first integer and
/// the deltas' common divisor; for [`Coding::Packed`] the smallest delta and
/// the width; then each sample's timestamp delta-of-delta as Gorilla's and
/// its integer's delta coded as the byte says, whichever coding is smallest.
fn encode_decimal(samples: &[MetricSample]) -> Option<Vec<u8>> {
    let count = u16::try_from(samples.len()).ok()?;
    if count == 0 || count > COUNT_MASK {
        return None;
    }
    let (integers, k, multiply) = decimal_scale(samples)?;
    // Integers are at most 2^53 apart: deltas and their deltas fit.
    let divisor = integers
        .windows(2)
        .fold(0u64, |g, pair| gcd(g, pair[1].abs_diff(pair[0])))
        .max(1) as i64;
    let deltas: Vec<i64> = integers
        .windows(2)
        .map(|pair| (pair[1] - pair[0]) / divisor)
        .collect();
    let (low, high) = deltas
        .iter()
        .fold((i64::MAX, i64::MIN), |(lo, hi), &d| (lo.min(d), hi.max(d)));
    let width = if deltas.is_empty() {
        0
    } else {
        64 - high.abs_diff(low).leading_zeros()
    };
    let encode = |coding: Coding| {
        let mut bits = BitWriter::default();
        bits.write(samples[0].timestamp_ms as u64, 64);
        bits.write(
            u64::from(k) | (coding as u64) << 4 | u64::from(multiply) << 7,
            8,
        );
        write_int(&mut bits, integers[0]);
        write_int(&mut bits, divisor);
        if let Coding::Packed = coding {
            write_int(&mut bits, if deltas.is_empty() { 0 } else { low });
            bits.write(u64::from(width), 7);
        }
        let (mut last_t, mut last_t_delta, mut last_delta) = (samples[0].timestamp_ms, 0i64, 0i64);
        for (sample, &delta) in samples[1..].iter().zip(&deltas) {
            let t_delta = sample.timestamp_ms.wrapping_sub(last_t);
            write_dod(&mut bits, t_delta.wrapping_sub(last_t_delta));
            match coding {
                Coding::Deltas => write_int(&mut bits, delta),
                Coding::DeltasOfDeltas => write_int(&mut bits, delta - last_delta),
                Coding::Packed => bits.write(delta.abs_diff(low), width),
            }
            (last_t, last_t_delta, last_delta) = (sample.timestamp_ms, t_delta, delta);
        }
        bits.bytes
    };
    let stream = [Coding::Deltas, Coding::DeltasOfDeltas, Coding::Packed]
        .into_iter()
        .map(encode)
        .min_by_key(Vec::len)?;
    let mut out = Vec::with_capacity(2 + stream.len());
    out.extend_from_slice(&(count | u16::from(DECIMAL) << COUNT_BITS).to_le_bytes());
    out.extend_from_slice(&stream);
    Some(out)
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn decode_decimal(count: u16, mut reader: BitReader) -> Result<Vec<MetricSample>, ChunkError> {
    let mut out = Vec::with_capacity(usize::from(count));
    if count == 0 {
        return Ok(out);
    }
    let mut t = reader.read(64)? as i64;
    let scale = reader.read(8)?;
    let k = (scale & 0x0f) as usize;
    let multiply = scale & 0x80 != 0;
    let coding = match (scale >> 4) & 0x07 {
        0 => Coding::Deltas,
        1 => Coding::DeltasOfDeltas,
        2 => Coding::Packed,
        _ => return Err(ChunkError("unknown decimal coding")),
    };
    let value = |m: i64| {
        if k == 0 {
            // Integers: no division by one per sample.
            m as f64
        } else if multiply {
            m as f64 * RESOLUTIONS[k]
        } else {
            m as f64 / POWERS[k]
        }
    };
    let mut m = read_int(&mut reader)?;
    let divisor = read_int(&mut reader)?;
    let (low, width) = match coding {
        Coding::Packed => {
            let low = read_int(&mut reader)?;
            let width = reader.read(7)? as u32;
            if width > 64 {
                return Err(ChunkError("packed width out of range"));
            }
            (low, width)
        }
        _ => (0, 0),
    };
    out.push(MetricSample {
        timestamp_ms: t,
        value: value(m),
    });
    let (mut t_delta, mut delta) = (0i64, 0i64);
    for _ in 1..count {
        t_delta = t_delta.wrapping_add(read_dod(&mut reader)?);
        t = t.wrapping_add(t_delta);
        delta = match coding {
            Coding::Deltas => read_int(&mut reader)?,
            Coding::DeltasOfDeltas => delta.wrapping_add(read_int(&mut reader)?),
            Coding::Packed => low.wrapping_add(reader.read(width)? as i64),
        };
        m = m.wrapping_add(delta.wrapping_mul(divisor));
        out.push(MetricSample {
            timestamp_ms: t,
            value: value(m),
        });
    }
    Ok(out)
}

/// Widths of [`write_int`]'s buckets after their prefixes `10`, `110`,
/// `1110`, `11110` and `11111`.
const INT_BUCKETS: [u32; 5] = [4, 9, 16, 32, 64];

/// Writes a signed integer: `0` alone for zero, else the first bucket of
/// [`INT_BUCKETS`] it fits in (two's complement), after as many one bits as
/// the bucket's rank and a zero (none after the last bucket's five).
fn write_int(bits: &mut BitWriter, value: i64) {
    if value == 0 {
        bits.write(0, 1);
        return;
    }
    let last = INT_BUCKETS.len() - 1;
    let index = INT_BUCKETS
        .iter()
        .position(|&width| {
            let half = 1i64 << (width.min(63) - 1);
            (-half..half).contains(&value)
        })
        .unwrap_or(last);
    let ones = index as u32 + 1;
    if index == last {
        bits.write((1 << ones) - 1, ones);
    } else {
        bits.write(((1 << ones) - 1) << 1, ones + 1);
    }
    bits.write(value as u64, INT_BUCKETS[index]);
}

fn read_int(reader: &mut BitReader) -> Result<i64, ChunkError> {
    let mut ones = 0;
    while ones < INT_BUCKETS.len() && reader.read(1)? == 1 {
        ones += 1;
    }
    if ones == 0 {
        return Ok(0);
    }
    let width = INT_BUCKETS[ones - 1];
    let raw = reader.read(width)?;
    Ok(if width == 64 {
        raw as i64
    } else {
        // Sign-extends the two's complement of `width` bits.
        ((raw << (64 - width)) as i64) >> (64 - width)
    })
}

fn decode_xor(count: u16, mut reader: BitReader) -> Result<Vec<MetricSample>, ChunkError> {
    let mut out = Vec::with_capacity(usize::from(count));
    if count == 0 {
        return Ok(out);
    }
    let mut t = reader.read(64)? as i64;
    let mut value = reader.read(64)?;
    out.push(MetricSample {
        timestamp_ms: t,
        value: f64::from_bits(value),
    });
    let (mut delta, mut leading, mut significant) = (0i64, 0u32, 0u32);
    for _ in 1..count {
        delta = delta.wrapping_add(read_dod(&mut reader)?);
        t = t.wrapping_add(delta);
        if reader.read(1)? == 1 {
            if reader.read(1)? == 1 {
                leading = reader.read(5)? as u32;
                significant = match reader.read(6)? as u32 {
                    0 => 64,
                    n => n,
                };
                if leading + significant > 64 {
                    return Err(ChunkError("value bits out of range"));
                }
            } else if significant == 0 {
                return Err(ChunkError("value reuses a window never set"));
            }
            let trailing = 64 - leading - significant;
            value ^= reader.read(significant)? << trailing;
        }
        out.push(MetricSample {
            timestamp_ms: t,
            value: f64::from_bits(value),
        });
    }
    Ok(out)
}

/// Writes a timestamp delta-of-delta in Gorilla's buckets.
fn write_dod(bits: &mut BitWriter, dod: i64) {
    match dod {
        0 => bits.write(0, 1),
        -8191..=8192 => {
            bits.write(0b10, 2);
            bits.write(dod as u64, 14);
        }
        -65535..=65536 => {
            bits.write(0b110, 3);
            bits.write(dod as u64, 17);
        }
        -524_287..=524_288 => {
            bits.write(0b1110, 4);
            bits.write(dod as u64, 20);
        }
        _ => {
            bits.write(0b1111, 4);
            bits.write(dod as u64, 64);
        }
    }
}

/// Reads what [`write_dod`] wrote.
fn read_dod(reader: &mut BitReader) -> Result<i64, ChunkError> {
    Ok(match reader.read_prefix()? {
        0 => 0,
        1 => sign_extend(reader.read(14)?, 14),
        2 => sign_extend(reader.read(17)?, 17),
        3 => sign_extend(reader.read(20)?, 20),
        _ => reader.read(64)? as i64,
    })
}

/// Reads a bucket's `bits`-bit number. Buckets hold [-(2^(bits-1) - 1),
/// 2^(bits-1)], so the one pattern above half is positive (as in Prometheus).
fn sign_extend(raw: u64, bits: u32) -> i64 {
    if raw > 1 << (bits - 1) {
        raw as i64 - (1i64 << bits)
    } else {
        raw as i64
    }
}

#[derive(Clone, Debug, Default)]
struct BitWriter {
    bytes: Vec<u8>,
    /// Bits used in the last byte (0 = the last byte is full or there is none).
    used: u32,
}

impl BitWriter {
    /// Appends the low `bits` bits of `value`, most significant first.
    fn write(&mut self, value: u64, bits: u32) {
        let mut remaining = bits;
        while remaining > 0 {
            if self.used == 0 {
                self.bytes.push(0);
            }
            let free = 8 - self.used;
            let take = free.min(remaining);
            let chunk = ((value >> (remaining - take)) & ((1u64 << take) - 1)) as u8;
            let last = self.bytes.len() - 1;
            self.bytes[last] |= chunk << (free - take);
            self.used = (self.used + take) % 8;
            remaining -= take;
        }
    }
}

struct BitReader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> BitReader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        BitReader { bytes, position: 0 }
    }

    fn read(&mut self, bits: u32) -> Result<u64, ChunkError> {
        // Fast path: one big-endian load of the 8 bytes the bits are in.
        let offset = (self.position % 8) as u32;
        if bits > 0
            && offset + bits <= 64
            && let Some(window) = self
                .bytes
                .get(self.position / 8..)
                .and_then(<[u8]>::first_chunk::<8>)
        {
            self.position += bits as usize;
            return Ok((u64::from_be_bytes(*window) << offset) >> (64 - bits));
        }
        let mut value = 0u64;
        let mut remaining = bits;
        while remaining > 0 {
            let byte = *self
                .bytes
                .get(self.position / 8)
                .ok_or(ChunkError("ends early"))?;
            let offset = (self.position % 8) as u32;
            let available = 8 - offset;
            let take = available.min(remaining);
            let chunk = (u64::from(byte) >> (available - take)) & ((1u64 << take) - 1);
            value = (value << take) | chunk;
            self.position += take as usize;
            remaining -= take;
        }
        Ok(value)
    }

    /// Counts leading one bits of a delta-of-delta prefix, at most four.
    fn read_prefix(&mut self) -> Result<u8, ChunkError> {
        let mut ones = 0;
        while ones < 4 && self.read(1)? == 1 {
            ones += 1;
        }
        Ok(ones)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn roundtrip(samples: &[(i64, f64)]) -> Vec<u8> {
        let mut writer = ChunkWriter::default();
        for &(t, v) in samples {
            writer.push(t, v);
        }
        let bytes = writer.encode();
        let decoded = decode(&bytes).unwrap();
        assert_eq!(decoded.len(), samples.len());
        for (got, &(t, v)) in decoded.iter().zip(samples) {
            assert_eq!(got.timestamp_ms, t);
            assert_eq!(got.value.to_bits(), v.to_bits());
        }
        bytes
    }

    #[test]
    fn regular_counter_takes_under_two_bytes_per_sample() {
        let start = 1_764_064_800_000;
        let samples: Vec<(i64, f64)> = (0..120)
            .map(|i| (start + i * 15_000, 1000.0 + (i * 7) as f64))
            .collect();
        let bytes = roundtrip(&samples);
        assert!(bytes.len() < 240, "{} bytes", bytes.len());
    }

    #[test]
    fn special_values_and_jitter_survive() {
        roundtrip(&[
            (0, f64::NAN),
            (1, f64::from_bits(crate::model::STALE_NAN_BITS)),
            (15_003, f64::INFINITY),
            (29_998, -0.0),
            (45_000, f64::MIN_POSITIVE),
            (i64::MAX / 2, f64::MAX),
            (i64::MAX / 2 + 1, 1.5),
        ]);
    }

    #[test]
    fn resume_continues_the_stream() {
        let mut writer = ChunkWriter::default();
        for i in 0..10 {
            writer.push(i * 1000, i as f64);
        }
        let mut resumed = ChunkWriter::resume(&writer.encode()).unwrap();
        resumed.push(10_000, 10.0);
        writer.push(10_000, 10.0);
        assert_eq!(resumed.encode(), writer.encode());
    }

    #[test]
    fn truncated_chunks_are_errors() {
        let mut writer = ChunkWriter::default();
        for i in 0..50 {
            writer.push(i * 1000, (i * i) as f64 / 3.0);
        }
        let bytes = writer.encode();
        for cut in 0..bytes.len() - 1 {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    /// Compacts a chunk of `samples`, checks it decodes to them bit for
    /// bit, and returns its bytes.
    fn compact_roundtrip(samples: &[(i64, f64)]) -> Vec<u8> {
        let mut writer = ChunkWriter::default();
        for &(t, v) in samples {
            writer.push(t, v);
        }
        let encoded = writer.encode();
        let bytes = compact(&encoded).unwrap_or(encoded);
        assert!(bytes.len() <= writer.encode().len());
        let decoded = decode(&bytes).unwrap();
        assert_eq!(decoded.len(), samples.len());
        for (got, &(t, v)) in decoded.iter().zip(samples) {
            assert_eq!(got.timestamp_ms, t);
            assert_eq!(got.value.to_bits(), v.to_bits(), "{v} at {t}");
        }
        // What a snapshot holds resumes into the same open chunk.
        assert_eq!(
            ChunkWriter::resume(&bytes).unwrap().encode(),
            writer.encode()
        );
        bytes
    }

    /// Encodes `samples` as [`DECIMAL`] whatever its size, and checks
    /// they come back bit for bit.
    fn decimal_roundtrip(samples: &[(i64, f64)]) {
        let samples: Vec<MetricSample> = samples
            .iter()
            .map(|&(timestamp_ms, value)| MetricSample {
                timestamp_ms,
                value,
            })
            .collect();
        let bytes = encode_decimal(&samples).expect("decimals");
        let decoded = decode(&bytes).unwrap();
        assert_eq!(decoded.len(), samples.len());
        for (got, want) in decoded.iter().zip(&samples) {
            assert_eq!(got.timestamp_ms, want.timestamp_ms);
            assert_eq!(got.value.to_bits(), want.value.to_bits());
        }
    }

    fn encoding(bytes: &[u8]) -> u8 {
        (u16::from_le_bytes([bytes[0], bytes[1]]) >> COUNT_BITS) as u8
    }

    fn scrapes(values: impl Iterator<Item = f64>) -> Vec<(i64, f64)> {
        let start = 1_764_064_800_000;
        values
            .enumerate()
            .map(|(i, v)| (start + i as i64 * 15_000, v))
            .collect()
    }

    #[test]
    fn decimal_counters_and_gauges_take_a_fraction_of_xor() {
        let mut units = 1_000_000i64;
        // (what, samples, most bytes)
        type Case = (&'static str, Vec<(i64, f64)>, usize);
        let cases: Vec<Case> = vec![
            (
                "cpu seconds, m * 0.01",
                scrapes((0..120).map(|i| {
                    units += 1 + i % 4;
                    units as f64 * 0.01
                })),
                110,
            ),
            (
                "parsed from text, m / 100",
                scrapes((0..120).map(|i| (123_456 + i * 3 + i % 2) as f64 / 100.0)),
                110,
            ),
            (
                "requests, integers",
                scrapes((0..120).map(|i| (5_000 + i * 7 + i % 3) as f64)),
                110,
            ),
            (
                "temperature, few values",
                scrapes((0..120).map(|i| [41.5, 41.6, 41.5, 41.7][i % 4])),
                110,
            ),
            ("constant", scrapes((0..120).map(|_| 4096.0)), 40),
            ("idle counter", scrapes((0..120).map(|_| 0.0)), 40),
        ];
        for (name, samples, most) in cases {
            let bytes = compact_roundtrip(&samples);
            assert!(bytes.len() <= most, "{name}: {} bytes", bytes.len());
            if name != "constant" && name != "idle counter" {
                assert_eq!(encoding(&bytes), DECIMAL, "{name}");
            }
        }
    }

    #[test]
    fn values_that_are_no_decimals_stay_xor() {
        for special in [
            f64::NAN,
            f64::from_bits(crate::model::STALE_NAN_BITS),
            f64::INFINITY,
            f64::NEG_INFINITY,
            -0.0,
            1e300,
            std::f64::consts::PI,
        ] {
            let mut samples = scrapes((0..20).map(f64::from));
            samples[7].1 = special;
            let bytes = compact_roundtrip(&samples);
            assert_eq!(encoding(&bytes), XOR, "{special}");
        }
        // Integers up to 2^53 are decimals; their deltas of deltas fit.
        decimal_roundtrip(&scrapes(
            [9_007_199_254_740_992.0, -9_007_199_254_740_992.0, 0.0, 1.0].into_iter(),
        ));
    }

    #[test]
    fn integers_fill_every_bucket() {
        let mut edges = vec![0, 1, -1, i64::MIN, i64::MAX];
        for width in INT_BUCKETS {
            let half = 1i64 << (width.min(63) - 1);
            edges.extend([half - 1, half, -half, -half - 1]);
        }
        let mut bits = BitWriter::default();
        for &value in &edges {
            write_int(&mut bits, value);
        }
        let mut reader = BitReader::new(&bits.bytes);
        for &value in &edges {
            assert_eq!(read_int(&mut reader).unwrap(), value);
        }
    }

    #[test]
    fn chunks_of_format_version_1_still_decode() {
        // `ChunkWriter::encode` of (1000, 1.5), (2000, 2.5), (3000, NaN) as
        // version 1 wrote it.
        let v1 = [
            3, 0, 0, 0, 0, 0, 0, 0, 3, 232, 63, 248, 0, 0, 0, 0, 0, 0, 131, 232, 194, 111, 255,
            211, 255, 192,
        ];
        let samples = decode(&v1).unwrap();
        let got: Vec<(i64, u64)> = samples
            .iter()
            .map(|s| (s.timestamp_ms, s.value.to_bits()))
            .collect();
        assert_eq!(
            got,
            [
                (1000, 1.5f64.to_bits()),
                (2000, 2.5f64.to_bits()),
                (3000, f64::NAN.to_bits())
            ]
        );
    }

    #[test]
    fn truncated_decimal_chunks_are_errors() {
        let bytes = compact_roundtrip(&scrapes((0..50).map(|i| f64::from(i * i) / 10.0)));
        assert_eq!(encoding(&bytes), DECIMAL);
        for cut in 0..bytes.len() - 1 {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    /// Samples `step` apart from `start` on, each value given by its bits.
    fn stepped(start: i64, steps: Vec<(i64, u64)>) -> Vec<(i64, f64)> {
        let mut t = start;
        steps
            .into_iter()
            .map(|(step, bits)| {
                t += step;
                (t, f64::from_bits(bits))
            })
            .collect()
    }

    proptest! {
        #[test]
        fn any_values_compact_and_come_back(
            steps in proptest::collection::vec((1i64..100_000, any::<u64>()), 1..200),
        ) {
            compact_roundtrip(&stepped(0, steps));
        }

        #[test]
        fn decimals_compact_and_come_back(
            k in 0usize..16,
            multiply in any::<bool>(),
            // Beyond 2^50, m * 10^-k divided back may round to m ± 1.
            integers in proptest::collection::vec(-(1i64 << 50)..(1i64 << 50), 1..200),
        ) {
            let samples = scrapes(integers.into_iter().map(|m| {
                if multiply { m as f64 * RESOLUTIONS[k] } else { m as f64 / POWERS[k] }
            }));
            decimal_roundtrip(&samples);
            compact_roundtrip(&samples);
        }

        #[test]
        fn decimal_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut bytes = bytes;
            if bytes.len() >= 2 {
                bytes[1] = (bytes[1] & 0x0f) | DECIMAL << 4;
            }
            let _ = decode(&bytes);
        }

        #[test]
        fn any_increasing_series_roundtrips(
            start in any::<i32>(),
            steps in proptest::collection::vec((1i64..10_000_000, any::<u64>()), 1..200),
        ) {
            roundtrip(&stepped(i64::from(start), steps));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes);
        }
    }
}
