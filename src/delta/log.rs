//! Delta Lake log actions, as written to `_delta_log/<version>.json`: one
//! JSON object per line, each with a single key naming the action.
//!
//! Only the actions of protocol reader version 1 and writer version 2 are
//! modelled. Actions of other kinds in a log (`txn`, `cdc`, ...) are skipped
//! when read.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The minimum reader version nightshift writes and reads.
pub const MIN_READER_VERSION: i32 = 1;
/// The minimum writer version nightshift writes.
pub const MIN_WRITER_VERSION: i32 = 2;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Protocol {
    pub min_reader_version: i32,
    pub min_writer_version: i32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Format {
    pub provider: String,
    #[serde(default)]
    pub options: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub format: Format,
    pub schema_string: String,
    #[serde(default)]
    pub partition_columns: Vec<String>,
    #[serde(default)]
    pub configuration: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_time: Option<i64>,
}

/// A data file added to the table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Add {
    /// Path relative to the table folder, URL-encoded.
    pub path: String,
    #[serde(default)]
    pub partition_values: Map<String, Value>,
    pub size: i64,
    pub modification_time: i64,
    pub data_change: bool,
    /// Statistics as a JSON string; nightshift writes `numRecords`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<String>,
}

impl Add {
    /// Returns the file's row count from its statistics, when recorded.
    pub fn num_records(&self) -> Option<u64> {
        let stats: Value = serde_json::from_str(self.stats.as_deref()?).ok()?;
        stats.get("numRecords")?.as_u64()
    }
}

/// A data file removed from the table (a tombstone: the file stays in
/// storage until `vacuum` deletes it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Remove {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<i64>,
    pub data_change: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extended_file_metadata: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
}

/// Information about a commit: when, which operation, and nightshift's own
/// fields (the run that wrote it, rows written).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CommitInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    #[serde(default)]
    pub operation_parameters: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_info: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_blind_append: Option<bool>,
    #[serde(default)]
    pub operation_metrics: Map<String, Value>,
    /// The run id, for commits made by a pipeline run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_metadata: Option<String>,
}

/// One action of a commit.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Protocol(Protocol),
    Metadata(Metadata),
    Add(Add),
    Remove(Remove),
    CommitInfo(CommitInfo),
}

impl Action {
    fn to_json(&self) -> Result<String> {
        let value = match self {
            Action::Protocol(a) => serde_json::json!({ "protocol": a }),
            Action::Metadata(a) => serde_json::json!({ "metaData": a }),
            Action::Add(a) => serde_json::json!({ "add": a }),
            Action::Remove(a) => serde_json::json!({ "remove": a }),
            Action::CommitInfo(a) => serde_json::json!({ "commitInfo": a }),
        };
        Ok(serde_json::to_string(&value)?)
    }
}

/// Serialises the actions of one commit as newline-delimited JSON.
pub fn encode_commit(actions: &[Action]) -> Result<String> {
    let mut out = String::new();
    for action in actions {
        out.push_str(&action.to_json()?);
        out.push('\n');
    }
    Ok(out)
}

/// Parses the actions of one commit file; `path` names it in errors.
pub fn decode_commit(path: &str, text: &str) -> Result<Vec<Action>> {
    let invalid = |line: usize, message: String| Error::DeltaLog {
        path: path.to_string(),
        message: format!("line {line}: {message}"),
    };
    let mut actions = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(line).map_err(|e| invalid(index + 1, e.to_string()))?;
        let Value::Object(object) = value else {
            return Err(invalid(index + 1, "expected a JSON object".into()));
        };
        for (key, body) in object {
            let parsed = match key.as_str() {
                "protocol" => serde_json::from_value(body).map(Action::Protocol),
                "metaData" => serde_json::from_value(body).map(Action::Metadata),
                "add" => serde_json::from_value(body).map(Action::Add),
                "remove" => serde_json::from_value(body).map(Action::Remove),
                "commitInfo" => serde_json::from_value(body).map(Action::CommitInfo),
                _ => continue,
            };
            actions.push(parsed.map_err(|e| invalid(index + 1, format!("`{key}`: {e}")))?);
        }
    }
    Ok(actions)
}

/// Returns the log file name of `version`: 20 digits and `.json`.
pub fn commit_file_name(version: u64) -> String {
    format!("{version:020}.json")
}

/// Parses a log file name back into its version, for `.json` commits only.
pub fn parse_commit_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".json")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_file_names_round_trip() {
        assert_eq!(commit_file_name(7), "00000000000000000007.json");
        assert_eq!(parse_commit_file_name("00000000000000000007.json"), Some(7));
        assert_eq!(
            parse_commit_file_name("00000000000000000007.checkpoint.parquet"),
            None
        );
        assert_eq!(parse_commit_file_name("7.json"), None);
    }

    #[test]
    fn actions_round_trip_and_unknown_skipped() {
        let add = Add {
            path: "part-1.parquet".into(),
            partition_values: Map::new(),
            size: 10,
            modification_time: 1,
            data_change: true,
            stats: Some("{\"numRecords\":3}".into()),
        };
        let text = encode_commit(&[Action::Add(add.clone())]).unwrap();
        let with_unknown = format!("{text}{{\"txn\":{{\"appId\":\"x\",\"version\":1}}}}\n");
        let actions = decode_commit("test", &with_unknown).unwrap();
        assert_eq!(actions, vec![Action::Add(add.clone())]);
        assert_eq!(add.num_records(), Some(3));
    }

    #[test]
    fn invalid_line_is_named() {
        let err = decode_commit("log/0.json", "{\"add\":{}}\nnot json").unwrap_err();
        let message = err.to_string();
        assert!(message.contains("log/0.json"), "{message}");
        assert!(message.contains("line 1"), "{message}");
    }
}
