//! The protobuf wire format of [`crate::proto::Envelope`], written and read
//! without its generated type's copies.

use std::collections::BTreeMap;

/// Wire type of varints.
const VARINT: u32 = 0;
/// Wire type of length-delimited fields.
pub(super) const LEN: u32 = 2;

/// The destination tag of a user recipient (5 is a group).
pub(super) const USER: u32 = 4;

/// `proto::Envelope` as read off the wire: every length-delimited field
/// a slice of the input, nothing copied but the headers. Parsed by hand
/// (prost's generated decoder costs four times as many instructions
/// here); read what switchyard wrote, with protobuf's rules: unknown
/// fields skipped, the last value of a field wins, map entries merge.
/// Groups (deprecated, never written by switchyard) are refused.
#[derive(Debug, Default)]
pub(super) struct Frame<'a> {
    pub(super) id: &'a [u8],
    pub(super) sender_user: &'a [u8],
    pub(super) sender_gateway: &'a [u8],
    /// The oneof's tag ([`USER`] or 5) and value.
    pub(super) destination: Option<(u32, &'a [u8])>,
    /// Where the payload is in the input (to slice it without a copy).
    pub(super) payload: std::ops::Range<usize>,
    pub(super) priority: i32,
    pub(super) created_at_unix_micros: i64,
    pub(super) ttl_ms: u32,
    pub(super) headers: BTreeMap<String, String>,
    /// The codec of a compressed envelope (field 11).
    pub(super) compression: u64,
    /// A compressed envelope's body (field 12): the rest is in there.
    pub(super) compressed: Option<&'a [u8]>,
}

/// A cursor over protobuf fields.
struct Fields<'a> {
    buf: &'a [u8],
    at: usize,
}

/// One field's value.
enum Value<'a> {
    Varint(u64),
    /// Length-delimited, with its offset in the input.
    Len(&'a [u8], usize),
    /// Fixed 32 or 64 bits: skipped.
    Fixed,
}

impl<'a> Fields<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.buf.get(self.at).ok_or("truncated varint")?;
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(len).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| format!("field of {len} bytes past the end"))?;
        let taken = &self.buf[self.at..end];
        self.at = end;
        Ok(taken)
    }

    /// The next field's tag and value; `None` at the end.
    fn next(&mut self) -> Result<Option<(u32, Value<'a>)>, String> {
        if self.at == self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let tag = u32::try_from(key >> 3).map_err(|_| format!("tag {} too large", key >> 3))?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|e| e.to_string())?;
                let offset = self.at;
                Value::Len(self.take(len)?, offset)
            }
            5 => {
                self.take(4)?;
                Value::Fixed
            }
            wire => return Err(format!("wire type {wire} of field {tag} is not supported")),
        };
        Ok(Some((tag, value)))
    }
}

impl<'a> Frame<'a> {
    /// Parses an encoded `proto::Envelope`.
    pub(super) fn parse(buf: &'a [u8]) -> Result<Self, String> {
        let mut frame = Frame::default();
        let mut fields = Fields { buf, at: 0 };
        while let Some((tag, value)) = fields.next()? {
            match (tag, value) {
                (1, Value::Len(b, _)) => frame.id = b,
                (2, Value::Len(b, _)) => frame.sender_user = b,
                (3, Value::Len(b, _)) => frame.sender_gateway = b,
                (4 | 5, Value::Len(b, _)) => frame.destination = Some((tag, b)),
                (6, Value::Len(b, at)) => frame.payload = at..at + b.len(),
                // Protobuf truncates a varint to the field's width.
                (7, Value::Varint(v)) => frame.priority = v as i32,
                (8, Value::Varint(v)) => frame.created_at_unix_micros = v as i64,
                (9, Value::Varint(v)) => frame.ttl_ms = v as u32,
                (10, Value::Len(b, _)) => {
                    let (k, v) = entry(b)?;
                    frame.headers.insert(k, v);
                }
                (11, Value::Varint(v)) => frame.compression = v,
                (12, Value::Len(b, _)) => frame.compressed = Some(b),
                (1..=12, _) => return Err(format!("field {tag} has the wrong wire type")),
                _ => {}
            }
        }
        Ok(frame)
    }
}

/// One `headers` map entry (key = 1, value = 2).
fn entry(buf: &[u8]) -> Result<(String, String), String> {
    let (mut key, mut value) = (String::new(), String::new());
    let mut fields = Fields { buf, at: 0 };
    while let Some((tag, field)) = fields.next()? {
        match (tag, field) {
            (1, Value::Len(b, _)) => key = text("header key", b).map_err(|e| e.to_string())?.into(),
            (2, Value::Len(b, _)) => {
                value = text("header value", b).map_err(|e| e.to_string())?.into()
            }
            (1 | 2, _) => return Err(format!("header field {tag} has the wrong wire type")),
            _ => {}
        }
    }
    Ok((key, value))
}

/// A string field's bytes as text.
pub(super) fn text<'a>(field: &'static str, b: &'a [u8]) -> Result<&'a str, super::EnvelopeError> {
    std::str::from_utf8(b)
        .map_err(|_| super::EnvelopeError::Malformed(format!("field `{field}` is not UTF-8")))
}

pub(super) fn varint_len(v: u64) -> usize {
    // 7 bits per byte; 0 still takes one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

pub(super) fn key_len(tag: u32) -> usize {
    varint_len(u64::from(tag << 3))
}

/// A length-delimited field of `len` bytes, left out when empty.
pub(super) fn bytes_len(tag: u32, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        key_len(tag) + varint_len(len as u64) + len
    }
}

/// A varint field, left out when 0.
pub(super) fn varint_field_len(tag: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        key_len(tag) + varint_len(v)
    }
}

/// The body of one `headers` map entry (key = 1, value = 2).
pub(super) fn entry_len(k: &str, v: &str) -> usize {
    bytes_len(1, k.len()) + bytes_len(2, v.len())
}

pub(super) fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

pub(super) fn put_key(buf: &mut Vec<u8>, tag: u32, wire_type: u32) {
    put_varint(buf, u64::from(tag << 3 | wire_type));
}

pub(super) fn put_len_delimited(buf: &mut Vec<u8>, tag: u32, b: &[u8]) {
    put_key(buf, tag, LEN);
    put_varint(buf, b.len() as u64);
    buf.extend_from_slice(b);
}

/// A length-delimited field, left out when empty.
pub(super) fn put_bytes(buf: &mut Vec<u8>, tag: u32, b: &[u8]) {
    if !b.is_empty() {
        put_len_delimited(buf, tag, b);
    }
}

/// The length of a compressed envelope: id, codec and a body of `body` bytes.
pub(super) fn compressed_len(id: &[u8; 16], codec: u64, body: usize) -> usize {
    bytes_len(1, id.len()) + varint_field_len(11, codec) + bytes_len(12, body)
}

/// Writes a compressed envelope (see [`super::compression`]).
pub(super) fn put_compressed(buf: &mut Vec<u8>, id: &[u8; 16], codec: u64, body: &[u8]) {
    put_bytes(buf, 1, id);
    put_varint_field(buf, 11, codec);
    put_bytes(buf, 12, body);
}

/// A varint field, left out when 0.
pub(super) fn put_varint_field(buf: &mut Vec<u8>, tag: u32, v: u64) {
    if v != 0 {
        put_key(buf, tag, VARINT);
        put_varint(buf, v);
    }
}
