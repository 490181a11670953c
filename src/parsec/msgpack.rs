//! Msgpack as Parsec writes and reads it (docs/formats.md §2.2–2.3).
//!
//! [`Writer`] emits the smallest encodings in the caller's field order, so that our bytes equal
//! Parsec's before compression. [`Map`] reads a decoded map in any key order with typed
//! accessors for Parsec scalars (DateTime = ext 1, UUID = ext 2).

use rmpv::Value;

use super::limits::{self, ObjectLimits};
use super::{DateTime, FormatError};

/// Msgpack extension type of DateTime.
pub(crate) const EXT_DATETIME: i8 = 1;
/// Msgpack extension type of UUID-based IDs.
pub(crate) const EXT_UUID: i8 = 2;

/// Exact msgpack writer.
#[derive(Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    pub fn map(&mut self, len: u32) -> &mut Self {
        rmp::encode::write_map_len(&mut self.buf, len).expect("Vec write");
        self
    }

    pub(crate) fn array(&mut self, len: u32) -> &mut Self {
        rmp::encode::write_array_len(&mut self.buf, len).expect("Vec write");
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        rmp::encode::write_str(&mut self.buf, s).expect("Vec write");
        self
    }

    pub(crate) fn bin(&mut self, b: &[u8]) -> &mut Self {
        rmp::encode::write_bin(&mut self.buf, b).expect("Vec write");
        self
    }

    pub(crate) fn uint(&mut self, v: u64) -> &mut Self {
        rmp::encode::write_uint(&mut self.buf, v).expect("Vec write");
        self
    }

    pub(crate) fn nil(&mut self) -> &mut Self {
        rmp::encode::write_nil(&mut self.buf).expect("Vec write");
        self
    }

    /// DateTime: fixext 8, type 1, big-endian i64 microseconds (`d7 01 …`).
    pub fn datetime(&mut self, t: DateTime) -> &mut Self {
        rmp::encode::write_ext_meta(&mut self.buf, 8, EXT_DATETIME).expect("Vec write");
        self.buf.extend_from_slice(&t.as_micros().to_be_bytes());
        self
    }

    /// UUID: fixext 16, type 2 (`d8 02 …`).
    pub fn uuid(&mut self, id: &[u8; 16]) -> &mut Self {
        rmp::encode::write_ext_meta(&mut self.buf, 16, EXT_UUID).expect("Vec write");
        self.buf.extend_from_slice(id);
        self
    }

    /// `"key"` followed by the value written by `f`.
    pub fn field(&mut self, key: &str, f: impl FnOnce(&mut Self)) -> &mut Self {
        self.str(key);
        f(self);
        self
    }
}

/// Decodes exactly one msgpack value within the limits of a manifest (the largest object kind);
/// trailing bytes are an error. Decoders of a known kind use `decode_bounded`.
pub fn decode(bytes: &[u8]) -> Result<Value, FormatError> {
    decode_bounded(bytes, &limits::MANIFEST)
}

/// Decodes exactly one msgpack value, refusing anything beyond `limits` before it is built:
/// the structure is first walked without allocating (iteratively, so the input cannot choose the
/// recursion depth), then `rmpv` builds a value already known to be small and shallow.
pub(crate) fn decode_bounded(bytes: &[u8], limits: &ObjectLimits) -> Result<Value, FormatError> {
    check_structure(bytes, limits)?;
    let mut cursor = bytes;
    // `rmpv` spends one level per value and one per container or string/binary payload.
    let value = rmpv::decode::read_value_with_max_depth(&mut cursor, 2 * limits.max_depth + 2)
        .map_err(|e| FormatError::Msgpack(e.to_string()))?;
    if !cursor.is_empty() {
        return Err(FormatError::TrailingBytes);
    }
    Ok(value)
}

/// Walks one msgpack value without building it: every length is checked against the bytes that
/// remain (an array of n values needs at least n bytes), the number of values against
/// `max_values` and the nesting against `max_depth`. Trailing bytes are an error.
pub(crate) fn check_structure(bytes: &[u8], limits: &ObjectLimits) -> Result<(), FormatError> {
    let too_much = |why: String| FormatError::Msgpack(format!("{} refused: {why}", limits.what));
    // Values still expected by each open container (bounded by max_depth entries).
    let mut open: Vec<u64> = Vec::new();
    let mut pos = 0usize;
    let mut values = 0usize;
    let mut pending: u64 = 1;
    loop {
        if pending == 0 {
            match open.pop() {
                Some(p) => {
                    pending = p;
                    continue;
                }
                None => break,
            }
        }
        pending -= 1;
        values += 1;
        if values > limits.max_values {
            return Err(too_much(format!(
                "more than {} msgpack values",
                limits.max_values
            )));
        }
        let rest = &bytes[pos..];
        let (&marker, _) = rest
            .split_first()
            .ok_or_else(|| FormatError::Msgpack("truncated msgpack data".into()))?;
        let header = header_of(marker, &rest[1..])?;
        pos += 1 + header.length_bytes;
        let remaining = (bytes.len() - pos) as u64;
        match header.kind {
            Kind::Payload(n) => {
                if n > remaining {
                    return Err(FormatError::Msgpack(format!(
                        "a {n}-byte payload overruns the data ({remaining} bytes left)"
                    )));
                }
                pos += n as usize;
            }
            Kind::Container(n) => {
                if n > remaining {
                    return Err(FormatError::Msgpack(format!(
                        "a container of {n} values overruns the data ({remaining} bytes left)"
                    )));
                }
                if n as usize > limits.max_values {
                    return Err(too_much(format!(
                        "a container of {n} values (limit {})",
                        limits.max_values
                    )));
                }
                if open.len() + 1 > limits.max_depth {
                    return Err(too_much(format!(
                        "msgpack nesting deeper than {}",
                        limits.max_depth
                    )));
                }
                open.push(pending);
                pending = n;
            }
        }
    }
    if pos != bytes.len() {
        return Err(FormatError::TrailingBytes);
    }
    Ok(())
}

enum Kind {
    /// A scalar, string, binary or extension: this many bytes follow the header.
    Payload(u64),
    /// An array or map: this many values follow (twice the entries for a map).
    Container(u64),
}

struct Header {
    /// Bytes after the marker holding lengths (and the extension type).
    length_bytes: usize,
    kind: Kind,
}

fn header_of(marker: u8, after: &[u8]) -> Result<Header, FormatError> {
    let be = |n: usize| -> Result<u64, FormatError> {
        let b = after
            .get(..n)
            .ok_or_else(|| FormatError::Msgpack("truncated msgpack length".into()))?;
        Ok(b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
    };
    let payload = |length_bytes, n| Header {
        length_bytes,
        kind: Kind::Payload(n),
    };
    let container = |length_bytes, n| Header {
        length_bytes,
        kind: Kind::Container(n),
    };
    Ok(match marker {
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => payload(0, 0),
        0x80..=0x8f => container(0, 2 * u64::from(marker & 0x0f)),
        0x90..=0x9f => container(0, u64::from(marker & 0x0f)),
        0xa0..=0xbf => payload(0, u64::from(marker & 0x1f)),
        0xc1 => return Err(FormatError::Msgpack("reserved marker 0xc1".into())),
        // bin8/16/32, str8/16/32
        0xc4 | 0xd9 => payload(1, be(1)?),
        0xc5 | 0xda => payload(2, be(2)?),
        0xc6 | 0xdb => payload(4, be(4)?),
        // ext8/16/32: length, then the type byte (counted as payload)
        0xc7 => payload(1, be(1)? + 1),
        0xc8 => payload(2, be(2)? + 1),
        0xc9 => payload(4, be(4)? + 1),
        0xca => payload(0, 4),
        0xcb => payload(0, 8),
        0xcc | 0xd0 => payload(0, 1),
        0xcd | 0xd1 => payload(0, 2),
        0xce | 0xd2 => payload(0, 4),
        0xcf | 0xd3 => payload(0, 8),
        // fixext 1/2/4/8/16: type byte + data
        0xd4 => payload(0, 2),
        0xd5 => payload(0, 3),
        0xd6 => payload(0, 5),
        0xd7 => payload(0, 9),
        0xd8 => payload(0, 17),
        0xdc => container(2, be(2)?),
        0xdd => container(4, be(4)?),
        0xde => container(2, 2 * be(2)?),
        0xdf => container(4, 2 * be(4)?),
    })
}

/// A decoded msgpack map with string keys.
pub struct Map<'a> {
    entries: &'a [(Value, Value)],
}

impl<'a> Map<'a> {
    pub fn new(value: &'a Value) -> Result<Self, FormatError> {
        match value {
            Value::Map(entries) => Ok(Map { entries }),
            _ => Err(FormatError::NotAMap),
        }
    }

    /// The raw value of `key`, if present.
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    pub(crate) fn required(&self, key: &'static str) -> Result<&'a Value, FormatError> {
        self.get(key).ok_or(FormatError::MissingField(key))
    }

    /// Checks the `type` field.
    pub(crate) fn expect_type(&self, expected: &str) -> Result<(), FormatError> {
        let found = self.str("type")?;
        if found != expected {
            return Err(FormatError::WrongType {
                expected: expected.to_string(),
                found: found.to_string(),
            });
        }
        Ok(())
    }

    /// The `type` field.
    pub fn type_name(&self) -> Result<&'a str, FormatError> {
        self.str("type")
    }

    pub(crate) fn str(&self, key: &'static str) -> Result<&'a str, FormatError> {
        as_str(self.required(key)?, key)
    }

    pub fn bin(&self, key: &'static str) -> Result<&'a [u8], FormatError> {
        as_bin(self.required(key)?, key)
    }

    pub fn bin32(&self, key: &'static str) -> Result<[u8; 32], FormatError> {
        let b = self.bin(key)?;
        b.try_into().map_err(|_| FormatError::BadField {
            field: key,
            reason: format!("expected 32 bytes, found {}", b.len()),
        })
    }

    pub fn uint(&self, key: &'static str) -> Result<u64, FormatError> {
        as_uint(self.required(key)?, key)
    }

    pub fn datetime(&self, key: &'static str) -> Result<DateTime, FormatError> {
        as_datetime(self.required(key)?, key)
    }

    pub fn uuid(&self, key: &'static str) -> Result<[u8; 16], FormatError> {
        as_uuid(self.required(key)?, key)
    }

    /// A nullable field: present, possibly nil.
    pub(crate) fn nullable(&self, key: &'static str) -> Result<Option<&'a Value>, FormatError> {
        let v = self.required(key)?;
        Ok(if v.is_nil() { None } else { Some(v) })
    }

    pub fn nullable_uuid(&self, key: &'static str) -> Result<Option<[u8; 16]>, FormatError> {
        self.nullable(key)?.map(|v| as_uuid(v, key)).transpose()
    }

    pub(crate) fn nullable_str(&self, key: &'static str) -> Result<Option<&'a str>, FormatError> {
        self.nullable(key)?.map(|v| as_str(v, key)).transpose()
    }

    pub fn array(&self, key: &'static str) -> Result<&'a [Value], FormatError> {
        match self.required(key)? {
            Value::Array(items) => Ok(items),
            _ => Err(bad(key, "expected an array")),
        }
    }

    pub fn map(&self, key: &'static str) -> Result<Map<'a>, FormatError> {
        Map::new(self.required(key)?).map_err(|_| bad(key, "expected a map"))
    }

    /// Entries of the map, for maps with arbitrary keys (folder children).
    pub fn entries(&self) -> &'a [(Value, Value)] {
        self.entries
    }
}

fn bad(field: &'static str, reason: &str) -> FormatError {
    FormatError::BadField {
        field,
        reason: reason.to_string(),
    }
}

pub(crate) fn as_str<'a>(v: &'a Value, field: &'static str) -> Result<&'a str, FormatError> {
    match v {
        Value::String(s) => s
            .as_str()
            .ok_or_else(|| bad(field, "string is not valid UTF-8")),
        _ => Err(bad(field, "expected a string")),
    }
}

pub(crate) fn as_bin<'a>(v: &'a Value, field: &'static str) -> Result<&'a [u8], FormatError> {
    match v {
        Value::Binary(b) => Ok(b),
        _ => Err(bad(field, "expected bytes (msgpack bin)")),
    }
}

pub(crate) fn as_uint(v: &Value, field: &'static str) -> Result<u64, FormatError> {
    match v {
        Value::Integer(i) => i
            .as_u64()
            .ok_or_else(|| bad(field, "expected a non-negative integer")),
        _ => Err(bad(field, "expected an integer")),
    }
}

pub(crate) fn as_datetime(v: &Value, field: &'static str) -> Result<DateTime, FormatError> {
    match v {
        Value::Ext(EXT_DATETIME, data) => {
            let raw: [u8; 8] = data.as_slice().try_into().map_err(|_| {
                bad(
                    field,
                    &format!("DateTime ext has {} bytes, not 8", data.len()),
                )
            })?;
            Ok(DateTime(i64::from_be_bytes(raw)))
        }
        _ => Err(bad(field, "expected a DateTime (msgpack ext 1)")),
    }
}

pub fn as_uuid(v: &Value, field: &'static str) -> Result<[u8; 16], FormatError> {
    match v {
        Value::Ext(EXT_UUID, data) => data
            .as_slice()
            .try_into()
            .map_err(|_| bad(field, &format!("UUID ext has {} bytes, not 16", data.len()))),
        _ => Err(bad(field, "expected a UUID (msgpack ext 2)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_encodings_match_spec_v3() {
        let mut w = Writer::new();
        w.datetime(DateTime(947548800000000));
        assert_eq!(hex::encode(w.into_bytes()), "d70100035dca65a1a000");
        let mut w = Writer::new();
        w.datetime(DateTime(-1000000));
        assert_eq!(hex::encode(w.into_bytes()), "d701fffffffffff0bdc0");
        let mut w = Writer::new();
        let id: [u8; 16] = hex::decode("f0000000000000000000000000000003")
            .unwrap()
            .try_into()
            .unwrap();
        w.uuid(&id);
        let bytes = w.into_bytes();
        assert_eq!(hex::encode(&bytes), "d802f0000000000000000000000000000003");
        assert_eq!(as_uuid(&decode(&bytes).unwrap(), "id").unwrap(), id);
    }

    #[test]
    fn typed_reader_errors_name_the_field() {
        let mut w = Writer::new();
        w.map(2)
            .field("type", |w| {
                w.str("x");
            })
            .field("id", |w| {
                w.bin(&[0; 16]);
            });
        let v = decode(&w.into_bytes()).unwrap();
        let m = Map::new(&v).unwrap();
        m.expect_type("x").unwrap();
        assert!(matches!(
            m.expect_type("y"),
            Err(FormatError::WrongType { .. })
        ));
        assert!(matches!(
            m.uuid("id"),
            Err(FormatError::BadField { field: "id", .. })
        ));
        assert_eq!(m.uint("nope"), Err(FormatError::MissingField("nope")));
    }

    #[test]
    fn a_million_nested_arrays_are_refused_without_recursion() {
        let mut bytes = vec![0x91u8; 1_000_000];
        bytes.push(0xc0);
        let err = decode(&bytes).unwrap_err();
        assert!(err.to_string().contains("nesting deeper than 8"), "{err}");
        // Exactly the limit is fine.
        let mut ok = vec![0x91u8; limits::MSGPACK_MAX_DEPTH];
        ok.push(0xc0);
        decode(&ok).unwrap();
        let mut deeper = vec![0x91u8; limits::MSGPACK_MAX_DEPTH + 1];
        deeper.push(0xc0);
        assert!(decode(&deeper).is_err());
    }

    #[test]
    fn declared_lengths_are_checked_against_the_remaining_bytes() {
        // array32 of 2^32-1 values, map32, str32 and bin32 of 4 GiB, ext32: 5 bytes of input.
        for header in [
            &[0xdd, 0xff, 0xff, 0xff, 0xff][..],
            &[0xdf, 0xff, 0xff, 0xff, 0xff],
            &[0xdb, 0xff, 0xff, 0xff, 0xff],
            &[0xc6, 0xff, 0xff, 0xff, 0xff],
            &[0xc9, 0xff, 0xff, 0xff, 0xff, 0x01],
        ] {
            let err = decode(header).unwrap_err();
            assert!(err.to_string().contains("overruns"), "{err}");
        }
        assert!(decode(&[0xdd, 0x00]).is_err(), "truncated length");
        assert!(decode(&[0xc1]).is_err(), "reserved marker");
        assert_eq!(decode(&[0xc0, 0xc0]), Err(FormatError::TrailingBytes));
    }

    #[test]
    fn value_count_is_bounded_per_object_kind() {
        // 2000 nils in one array: fine for a manifest, too many for a certificate.
        let mut bytes = vec![0xdc, 0x07, 0xd0];
        bytes.extend(std::iter::repeat(0xc0).take(2000));
        decode(&bytes).unwrap();
        let err = decode_bounded(&bytes, &limits::CERTIFICATE).unwrap_err();
        assert!(err.to_string().contains("certificate refused"), "{err}");
    }
}
