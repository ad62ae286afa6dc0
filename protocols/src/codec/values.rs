//! The value section: how one is chosen, and the constant, run-length and XOR layouts (decimal
//! lives in [`super::decimal`]).
//!
//! # Choosing
//!
//! Every candidate is costed exactly, in bytes, and the smallest wins (on a tie, the one tried
//! first):
//!
//! 1. constant, when every value has the same bits;
//! 2. decimal raw / delta / delta-of-delta, unless more than a quarter of the values (plus one)
//!    are exceptions, or the first few values already show full precision;
//! 3. run-length, when there are at most half as many runs as samples;
//! 4. float bits raw / delta / delta-of-delta, then XOR, each only while the best so far costs
//!    more than 24 bits a sample (below that decimal or run-length has won by a wide margin, and
//!    XOR is the slowest candidate to cost and to decode).
//!
//! # Value codes (constant and run-length)
//!
//! A section-wide exponent d (u8, 0 ..= 18) comes first. Each value is then one uvarint `c`:
//! even `c` is the mantissa `unzigzag(c >> 1)`, the value being `mantissa / 10ᵈ` exactly as in
//! decimal coding; `c == 1` is followed by the value's 8 bytes (LE); other odd `c` are invalid.
//!
//! ```text
//! constant:    u8 d, code
//! run-length:  u8 d, uvarint runs (≥ 1), then per run: code, uvarint length (≥ 1) — the last
//!              run's length is omitted (the rest of the chunk)
//! xor:         bits, MSB first: the first value's 64 bits, then one XOR code per further value
//!              (the Gorilla / Prometheus scheme, see `xor.rs`)
//! ```

use super::bits::{BitReader, BitWriter, Cursor, put_uvarint, unzigzag, uvarint_len, zigzag};
use super::decimal::{
    IntsDecoder, MAX_EXPONENT, Mantissas, POW10, Transform, mantissa_at, min_exponent,
};
use super::xor::{XorDecoder, XorEncoder};
use super::{CodecError, ValueEncoding};

/// How the encoder will write the values.
pub(crate) enum ValuePlan {
    Const {
        d: u8,
    },
    RunLength {
        d: u8,
        runs: Vec<usize>,
    },
    Ints {
        mantissas: Mantissas,
        transform: Transform,
    },
    Xor {
        section: Vec<u8>,
    },
}

impl ValuePlan {
    pub(crate) fn encoding(&self) -> ValueEncoding {
        match self {
            Self::Const { .. } => ValueEncoding::Const,
            Self::RunLength { .. } => ValueEncoding::RunLength,
            Self::Ints {
                mantissas,
                transform,
            } => ValueEncoding::from_transform(*transform, mantissas.scale()),
            Self::Xor { .. } => ValueEncoding::Xor,
        }
    }
}

/// Picks the smallest encoding for `values` (non-empty), or the forced one.
pub(crate) fn plan(values: &[f64], forced: Option<ValueEncoding>) -> Result<ValuePlan, CodecError> {
    let n = values.len();
    let first = values[0].to_bits();
    let constant = values.iter().all(|v| v.to_bits() == first);
    match forced {
        Some(ValueEncoding::Const) if !constant => {
            return Err(CodecError::ValueEncodingNotApplicable(ValueEncoding::Const));
        }
        Some(ValueEncoding::Const) => return Ok(const_plan(values[0])),
        Some(ValueEncoding::RunLength) => return Ok(run_length_plan(values)),
        Some(ValueEncoding::Xor) => {
            return Ok(ValuePlan::Xor {
                section: xor_section(values),
            });
        }
        Some(enc) => {
            let (transform, float_bits) = enc
                .transform()
                .ok_or(CodecError::ValueEncodingNotApplicable(enc))?;
            let mantissas = if float_bits {
                Mantissas::float_bits(values)
            } else {
                // Forced decimal takes any number of exceptions (tests use it to reach them).
                Mantissas::decimal(values, n).ok_or(CodecError::ValueEncodingNotApplicable(enc))?
            };
            return Ok(ValuePlan::Ints {
                mantissas,
                transform,
            });
        }
        None if constant => return Ok(const_plan(values[0])),
        None => {}
    }

    let mut best: Option<(usize, ValuePlan)> = None;
    if let Some(mantissas) = Mantissas::decimal(values, n / 4 + 1) {
        let (transform, bytes) = mantissas.best();
        offer(
            &mut best,
            bytes,
            ValuePlan::Ints {
                mantissas,
                transform,
            },
        );
    }
    let runs = 1 + values
        .windows(2)
        .filter(|w| w[0].to_bits() != w[1].to_bits())
        .count();
    if runs * 2 <= n {
        let plan = run_length_plan(values);
        if let ValuePlan::RunLength { d, runs } = &plan {
            let bytes = run_length_len(values, *d, runs);
            offer(&mut best, bytes, plan);
        }
    }
    // Full precision, or decimal with many digits: try the float encodings.
    let dear =
        |best: &Option<(usize, ValuePlan)>| best.as_ref().is_none_or(|(b, _)| b * 8 > 24 * n);
    if dear(&best) {
        let mantissas = Mantissas::float_bits(values);
        let (transform, bytes) = mantissas.best();
        offer(
            &mut best,
            bytes,
            ValuePlan::Ints {
                mantissas,
                transform,
            },
        );
    }
    if dear(&best) && xor_may_win(values, &best) {
        let section = xor_section(values);
        offer(&mut best, section.len(), ValuePlan::Xor { section });
    }
    Ok(match best {
        Some((_, plan)) => plan,
        // Unreachable: XOR was offered whenever nothing else was.
        None => ValuePlan::Xor {
            section: xor_section(values),
        },
    })
}

/// XOR is the slowest candidate to cost; on long chunks, cost a prefix first and go on only if
/// it comes within 10% of the best so far.
fn xor_may_win(values: &[f64], best: &Option<(usize, ValuePlan)>) -> bool {
    const PREFIX: usize = 512;
    let Some((best_bytes, _)) = best else {
        return true;
    };
    if values.len() < 4 * PREFIX {
        return true;
    }
    let estimate = xor_section(&values[..PREFIX]).len() * values.len() / PREFIX;
    estimate * 10 < best_bytes * 11
}

fn offer(best: &mut Option<(usize, ValuePlan)>, bytes: usize, plan: ValuePlan) {
    if best.as_ref().is_none_or(|(b, _)| bytes < *b) {
        *best = Some((bytes, plan));
    }
}

/// Appends the value section as planned.
pub(crate) fn write(values: &[f64], plan: &ValuePlan, out: &mut Vec<u8>) {
    match plan {
        ValuePlan::Const { d } => {
            out.push(*d);
            put_code(out, values[0], *d);
        }
        ValuePlan::RunLength { d, runs } => {
            out.push(*d);
            put_uvarint(out, runs.len() as u64);
            let mut at = 0;
            for (r, &len) in runs.iter().enumerate() {
                put_code(out, values[at], *d);
                if r + 1 < runs.len() {
                    put_uvarint(out, len as u64);
                }
                at += len;
            }
        }
        ValuePlan::Ints {
            mantissas,
            transform,
        } => mantissas.write(*transform, out),
        ValuePlan::Xor { section } => out.extend_from_slice(section),
    }
}

fn const_plan(v: f64) -> ValuePlan {
    ValuePlan::Const {
        d: min_exponent(v).unwrap_or(0) as u8,
    }
}

fn run_length_plan(values: &[f64]) -> ValuePlan {
    let mut runs = Vec::new();
    let mut d = 0;
    let mut start = 0;
    for i in 1..=values.len() {
        if i == values.len() || values[i].to_bits() != values[start].to_bits() {
            runs.push(i - start);
            if let Some(e) = min_exponent(values[start]) {
                d = d.max(e);
            }
            start = i;
        }
    }
    ValuePlan::RunLength { d: d as u8, runs }
}

fn run_length_len(values: &[f64], d: u8, runs: &[usize]) -> usize {
    let mut bytes = 1 + uvarint_len(runs.len() as u64);
    let mut at = 0;
    for (r, &len) in runs.iter().enumerate() {
        bytes += code_len(values[at], d);
        if r + 1 < runs.len() {
            bytes += uvarint_len(len as u64);
        }
        at += len;
    }
    bytes
}

fn xor_section(values: &[f64]) -> Vec<u8> {
    let mut w = BitWriter::with_vec(Vec::with_capacity(values.len() * 8));
    let mut xor = XorEncoder::first(&mut w, values[0].to_bits());
    for v in &values[1..] {
        xor.push(&mut w, v.to_bits());
    }
    w.finish()
}

/// The even code of `v` at exponent `d`, if it has one (its mantissa must leave room for the
/// tag bit).
fn code(v: f64, d: u8) -> Option<u64> {
    mantissa_at(v, usize::from(d))
        .map(zigzag)
        .filter(|z| z >> 63 == 0)
        .map(|z| z << 1)
}

fn code_len(v: f64, d: u8) -> usize {
    code(v, d).map_or(9, uvarint_len)
}

fn put_code(out: &mut Vec<u8>, v: f64, d: u8) {
    match code(v, d) {
        Some(c) => put_uvarint(out, c),
        None => {
            out.push(1);
            out.extend_from_slice(&v.to_bits().to_le_bytes());
        }
    }
}

fn read_code(c: &mut Cursor<'_>, scale: f64) -> Result<f64, CodecError> {
    match c.uvarint("value code")? {
        1 => Ok(f64::from_bits(c.u64_le("verbatim value")?)),
        code if code & 1 == 0 => Ok(unzigzag(code >> 1) as f64 / scale),
        _ => Err(CodecError::corrupt("invalid value code")),
    }
}

fn read_exponent(c: &mut Cursor<'_>) -> Result<f64, CodecError> {
    let d = usize::from(c.u8("value exponent")?);
    if d > MAX_EXPONENT {
        return Err(CodecError::corrupt("value exponent above 18"));
    }
    Ok(POW10[d])
}

/// Streams values out of a section.
#[derive(Debug, Clone)]
pub(crate) enum ValueDecoder<'a> {
    Const {
        value: f64,
        rest: &'a [u8],
    },
    RunLength(RunLengthDecoder<'a>),
    Ints(IntsDecoder<'a>),
    Xor {
        bits: BitReader<'a>,
        section: &'a [u8],
        state: Option<XorDecoder>,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct RunLengthDecoder<'a> {
    runs: Cursor<'a>,
    scale: f64,
    runs_left: usize,
    /// Samples not yet handed out, so the last run knows its length.
    samples_left: usize,
    value: f64,
    in_run: usize,
}

impl<'a> ValueDecoder<'a> {
    /// Validates the section's framing up front where that is cheap (everything for constant
    /// and run-length; the prefix for decimal).
    pub(crate) fn new(
        encoding: ValueEncoding,
        section: &'a [u8],
        count: usize,
    ) -> Result<Self, CodecError> {
        match encoding {
            ValueEncoding::Const => {
                let mut c = Cursor::new(section);
                let scale = read_exponent(&mut c)?;
                let value = read_code(&mut c, scale)?;
                Ok(Self::Const {
                    value,
                    rest: c.remaining(),
                })
            }
            ValueEncoding::RunLength => {
                let mut c = Cursor::new(section);
                let scale = read_exponent(&mut c)?;
                let runs_left = c.bounded(count as u64, "run count")?;
                if runs_left == 0 {
                    return Err(CodecError::corrupt("no runs"));
                }
                let runs = c.clone();
                // Every run but the last is at least one sample and leaves at least one.
                let mut covered = 0usize;
                for r in 0..runs_left {
                    read_code(&mut c, scale)?;
                    if r + 1 < runs_left {
                        let len = c.bounded(count as u64, "run length")?;
                        covered += len;
                        if len == 0 || covered >= count {
                            return Err(CodecError::corrupt("run lengths do not add up"));
                        }
                    }
                }
                Ok(Self::RunLength(RunLengthDecoder {
                    runs,
                    scale,
                    runs_left,
                    samples_left: count,
                    value: 0.0,
                    in_run: 0,
                }))
            }
            ValueEncoding::Xor => Ok(Self::Xor {
                bits: BitReader::new(section),
                section,
                state: None,
            }),
            enc => {
                let (transform, float_bits) =
                    enc.transform().ok_or(CodecError::UnknownEncoding {
                        what: "value",
                        id: enc.id(),
                    })?;
                IntsDecoder::new(transform, float_bits, section, count).map(Self::Ints)
            }
        }
    }

    /// Decodes samples `start .. start + out.len()`. Calls come in order, `start` is a multiple
    /// of [`super::BLOCK`] and `out.len()` is at most [`super::BLOCK`].
    pub(crate) fn fill(
        &mut self,
        start: usize,
        out: &mut [f64],
        scratch: &mut [u64],
    ) -> Result<(), CodecError> {
        match self {
            Self::Const { value, .. } => out.fill(*value),
            Self::RunLength(r) => r.fill(out)?,
            Self::Ints(d) => d.fill(start, out, scratch)?,
            Self::Xor { bits, state, .. } => {
                for o in out.iter_mut() {
                    let v = match state {
                        Some(x) => x.next(bits)?,
                        None => {
                            let (x, v) = XorDecoder::first(bits)?;
                            *state = Some(x);
                            v
                        }
                    };
                    *o = f64::from_bits(v);
                }
            }
        }
        Ok(())
    }

    /// Checks, after the last sample, that only zero padding follows.
    pub(crate) fn finish(&self) -> Result<(), CodecError> {
        let rest = match self {
            Self::Const { rest, .. } => rest,
            Self::RunLength(r) => r.runs.remaining(),
            Self::Ints(d) => d.rest(),
            Self::Xor { bits, section, .. } => {
                section.get(bits.consumed_bytes()..).unwrap_or_default()
            }
        };
        if rest.iter().all(|&b| b == 0) {
            Ok(())
        } else {
            Err(CodecError::corrupt("bytes after the value section"))
        }
    }
}

impl RunLengthDecoder<'_> {
    fn fill(&mut self, out: &mut [f64]) -> Result<(), CodecError> {
        let mut at = 0;
        while at < out.len() {
            if self.in_run == 0 {
                if self.runs_left == 0 {
                    return Err(CodecError::corrupt("runs end before the samples"));
                }
                self.runs_left -= 1;
                self.value = read_code(&mut self.runs, self.scale)?;
                self.in_run = if self.runs_left == 0 {
                    self.samples_left
                } else {
                    // Checked in `new` to be ≥ 1 and to leave samples for the last run.
                    self.runs.uvarint("run length")? as usize
                };
            }
            let take = self.in_run.min(out.len() - at);
            out[at..at + take].fill(self.value);
            at += take;
            self.in_run -= take;
            self.samples_left -= take;
        }
        Ok(())
    }
}
