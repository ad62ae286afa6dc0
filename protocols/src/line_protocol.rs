//! InfluxDB line protocol: parsing (and writing) lines, nothing more. Mapping lines to series
//! is the caller's business (the core's `/write` handlers, the edge agent's MQTT decoder).
//!
//! # Syntax
//!
//! ```text
//! measurement[,tag_key=tag_value...] field_key=field_value[,field_key=field_value...] [timestamp]
//! ```
//!
//! - Lines end with `\n` (a `\r` before it is ignored). Blank lines and lines whose first
//!   non-space character is `#` (comments) are skipped.
//! - One or more spaces separate the three sections; spaces before and after a line are allowed.
//! - At least one field is required; tags are optional. Tag keys and values, and field keys,
//!   must not be empty.
//! - Field values: floats (`1`, `-1.5`, `1e-3`, `.5`; not NaN or infinities), integers with an
//!   `i` suffix (`-42i`, 64-bit signed), unsigned integers with a `u` suffix (`42u`, 64-bit),
//!   booleans (`t`, `T`, `true`, `True`, `TRUE`, and the same for false), and double-quoted
//!   strings (which may span lines).
//! - The timestamp is an integer (it may be negative) in the precision the request names; see
//!   [`Precision`].
//!
//! # Escaping (as in InfluxDB)
//!
//! | element | a backslash escapes |
//! |---|---|
//! | measurement | `,` and space |
//! | tag key, tag value, field key | `,`, `=` and space |
//! | string field value | `"` and `\` |
//!
//! A backslash before any other character is kept as it is (`a\b` is the three characters
//! `a\b`). So a name cannot end with a backslash, and no name can hold a newline; [`Line`]'s
//! `Display` writes every other value so that [`parse`] reads it back unchanged.
//!
//! # API
//!
//! [`parse`] iterates over a body's lines, each a [`Line`] or a [`LineError`] carrying the
//! 1-based line number; one bad line never affects the others. [`parse_line`] parses a single
//! line. Names and strings borrow from the input unless they contained escapes.
//! [`Lines::next_into`] parses into a caller's [`Line`], reusing its vectors, and also hands
//! back the line's series key (its measurement and tag set as written), so that a server can
//! map a tag set it has seen before without looking at its tags again.

use std::borrow::Cow;
use std::fmt;

/// One parsed line: a point.
#[derive(Debug, Clone, PartialEq)]
pub struct Line<'a> {
    pub measurement: Cow<'a, str>,
    /// In the order written; duplicate keys are refused.
    pub tags: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// In the order written (never empty); a repeated key is kept as written.
    pub fields: Vec<(Cow<'a, str>, FieldValue<'a>)>,
    /// In the request's precision; `None` means "the time of arrival".
    pub timestamp: Option<i64>,
}

impl Default for Line<'_> {
    /// No measurement, tags or fields: a buffer for [`Lines::next_into`].
    fn default() -> Self {
        Self {
            measurement: Cow::Borrowed(""),
            tags: Vec::new(),
            fields: Vec::new(),
            timestamp: None,
        }
    }
}

/// A field's value, typed as the line wrote it.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue<'a> {
    Float(f64),
    /// `42i`.
    Integer(i64),
    /// `42u`.
    UInteger(u64),
    Boolean(bool),
    String(Cow<'a, str>),
}

impl FieldValue<'_> {
    /// The value as a sample value: numbers as `f64` (integers beyond 2^53 lose precision),
    /// booleans as 1 or 0, strings `None`.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Float(v) => Some(*v),
            Self::Integer(v) => Some(*v as f64),
            Self::UInteger(v) => Some(*v as f64),
            Self::Boolean(b) => Some(if *b { 1.0 } else { 0.0 }),
            Self::String(_) => None,
        }
    }
}

/// Why a line could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    #[error("missing measurement")]
    MissingMeasurement,
    #[error("missing tag key")]
    MissingTagKey,
    #[error("missing tag value")]
    MissingTagValue,
    #[error("duplicate tag key")]
    DuplicateTag,
    #[error("missing fields")]
    MissingFields,
    #[error("missing field key")]
    MissingFieldKey,
    #[error("missing field value")]
    MissingFieldValue,
    #[error("invalid field value")]
    InvalidFieldValue,
    #[error("integer field value out of range")]
    IntegerOutOfRange,
    #[error("unterminated string field value")]
    UnterminatedString,
    #[error("invalid timestamp")]
    InvalidTimestamp,
    #[error("unexpected text after the timestamp")]
    TrailingText,
}

/// A line that could not be parsed: where, why, and its beginning (for messages).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind} (at column {column}): {text:?}")]
pub struct LineError {
    /// 1-based line number in the body.
    pub line: usize,
    /// 1-based byte column in that line where the problem was found.
    pub column: usize,
    pub kind: ErrorKind,
    /// The line's first [`ERROR_TEXT_BYTES`] bytes at most.
    pub text: String,
}

/// How much of a bad line a [`LineError`] quotes.
pub const ERROR_TEXT_BYTES: usize = 64;

/// The unit of a body's timestamps, as the `precision` parameter of InfluxDB's write API
/// names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    Nanoseconds,
    Microseconds,
    Milliseconds,
    Seconds,
    Minutes,
    Hours,
}

impl Precision {
    /// InfluxDB 1.x `/write?precision=`: `n`/`ns`, `u`/`us`/`µ`, `ms`, `s`, `m`, `h`; empty
    /// means nanoseconds.
    pub fn from_v1(s: &str) -> Option<Self> {
        Some(match s {
            "" | "n" | "ns" => Self::Nanoseconds,
            "u" | "us" | "µ" => Self::Microseconds,
            "ms" => Self::Milliseconds,
            "s" => Self::Seconds,
            "m" => Self::Minutes,
            "h" => Self::Hours,
            _ => return None,
        })
    }

    /// InfluxDB 2.x `/api/v2/write?precision=`: `ns`, `us`, `ms`, `s`; empty means
    /// nanoseconds.
    pub fn from_v2(s: &str) -> Option<Self> {
        Some(match s {
            "" | "ns" => Self::Nanoseconds,
            "us" => Self::Microseconds,
            "ms" => Self::Milliseconds,
            "s" => Self::Seconds,
            _ => return None,
        })
    }

    /// A timestamp in this precision as Unix milliseconds, rounded down (towards negative
    /// infinity); `None` when it does not fit an `i64` of milliseconds.
    pub fn to_millis(self, ts: i64) -> Option<i64> {
        match self {
            Self::Nanoseconds => Some(ts.div_euclid(1_000_000)),
            Self::Microseconds => Some(ts.div_euclid(1_000)),
            Self::Milliseconds => Some(ts),
            Self::Seconds => ts.checked_mul(1_000),
            Self::Minutes => ts.checked_mul(60_000),
            Self::Hours => ts.checked_mul(3_600_000),
        }
    }
}

/// Iterates over the lines of `body`, skipping blank lines and comments.
pub fn parse(body: &str) -> Lines<'_> {
    Lines {
        body,
        pos: 0,
        line: 1,
        last_start: 0,
    }
}

/// Parses a text that holds one line (a string field value may span lines); `Ok(None)` for a
/// blank line or a comment, an error when more than one line follows.
pub fn parse_line(line: &str) -> Result<Option<Line<'_>>, LineError> {
    let mut lines = parse(line);
    let first = lines.next().transpose()?;
    match lines.next() {
        None => Ok(first),
        Some(Ok(_)) | Some(Err(_)) => Err(LineError {
            line: 1,
            column: line.find('\n').map_or(line.len(), |i| i + 1),
            kind: ErrorKind::TrailingText,
            text: excerpt(line),
        }),
    }
}

/// The iterator of [`parse`].
#[derive(Debug, Clone)]
pub struct Lines<'a> {
    body: &'a str,
    pos: usize,
    /// Line number at `pos`.
    line: usize,
    /// Line number where the last item returned starts.
    last_start: usize,
}

impl<'a> Lines<'a> {
    /// The same iterator, each item with the 1-based number of the line it starts on (for
    /// callers that refuse a parsed line for their own reasons and want to say which).
    pub fn numbered(self) -> impl Iterator<Item = (usize, Result<Line<'a>, LineError>)> {
        let mut lines = self;
        std::iter::from_fn(move || {
            let item = lines.next()?;
            Some((lines.last_start, item))
        })
    }
}

impl<'a> Lines<'a> {
    /// The next line, parsed into `line` (its vectors cleared and reused, so once they have
    /// grown a line costs no allocation unless a name or string holds escapes), with the
    /// 1-based number of the line it starts on and, when it parses, its series key: the text
    /// of its measurement and tag set as written, escapes and all. Two lines with the same
    /// series key have the same measurement and tags. After an error `line` holds nothing
    /// useful.
    pub fn next_into(
        &mut self,
        line: &mut Line<'a>,
    ) -> Option<(usize, Result<&'a str, LineError>)> {
        let item = self.parse_next(line)?;
        Some((self.last_start, item))
    }

    fn parse_next(&mut self, out: &mut Line<'a>) -> Option<Result<&'a str, LineError>> {
        let bytes = self.body.as_bytes();
        loop {
            if self.pos >= bytes.len() {
                return None;
            }
            let start = self.pos;
            let line_no = self.line;
            let mut p = Parser {
                s: self.body,
                pos: start,
                newlines: 0,
            };
            p.skip_spaces();
            match p.peek() {
                Some(b'\n') | Some(b'#') | None => {
                    self.advance_past_newline(start);
                    continue;
                }
                Some(b'\r') if p.at_line_end() => {
                    self.advance_past_newline(start);
                    continue;
                }
                _ => {}
            }
            self.last_start = line_no;
            let result = p.line_into(out);
            return Some(match result {
                Ok(key) => {
                    // `p` stopped at the `\n` (or the end); a string may have spanned lines,
                    // and `p` counted their newlines, so the line is not scanned again.
                    self.line += p.newlines;
                    self.pos = p.pos;
                    self.advance_past_newline(p.pos);
                    Ok(key)
                }
                Err(kind) => {
                    let err_at = p.pos.min(bytes.len());
                    let line_start = bytes[..err_at]
                        .iter()
                        .rposition(|b| *b == b'\n')
                        .map_or(0, |i| i + 1)
                        .max(start);
                    let err_line = line_no + count_newlines(&bytes[start..line_start]);
                    let line_end = bytes[line_start..]
                        .iter()
                        .position(|b| *b == b'\n')
                        .map_or(bytes.len(), |i| line_start + i);
                    let err = LineError {
                        line: err_line,
                        column: err_at - line_start + 1,
                        kind,
                        text: excerpt(&self.body[line_start..line_end]),
                    };
                    // Resume after the line the error is on.
                    self.line = err_line;
                    self.pos = line_start;
                    self.advance_past_newline(err_at);
                    Err(err)
                }
            });
        }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = Result<Line<'a>, LineError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut line = Line::default();
        let item = self.parse_next(&mut line)?;
        Some(item.map(|_| line))
    }
}

impl Lines<'_> {
    /// Moves to the start of the line after the `\n` at or after `from`.
    fn advance_past_newline(&mut self, from: usize) {
        let bytes = self.body.as_bytes();
        let from = from.max(self.pos);
        self.line += count_newlines(&bytes[self.pos..from]);
        match bytes[from..].iter().position(|b| *b == b'\n') {
            Some(i) => {
                self.pos = from + i + 1;
                self.line += 1;
            }
            None => self.pos = bytes.len(),
        }
    }
}

fn count_newlines(b: &[u8]) -> usize {
    b.iter().filter(|b| **b == b'\n').count()
}

fn excerpt(line: &str) -> String {
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.len() <= ERROR_TEXT_BYTES {
        return line.to_owned();
    }
    let cut = (0..=ERROR_TEXT_BYTES)
        .rev()
        .find(|i| line.is_char_boundary(*i))
        .unwrap_or(0);
    format!("{}…", &line[..cut])
}

/// Bytes at which [`Parser::name`] must look closer: the separators, the backslash and the
/// line ends.
const NAME_SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    let mut k = 0;
    let special = b", =\\\n\r";
    while k < special.len() {
        t[special[k] as usize] = true;
        k += 1;
    }
    t
};

/// Characters a backslash escapes in a measurement.
const MEASUREMENT_ESCAPES: &[u8] = b", ";
/// Characters a backslash escapes in tag keys, tag values and field keys.
const KEY_ESCAPES: &[u8] = b",= ";

struct Parser<'a> {
    s: &'a str,
    pos: usize,
    /// Newlines passed inside string field values (the only place a line may hold one).
    newlines: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    fn skip_spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
    }

    /// At `\n`, `\r\n`, a lone `\r` at the very end, or the end.
    fn at_line_end(&self) -> bool {
        let b = self.s.as_bytes();
        match b.get(self.pos) {
            None | Some(b'\n') => true,
            Some(b'\r') => matches!(b.get(self.pos + 1), None | Some(b'\n')),
            _ => false,
        }
    }

    /// Spaces, then the end of the line.
    fn at_end_after_spaces(&mut self) -> bool {
        self.skip_spaces();
        if self.peek() == Some(b'\r') && self.at_line_end() {
            self.pos += 1;
        }
        matches!(self.peek(), None | Some(b'\n'))
    }

    /// Parses a line into `out`; returns its series key (see [`Lines::next_into`]).
    fn line_into(&mut self, out: &mut Line<'a>) -> Result<&'a str, ErrorKind> {
        out.tags.clear();
        out.fields.clear();
        out.timestamp = None;
        let key_start = self.pos;
        let measurement = self.name(MEASUREMENT_ESCAPES, false);
        if measurement.is_empty() {
            return Err(ErrorKind::MissingMeasurement);
        }
        out.measurement = measurement;
        let tags = &mut out.tags;
        while self.peek() == Some(b',') {
            self.pos += 1;
            let key = self.name(KEY_ESCAPES, true);
            if key.is_empty() {
                return Err(ErrorKind::MissingTagKey);
            }
            if self.peek() != Some(b'=') {
                return Err(ErrorKind::MissingTagValue);
            }
            self.pos += 1;
            let value = self.name(KEY_ESCAPES, false);
            if value.is_empty() {
                return Err(ErrorKind::MissingTagValue);
            }
            if tags.iter().any(|(k, _)| *k == key) {
                return Err(ErrorKind::DuplicateTag);
            }
            tags.push((key, value));
        }
        let series_key = &self.s[key_start..self.pos];
        if self.at_end_after_spaces() {
            return Err(ErrorKind::MissingFields);
        }
        let fields = &mut out.fields;
        loop {
            let key = self.name(KEY_ESCAPES, true);
            if key.is_empty() {
                return Err(ErrorKind::MissingFieldKey);
            }
            if self.peek() != Some(b'=') {
                return Err(ErrorKind::MissingFieldValue);
            }
            self.pos += 1;
            fields.push((key, self.field_value()?));
            if self.peek() == Some(b',') {
                self.pos += 1;
            } else {
                break;
            }
        }
        if self.at_end_after_spaces() {
            return Ok(series_key);
        }
        let start = self.pos;
        while !self.at_line_end() && self.peek() != Some(b' ') {
            self.pos += 1;
        }
        let timestamp = match self.s[start..self.pos].parse::<i64>() {
            Ok(t) => t,
            Err(_) => {
                self.pos = start;
                return Err(ErrorKind::InvalidTimestamp);
            }
        };
        if !self.at_end_after_spaces() {
            return Err(ErrorKind::TrailingText);
        }
        out.timestamp = Some(timestamp);
        Ok(series_key)
    }

    /// A measurement or key: up to an unescaped `,`, space, `=` too if `stop_at_equals`, or
    /// the end of the line. `escapes` is [`MEASUREMENT_ESCAPES`] or [`KEY_ESCAPES`]. Plain
    /// bytes are skipped in one tight scan; only the few in [`NAME_SPECIAL`] need a decision.
    fn name(&mut self, escapes: &[u8], stop_at_equals: bool) -> Cow<'a, str> {
        let b = self.s.as_bytes();
        let escape_equals = escapes.contains(&b'=');
        let start = self.pos;
        let mut i = self.pos;
        let mut escaped = false;
        loop {
            i += b[i..]
                .iter()
                .position(|&c| NAME_SPECIAL[usize::from(c)])
                .unwrap_or(b.len() - i);
            let Some(&c) = b.get(i) else { break };
            match c {
                b'\\' => {
                    let escapes_next = match b.get(i + 1) {
                        Some(b',' | b' ') => true,
                        Some(b'=') => escape_equals,
                        _ => false,
                    };
                    escaped |= escapes_next;
                    i += if escapes_next { 2 } else { 1 };
                }
                b'=' if !stop_at_equals => i += 1,
                // A `\r` ends the line only before `\n` or the end.
                b'\r' if !matches!(b.get(i + 1), None | Some(b'\n')) => i += 1,
                _ => break,
            }
        }
        self.pos = i;
        let raw = &self.s[start..self.pos];
        if escaped {
            Cow::Owned(unescape(raw, escapes))
        } else {
            Cow::Borrowed(raw)
        }
    }

    fn field_value(&mut self) -> Result<FieldValue<'a>, ErrorKind> {
        let b = self.s.as_bytes();
        if self.peek() == Some(b'"') {
            let quote = self.pos;
            self.pos += 1;
            let start = self.pos;
            let mut escaped = false;
            loop {
                match b.get(self.pos) {
                    None => {
                        // Reported (and resumed from) at the opening quote.
                        self.pos = quote;
                        return Err(ErrorKind::UnterminatedString);
                    }
                    Some(b'\\') if matches!(b.get(self.pos + 1), Some(b'"' | b'\\')) => {
                        escaped = true;
                        self.pos += 2;
                    }
                    Some(b'"') => break,
                    Some(b'\n') => {
                        self.newlines += 1;
                        self.pos += 1;
                    }
                    Some(_) => self.pos += 1,
                }
            }
            let raw = &self.s[start..self.pos];
            self.pos += 1;
            if !(self.at_line_end() || matches!(self.peek(), Some(b',' | b' '))) {
                return Err(ErrorKind::InvalidFieldValue);
            }
            return Ok(FieldValue::String(if escaped {
                Cow::Owned(unescape(raw, b"\"\\"))
            } else {
                Cow::Borrowed(raw)
            }));
        }
        let start = self.pos;
        while !self.at_line_end() && !matches!(self.peek(), Some(b',' | b' ')) {
            self.pos += 1;
        }
        let token = &self.s[start..self.pos];
        if token.is_empty() {
            return Err(ErrorKind::MissingFieldValue);
        }
        let value = match token {
            "t" | "T" | "true" | "True" | "TRUE" => Ok(FieldValue::Boolean(true)),
            "f" | "F" | "false" | "False" | "FALSE" => Ok(FieldValue::Boolean(false)),
            _ => {
                if let Some(digits) = token.strip_suffix('i') {
                    parse_integer(digits)
                } else if let Some(digits) = token.strip_suffix('u') {
                    parse_unsigned(digits)
                } else {
                    parse_float(token)
                }
            }
        };
        if value.is_err() {
            // Reported where the value starts.
            self.pos = start;
        }
        value
    }
}

fn is_integer_syntax(s: &str, allow_minus: bool) -> bool {
    let digits = match s.strip_prefix('-') {
        Some(rest) if allow_minus => rest,
        Some(_) => return false,
        None => s,
    };
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

fn parse_integer(s: &str) -> Result<FieldValue<'static>, ErrorKind> {
    if !is_integer_syntax(s, true) {
        return Err(ErrorKind::InvalidFieldValue);
    }
    s.parse()
        .map(FieldValue::Integer)
        .map_err(|_| ErrorKind::IntegerOutOfRange)
}

fn parse_unsigned(s: &str) -> Result<FieldValue<'static>, ErrorKind> {
    if !is_integer_syntax(s, false) {
        return Err(ErrorKind::InvalidFieldValue);
    }
    s.parse()
        .map(FieldValue::UInteger)
        .map_err(|_| ErrorKind::IntegerOutOfRange)
}

/// `[+-]? (digits [. digits?] | . digits) ([eE] [+-]? digits)?`, finite.
fn parse_float(s: &str) -> Result<FieldValue<'static>, ErrorKind> {
    let b = s.as_bytes();
    let mut i = usize::from(matches!(b.first(), Some(b'+' | b'-')));
    let int_start = i;
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    let mut mantissa_digits = i - int_start;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let frac_start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        mantissa_digits += i - frac_start;
    }
    if mantissa_digits == 0 {
        return Err(ErrorKind::InvalidFieldValue);
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp_start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == exp_start {
            return Err(ErrorKind::InvalidFieldValue);
        }
    }
    if i != b.len() {
        return Err(ErrorKind::InvalidFieldValue);
    }
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(FieldValue::Float(v)),
        _ => Err(ErrorKind::InvalidFieldValue),
    }
}

/// Removes the backslash of every `\c` with `c` in `escapes`.
fn unescape(raw: &str, escapes: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\'
            && let Some(&n) = chars.peek()
            && n.is_ascii()
            && escapes.contains(&(n as u8))
        {
            out.push(n);
            chars.next();
            continue;
        }
        out.push(c);
    }
    out
}

fn write_escaped(f: &mut fmt::Formatter<'_>, s: &str, escapes: &[u8]) -> fmt::Result {
    for c in s.chars() {
        if c.is_ascii() && escapes.contains(&(c as u8)) {
            f.write_str("\\")?;
        }
        write!(f, "{c}")?;
    }
    Ok(())
}

impl fmt::Display for FieldValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Rust's shortest round-trip form; `1` for 1.0 still reads back as a float.
            Self::Float(v) => write!(f, "{v}"),
            Self::Integer(v) => write!(f, "{v}i"),
            Self::UInteger(v) => write!(f, "{v}u"),
            Self::Boolean(v) => write!(f, "{v}"),
            Self::String(s) => {
                f.write_str("\"")?;
                write_escaped(f, s, b"\"\\")?;
                f.write_str("\"")
            }
        }
    }
}

impl fmt::Display for Line<'_> {
    /// The line in line protocol, escaped, without a trailing newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, &self.measurement, MEASUREMENT_ESCAPES)?;
        for (k, v) in &self.tags {
            f.write_str(",")?;
            write_escaped(f, k, KEY_ESCAPES)?;
            f.write_str("=")?;
            write_escaped(f, v, KEY_ESCAPES)?;
        }
        for (i, (k, v)) in self.fields.iter().enumerate() {
            f.write_str(if i == 0 { " " } else { "," })?;
            write_escaped(f, k, KEY_ESCAPES)?;
            write!(f, "={v}")?;
        }
        if let Some(ts) = self.timestamp {
            write!(f, " {ts}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
