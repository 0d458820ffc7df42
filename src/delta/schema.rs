//! Conversion between Polars schemas and Delta schema strings.

use polars::prelude::*;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::schema::utc_timestamp;

/// Casts the columns of `df` to types a Delta table of protocol 1/2 stores:
/// unsigned integers widen to signed, timestamps become microseconds in UTC,
/// categoricals become strings.
pub fn normalize_frame(df: DataFrame) -> Result<DataFrame> {
    let mut casts = Vec::new();
    for (name, dtype) in df.schema().iter() {
        if let Some(target) = storable_dtype(dtype)? {
            casts.push(col(name.clone()).cast(target));
        }
    }
    if casts.is_empty() {
        return Ok(df);
    }
    Ok(df.lazy().with_columns(casts).collect()?)
}

/// Returns the type `dtype` must be cast to before it is stored, or `None`
/// when it is stored as it is.
fn storable_dtype(dtype: &DataType) -> Result<Option<DataType>> {
    let target = match dtype {
        DataType::UInt8 | DataType::UInt16 => Some(DataType::Int32),
        DataType::UInt32 | DataType::UInt64 => Some(DataType::Int64),
        DataType::Datetime(TimeUnit::Microseconds, Some(tz)) if tz.as_str() == "UTC" => None,
        DataType::Datetime(_, _) => Some(utc_timestamp()),
        DataType::Categorical(_, _) | DataType::Enum(_, _) => Some(DataType::String),
        DataType::Null => Some(DataType::String),
        DataType::List(inner) => {
            storable_dtype(inner)?.map(|inner| DataType::List(Box::new(inner)))
        }
        _ => None,
    };
    Ok(target)
}

/// Returns the Delta type of a Polars type, as JSON.
fn delta_type(name: &str, dtype: &DataType) -> Result<Value> {
    let primitive = match dtype {
        DataType::String => "string",
        DataType::Boolean => "boolean",
        DataType::Int8 => "byte",
        DataType::Int16 => "short",
        DataType::Int32 => "integer",
        DataType::Int64 => "long",
        DataType::Float32 => "float",
        DataType::Float64 => "double",
        DataType::Date => "date",
        DataType::Datetime(_, _) => "timestamp",
        DataType::Binary => "binary",
        DataType::List(inner) => {
            return Ok(json!({
                "type": "array",
                "elementType": delta_type(name, inner)?,
                "containsNull": true,
            }));
        }
        other => {
            return Err(Error::Data(format!(
                "column `{name}` has type {other}, which nightshift cannot store in a Delta table; \
                 cast it to a string or number first"
            )));
        }
    };
    Ok(Value::String(primitive.into()))
}

/// Returns the Delta schema string of `schema`; every column is nullable.
pub fn to_schema_string(schema: &Schema) -> Result<String> {
    let mut fields = Vec::new();
    for (name, dtype) in schema.iter() {
        fields.push(json!({
            "name": name.as_str(),
            "type": delta_type(name, dtype)?,
            "nullable": true,
            "metadata": {},
        }));
    }
    Ok(json!({ "type": "struct", "fields": fields }).to_string())
}

fn polars_type(value: &Value) -> Result<DataType> {
    if let Some(name) = value.as_str() {
        let dtype = match name {
            "string" => DataType::String,
            "boolean" => DataType::Boolean,
            "byte" => DataType::Int8,
            "short" => DataType::Int16,
            "integer" => DataType::Int32,
            "long" => DataType::Int64,
            "float" => DataType::Float32,
            "double" => DataType::Float64,
            "date" => DataType::Date,
            "timestamp" | "timestamp_ntz" => utc_timestamp(),
            "binary" => DataType::Binary,
            other => {
                return Err(Error::Data(format!(
                    "unsupported Delta column type `{other}`"
                )));
            }
        };
        return Ok(dtype);
    }
    if value.get("type").and_then(Value::as_str) == Some("array") {
        let inner = value.get("elementType").cloned().unwrap_or(Value::Null);
        return Ok(DataType::List(Box::new(polars_type(&inner)?)));
    }
    Err(Error::Data(format!(
        "unsupported Delta column type {value}"
    )))
}

/// Parses a Delta schema string into a Polars schema.
pub fn from_schema_string(text: &str) -> Result<Schema> {
    let value: Value = serde_json::from_str(text)?;
    let fields = value
        .get("fields")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::Data(format!("invalid Delta schema string: {text}")))?;
    let mut schema = Schema::with_capacity(fields.len());
    for field in fields {
        let name = field
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Data(format!("Delta schema field without a name: {field}")))?;
        let dtype = polars_type(field.get("type").unwrap_or(&Value::Null))?;
        schema.with_column(name.into(), dtype);
    }
    Ok(schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_string_round_trips() {
        let schema = Schema::from_iter([
            Field::new("a".into(), DataType::String),
            Field::new("b".into(), DataType::Int64),
            Field::new("c".into(), utc_timestamp()),
            Field::new("d".into(), DataType::List(Box::new(DataType::String))),
        ]);
        let text = to_schema_string(&schema).unwrap();
        assert!(text.contains("\"timestamp\""), "{text}");
        assert_eq!(from_schema_string(&text).unwrap(), schema);
    }
}
