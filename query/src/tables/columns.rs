//! Column types every table shares, chosen so the pg-wire front end maps each
//! to one PostgreSQL type: integers are signed 64-bit (`int8`; every BACKBEAT
//! count and index fits), times are microseconds in UTC (`timestamptz`).

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, TimeUnit};

/// The type of every time column: UTC microseconds.
pub fn utc_time_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// A time column's field.
pub fn time_field(name: &str, nullable: bool) -> Field {
    Field::new(name, utc_time_type(), nullable)
}

/// A time column from microseconds since the Unix epoch.
pub fn time_column(values: impl IntoIterator<Item = Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from_iter(values).with_timezone("UTC"))
}

/// A count or index as the tables hold it (signed 64-bit, saturating: no
/// BACKBEAT value comes near 2^63, a forged one is clamped rather than wrapped).
pub fn int64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Milliseconds (an HLC's physical part) as the microseconds of a time column.
pub fn ms_to_us(ms: u64) -> i64 {
    int64(ms).saturating_mul(1000)
}
