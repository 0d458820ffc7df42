//! Conversion of source columns to the canonical column types.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use polars::prelude::*;

use crate::error::{Error, Result};
use crate::schema::ColumnType;

/// Converts one source column to `kind`, noting a problem for each row whose
/// value is missing (when required) or cannot be parsed.
pub(super) fn convert_column(
    column: &Series,
    name: &str,
    kind: ColumnType,
    required: bool,
    problems: &mut [Option<String>],
) -> Result<Series> {
    let target = kind.dtype();
    let converted = if column.dtype() == &DataType::String {
        let values = column.str()?;
        match kind {
            ColumnType::String => column.clone(),
            ColumnType::Timestamp => {
                let parsed: Vec<Option<i64>> = values
                    .iter()
                    .enumerate()
                    .map(|(row, value)| {
                        let value = value?.trim();
                        if value.is_empty() {
                            return None;
                        }
                        let micros = parse_timestamp(value);
                        if micros.is_none() && problems[row].is_none() {
                            problems[row] = Some(format!(
                                "invalid timestamp `{value}` in column {name}; expected e.g. \
                                 2024-03-05T10:22:31Z or 2024-03-05"
                            ));
                        }
                        micros
                    })
                    .collect();
                Series::new(name.into(), parsed).cast(&target)?
            }
            ColumnType::Float64 => {
                let parsed: Vec<Option<f64>> = values
                    .iter()
                    .enumerate()
                    .map(|(row, value)| {
                        let value = value?.trim();
                        let number = value.parse::<f64>().ok().filter(|n| n.is_finite());
                        if number.is_none() && problems[row].is_none() {
                            problems[row] =
                                Some(format!("invalid number `{value}` in column {name}"));
                        }
                        number
                    })
                    .collect();
                Series::new(name.into(), parsed)
            }
            ColumnType::Int64 => {
                let parsed: Vec<Option<i64>> = values
                    .iter()
                    .enumerate()
                    .map(|(row, value)| {
                        let value = value?.trim();
                        let number = value.parse::<i64>().ok();
                        if number.is_none() && problems[row].is_none() {
                            problems[row] =
                                Some(format!("invalid integer `{value}` in column {name}"));
                        }
                        number
                    })
                    .collect();
                Series::new(name.into(), parsed)
            }
            ColumnType::Boolean => {
                let parsed: Vec<Option<bool>> = values
                    .iter()
                    .enumerate()
                    .map(|(row, value)| {
                        let value = value?.trim();
                        let flag = match value.to_ascii_lowercase().as_str() {
                            "true" | "t" | "yes" | "1" => Some(true),
                            "false" | "f" | "no" | "0" => Some(false),
                            _ => None,
                        };
                        if flag.is_none() && problems[row].is_none() {
                            problems[row] =
                                Some(format!("invalid boolean `{value}` in column {name}"));
                        }
                        flag
                    })
                    .collect();
                Series::new(name.into(), parsed)
            }
        }
    } else {
        let source = match (kind, column.dtype()) {
            // A timestamp without a time zone is read as UTC: its physical
            // value already is microseconds since the epoch in UTC.
            (ColumnType::Timestamp, DataType::Datetime(_, None)) => column
                .cast(&DataType::Datetime(TimeUnit::Microseconds, None))?
                .cast(&DataType::Int64)?,
            _ => column.clone(),
        };
        let cast = source.cast(&target).map_err(|e| {
            Error::Input(format!(
                "column {name} of type {} cannot become a {}: {e}",
                column.dtype(),
                kind.name()
            ))
        })?;
        let lost = cast.is_null() & !source.is_null();
        for (row, lost) in lost.iter().enumerate() {
            if lost == Some(true) && problems[row].is_none() {
                let value = source.get(row).map(|v| v.to_string()).unwrap_or_default();
                problems[row] = Some(format!(
                    "invalid {} `{value}` in column {name}",
                    kind.name()
                ));
            }
        }
        cast
    };
    if required {
        for (row, value) in converted.is_null().iter().enumerate() {
            if value == Some(true) && problems[row].is_none() {
                problems[row] = Some(format!("missing required field {name}"));
            }
        }
    }
    Ok(converted)
}

/// Parses a timestamp into microseconds since the Unix epoch, in UTC. Takes
/// RFC 3339, offsets written `+0000` as Polars and pandas write them,
/// `YYYY-MM-DD HH:MM:SS[.fff]` and
/// `YYYY-MM-DDTHH:MM:SS[.fff]` (read as UTC), `YYYY-MM-DD` and `YYYYMMDD`
/// (midnight UTC).
pub fn parse_timestamp(value: &str) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        return Some(t.with_timezone(&Utc).timestamp_micros());
    }
    for format in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(value, format) {
            return Some(t.and_utc().timestamp_micros());
        }
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
        if let Ok(t) = DateTime::parse_from_str(value, format) {
            return Some(t.with_timezone(&Utc).timestamp_micros());
        }
    }
    for format in ["%Y-%m-%d", "%Y%m%d"] {
        if let Ok(d) = NaiveDate::parse_from_str(value, format) {
            return d
                .and_hms_opt(0, 0, 0)
                .map(|t| t.and_utc().timestamp_micros());
        }
    }
    None
}
