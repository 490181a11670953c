//! Parsec DateTime: i64 microseconds since the Unix epoch, UTC (docs/formats.md §2.3).

use std::fmt;

use serde::{Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A UTC instant with microsecond precision, as Parsec stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DateTime(pub i64);

impl DateTime {
    pub(crate) fn from_micros(us: i64) -> Self {
        DateTime(us)
    }

    pub fn as_micros(self) -> i64 {
        self.0
    }

    /// Now, truncated to microseconds.
    pub fn now() -> Self {
        let now = OffsetDateTime::now_utc();
        DateTime((now.unix_timestamp_nanos() / 1000) as i64)
    }

    /// Parses RFC 3339 (any offset; converted to UTC). Sub-microsecond digits are refused
    /// rather than silently truncated.
    pub fn parse_rfc3339(s: &str) -> Result<Self, String> {
        let t = OffsetDateTime::parse(s.trim(), &Rfc3339)
            .map_err(|e| format!("`{s}` is not an RFC 3339 timestamp ({e})"))?;
        let nanos = t.unix_timestamp_nanos();
        if nanos % 1000 != 0 {
            return Err(format!(
                "`{s}` has sub-microsecond precision; Parsec timestamps are in microseconds"
            ));
        }
        i64::try_from(nanos / 1000)
            .map_err(|_| format!("`{s}` is out of range"))
            .map(DateTime)
    }

    /// RFC 3339 in UTC with `Z` and 0, 3 or 6 fractional digits as needed — the form Parsec uses
    /// in file names (docs/formats.md §4.4).
    pub fn to_rfc3339(self) -> String {
        let secs = self.0.div_euclid(1_000_000);
        let micros = self.0.rem_euclid(1_000_000);
        let Ok(t) = OffsetDateTime::from_unix_timestamp(secs) else {
            return format!("{}us", self.0);
        };
        let base = format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        );
        if micros == 0 {
            format!("{base}Z")
        } else if micros % 1000 == 0 {
            format!("{base}.{:03}Z", micros / 1000)
        } else {
            format!("{base}.{micros:06}Z")
        }
    }
}

impl fmt::Display for DateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl std::str::FromStr for DateTime {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_rfc3339(s)
    }
}

impl Serialize for DateTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_forms() {
        assert_eq!(
            DateTime(947548800000000).to_rfc3339(),
            "2000-01-11T00:00:00Z"
        );
        assert_eq!(
            DateTime(1739749097449003).to_rfc3339(),
            "2025-02-16T23:38:17.449003Z"
        );
        assert_eq!(DateTime(1_500_000).to_rfc3339(), "1970-01-01T00:00:01.500Z");
        assert_eq!(DateTime(-1_000_000).to_rfc3339(), "1969-12-31T23:59:59Z");
        for s in ["2000-01-11T00:00:00Z", "2025-02-16T23:38:17.449003Z"] {
            assert_eq!(DateTime::parse_rfc3339(s).unwrap().to_rfc3339(), s);
        }
        assert_eq!(
            DateTime::parse_rfc3339("2000-01-11T01:00:00+01:00").unwrap(),
            DateTime(947548800000000)
        );
        assert!(DateTime::parse_rfc3339("2000-01-11").is_err());
        assert!(DateTime::parse_rfc3339("2000-01-11T00:00:00.0000001Z").is_err());
    }
}
