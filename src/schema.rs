//! Canonical tables: the columns built-in jobs read and write, with their
//! types, keys and required fields.
//!
//! Timestamps are UTC with microsecond precision, stored as Delta `timestamp`
//! (Parquet `TIMESTAMP(MICROS, isAdjustedToUTC=true)`), which is what readers
//! of Delta protocol version 1/2 expect.

use polars::prelude::{DataType, TimeUnit, TimeZone};

/// The type of a canonical column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    String,
    Int64,
    Float64,
    Boolean,
    /// UTC timestamp, microsecond precision.
    Timestamp,
}

impl ColumnType {
    /// Returns the Polars data type a column of this type has in a table.
    pub fn dtype(self) -> DataType {
        match self {
            ColumnType::String => DataType::String,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::Boolean => DataType::Boolean,
            ColumnType::Timestamp => utc_timestamp(),
        }
    }

    /// Returns the name used in error messages and help text.
    pub fn name(self) -> &'static str {
        match self {
            ColumnType::String => "string",
            ColumnType::Int64 => "integer",
            ColumnType::Float64 => "number",
            ColumnType::Boolean => "boolean",
            ColumnType::Timestamp => "timestamp",
        }
    }
}

/// Returns the data type of every timestamp column: microseconds, UTC.
pub fn utc_timestamp() -> DataType {
    DataType::Datetime(TimeUnit::Microseconds, Some(TimeZone::UTC))
}

/// One column of a canonical table.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub kind: ColumnType,
    /// A row with this column empty is rejected at ingest.
    pub required: bool,
    /// The allowed values, for columns with a fixed vocabulary. Ingest
    /// trims and lower-cases them and rejects rows with other values.
    pub values: Option<&'static [&'static str]>,
}

const fn col(name: &'static str, kind: ColumnType, required: bool) -> Column {
    Column {
        name,
        kind,
        required,
        values: None,
    }
}

const fn one_of(name: &'static str, required: bool, values: &'static [&'static str]) -> Column {
    Column {
        name,
        kind: ColumnType::String,
        required,
        values: Some(values),
    }
}

/// A canonical table: its name, unique key and columns.
#[derive(Debug, Clone, Copy)]
pub struct CanonicalTable {
    pub name: &'static str,
    /// The column that identifies a row; ingest rejects duplicates of it.
    pub key: &'static str,
    pub columns: &'static [Column],
}

impl CanonicalTable {
    /// Returns the column named `name`, if the table has one.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Returns the column names, in table order.
    pub fn column_names(&self) -> Vec<&'static str> {
        self.columns.iter().map(|c| c.name).collect()
    }
}

use ColumnType::{Float64, String as Str, Timestamp};

pub const CONTACTS: CanonicalTable = CanonicalTable {
    name: "contacts",
    key: "contact_id",
    columns: &[
        col("contact_id", Str, true),
        col("email", Str, false),
        col("first_name", Str, false),
        col("last_name", Str, false),
        col("phone", Str, false),
        col("company", Str, false),
        col("company_domain", Str, false),
        col("job_title", Str, false),
        col("country", Str, false),
        col("city", Str, false),
        col("postcode", Str, false),
        col("source", Str, false),
        col("lifecycle_stage", Str, false),
        col("created_at", Timestamp, false),
        col("updated_at", Timestamp, false),
    ],
};

pub const EMAIL_EVENTS: CanonicalTable = CanonicalTable {
    name: "email_events",
    key: "event_id",
    columns: &[
        col("event_id", Str, true),
        col("contact_id", Str, false),
        col("email", Str, false),
        one_of("event_type", true, &EVENT_TYPES),
        one_of("bounce_type", false, &BOUNCE_TYPES),
        col("reason", Str, false),
        col("campaign_id", Str, false),
        col("occurred_at", Timestamp, true),
    ],
};

pub const ACTIVITIES: CanonicalTable = CanonicalTable {
    name: "activities",
    key: "activity_id",
    columns: &[
        col("activity_id", Str, true),
        col("contact_id", Str, true),
        col("activity_type", Str, true),
        col("occurred_at", Timestamp, true),
    ],
};

pub const ORDERS: CanonicalTable = CanonicalTable {
    name: "orders",
    key: "order_id",
    columns: &[
        col("order_id", Str, true),
        col("contact_id", Str, true),
        col("ordered_at", Timestamp, true),
        col("amount", Float64, true),
        col("currency", Str, false),
        one_of("status", false, &ORDER_STATUSES),
    ],
};

/// Manual suppressions and removals, loaded with
/// `nightshift ingest suppression_manual FILE --mode upsert`: the latest
/// action per address counts, and each load is a table version.
pub const SUPPRESSION_MANUAL: CanonicalTable = CanonicalTable {
    name: "suppression_manual",
    key: "email",
    columns: &[
        col("email", Str, true),
        one_of("action", true, &MANUAL_ACTIONS),
        col("reason", Str, true),
        col("requested_by", Str, false),
        col("requested_at", Timestamp, true),
    ],
};

/// The tables that ingest maps sources onto.
pub const INPUT_TABLES: [CanonicalTable; 5] = [
    CONTACTS,
    EMAIL_EVENTS,
    ACTIVITIES,
    ORDERS,
    SUPPRESSION_MANUAL,
];

/// Values of `suppression_manual.action`.
pub const MANUAL_ACTIONS: [&str; 2] = ["suppress", "remove"];

/// Returns the canonical input table named `name`.
pub fn input_table(name: &str) -> Option<&'static CanonicalTable> {
    INPUT_TABLES.iter().find(|t| t.name == name)
}

/// Values of `email_events.event_type`.
pub const EVENT_TYPES: [&str; 7] = [
    "sent",
    "delivered",
    "open",
    "click",
    "bounce",
    "complaint",
    "unsubscribe",
];

/// Values of `email_events.bounce_type`.
pub const BOUNCE_TYPES: [&str; 3] = ["hard", "soft", "block"];

/// Values of `orders.status`.
pub const ORDER_STATUSES: [&str; 3] = ["completed", "refunded", "cancelled"];

/// Returns a literal UTC timestamp expression of `micros` microseconds
/// since the epoch, typed as the tables store timestamps.
pub fn utc_literal(micros: i64) -> polars::prelude::Expr {
    use polars::prelude::*;
    lit(micros)
        .cast(DataType::Datetime(TimeUnit::Microseconds, None))
        .cast(utc_timestamp())
}
