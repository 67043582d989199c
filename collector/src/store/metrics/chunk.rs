//! Compressed sample chunks in the Gorilla encoding (Pelkonen et al., VLDB
//! 2015), as Prometheus uses it: timestamps as delta-of-deltas in
//! variable-width buckets, values XORed with their predecessor so that a
//! repeated value costs one bit and a slowly changing one a few.
//!
//! A chunk is self-describing: a 16-bit sample count, then the bit stream.
//! Regular scrapes of counters and gauges take one to two bytes per sample.

use crate::model::MetricSample;

/// Samples per chunk before it is sealed (Prometheus's figure: beyond ~120
/// the compression gain is marginal and decoding a query range costs more).
pub const SAMPLES_PER_CHUNK: u16 = 120;

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
            self.write_dod(delta.wrapping_sub(self.last_delta));
            self.last_delta = delta;
            self.write_value(value);
        }
        self.last_t = t;
        self.last_value = value;
        self.count += 1;
    }

    fn write_dod(&mut self, dod: i64) {
        let bits = &mut self.bits;
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

    /// The chunk's encoding, readable by [`decode`].
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

/// A chunk whose bytes do not decode.
#[derive(Debug, thiserror::Error)]
#[error("corrupt chunk: {0}")]
pub struct ChunkError(&'static str);

/// Decodes every sample of a chunk.
pub fn decode(bytes: &[u8]) -> Result<Vec<MetricSample>, ChunkError> {
    let (count, stream) = bytes
        .split_first_chunk::<2>()
        .ok_or(ChunkError("shorter than its header"))?;
    let count = u16::from_le_bytes(*count);
    let mut reader = BitReader::new(stream);
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
        let dod = match reader.read_prefix()? {
            0 => 0,
            1 => sign_extend(reader.read(14)?, 14),
            2 => sign_extend(reader.read(17)?, 17),
            3 => sign_extend(reader.read(20)?, 20),
            _ => reader.read(64)? as i64,
        };
        delta = delta.wrapping_add(dod);
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

    proptest! {
        #[test]
        fn any_increasing_series_roundtrips(
            start in any::<i32>(),
            steps in proptest::collection::vec((1i64..10_000_000, any::<u64>()), 1..200),
        ) {
            let mut t = i64::from(start);
            let samples: Vec<(i64, f64)> = steps
                .into_iter()
                .map(|(step, bits)| {
                    t += step;
                    (t, f64::from_bits(bits))
                })
                .collect();
            roundtrip(&samples);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes);
        }
    }
}
