//! Msgpack as Parsec writes and reads it (spec §2.2–2.3).
//!
//! [`Writer`] emits the smallest encodings in the caller's field order, so that our bytes equal
//! Parsec's before compression. [`Map`] reads a decoded map in any key order with typed
//! accessors for Parsec scalars (DateTime = ext 1, UUID = ext 2).

use rmpv::Value;

use super::{DateTime, FormatError};

/// Msgpack extension type of DateTime.
pub const EXT_DATETIME: i8 = 1;
/// Msgpack extension type of UUID-based IDs.
pub const EXT_UUID: i8 = 2;

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

    pub fn array(&mut self, len: u32) -> &mut Self {
        rmp::encode::write_array_len(&mut self.buf, len).expect("Vec write");
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        rmp::encode::write_str(&mut self.buf, s).expect("Vec write");
        self
    }

    pub fn bin(&mut self, b: &[u8]) -> &mut Self {
        rmp::encode::write_bin(&mut self.buf, b).expect("Vec write");
        self
    }

    pub fn uint(&mut self, v: u64) -> &mut Self {
        rmp::encode::write_uint(&mut self.buf, v).expect("Vec write");
        self
    }

    pub fn bool(&mut self, v: bool) -> &mut Self {
        rmp::encode::write_bool(&mut self.buf, v).expect("Vec write");
        self
    }

    pub fn nil(&mut self) -> &mut Self {
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

/// Decodes exactly one msgpack value; trailing bytes are an error.
pub fn decode(bytes: &[u8]) -> Result<Value, FormatError> {
    let mut cursor = bytes;
    let value =
        rmpv::decode::read_value(&mut cursor).map_err(|e| FormatError::Msgpack(e.to_string()))?;
    if !cursor.is_empty() {
        return Err(FormatError::TrailingBytes);
    }
    Ok(value)
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
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    pub fn required(&self, key: &'static str) -> Result<&'a Value, FormatError> {
        self.get(key).ok_or(FormatError::MissingField(key))
    }

    /// Checks the `type` field.
    pub fn expect_type(&self, expected: &str) -> Result<(), FormatError> {
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

    pub fn str(&self, key: &'static str) -> Result<&'a str, FormatError> {
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

    pub fn bool(&self, key: &'static str) -> Result<bool, FormatError> {
        self.required(key)?.as_bool().ok_or(FormatError::BadField {
            field: key,
            reason: "expected a boolean".into(),
        })
    }

    pub fn datetime(&self, key: &'static str) -> Result<DateTime, FormatError> {
        as_datetime(self.required(key)?, key)
    }

    pub fn uuid(&self, key: &'static str) -> Result<[u8; 16], FormatError> {
        as_uuid(self.required(key)?, key)
    }

    /// A nullable field: present, possibly nil.
    pub fn nullable(&self, key: &'static str) -> Result<Option<&'a Value>, FormatError> {
        let v = self.required(key)?;
        Ok(if v.is_nil() { None } else { Some(v) })
    }

    pub fn nullable_uuid(&self, key: &'static str) -> Result<Option<[u8; 16]>, FormatError> {
        self.nullable(key)?.map(|v| as_uuid(v, key)).transpose()
    }

    pub fn nullable_str(&self, key: &'static str) -> Result<Option<&'a str>, FormatError> {
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

pub fn as_str<'a>(v: &'a Value, field: &'static str) -> Result<&'a str, FormatError> {
    match v {
        Value::String(s) => s
            .as_str()
            .ok_or_else(|| bad(field, "string is not valid UTF-8")),
        _ => Err(bad(field, "expected a string")),
    }
}

pub fn as_bin<'a>(v: &'a Value, field: &'static str) -> Result<&'a [u8], FormatError> {
    match v {
        Value::Binary(b) => Ok(b),
        _ => Err(bad(field, "expected bytes (msgpack bin)")),
    }
}

pub fn as_uint(v: &Value, field: &'static str) -> Result<u64, FormatError> {
    match v {
        Value::Integer(i) => i
            .as_u64()
            .ok_or_else(|| bad(field, "expected a non-negative integer")),
        _ => Err(bad(field, "expected an integer")),
    }
}

pub fn as_datetime(v: &Value, field: &'static str) -> Result<DateTime, FormatError> {
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
}
