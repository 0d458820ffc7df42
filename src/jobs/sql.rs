//! Job kind `sql`: a user's own transformation in Polars SQL.
//!
//! The pipeline file names any input tables under `[inputs]` (the role is
//! the name the query uses) and any output tables under `[outputs]`, and
//! gives one query per output in `[params.queries]`. The run has the
//! guarantees of the built-in kinds: pinned input versions, gates, a
//! manifest, dry runs. A failing query names the pipeline, the output, and
//! what it could not find, with the tables and columns it could use.
//!
//! ```toml
//! kind = "sql"
//! [inputs]
//! contacts = "contacts"
//! events = "email_events"
//! [outputs]
//! openers = "recent_openers"
//! [params.queries]
//! openers = """
//! SELECT c.contact_id, c.email, count(*) AS opens
//! FROM contacts c JOIN events e ON e.contact_id = c.contact_id
//! WHERE e.event_type = 'open'
//! GROUP BY c.contact_id, c.email
//! """
//! [params.keys]
//! openers = "contact_id"
//! ```

use std::collections::BTreeMap;

use polars::prelude::*;
use polars::sql::SQLContext;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{JobContext, JobResult, KindSpec, OutputFrame};
use crate::delta::WriteMode;
use crate::error::{Error, Result};

/// The `sql` kind declares no roles: every input and output is the
/// pipeline file's own.
pub const SPEC: KindSpec = KindSpec {
    name: "sql",
    description: "the pipeline's own Polars SQL queries over named tables",
    inputs: &[],
    outputs: &[],
    validate_params,
    run,
};

/// Parameters of the `sql` job kind.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// One query per output role.
    pub queries: BTreeMap<String, String>,
    /// The key column of an output, for the added, removed and changed
    /// counts in the manifest.
    pub keys: BTreeMap<String, String>,
}

fn validate_params(params: &toml::Table) -> std::result::Result<Value, String> {
    let value = super::parse_params::<Params>(params)?;
    let parsed: Params = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    if parsed.queries.is_empty() {
        return Err("no queries: add [params.queries] with one query per output".into());
    }
    for (output, query) in &parsed.queries {
        if query.trim().is_empty() {
            return Err(format!("the query for output `{output}` is empty"));
        }
    }
    for output in parsed.keys.keys() {
        if !parsed.queries.contains_key(output) {
            return Err(format!("keys.{output} names an output without a query"));
        }
    }
    Ok(value)
}

/// Checks that every output has a query and every query an output; called
/// when the pipeline file loads.
pub fn check_roles(
    outputs: &BTreeMap<String, String>,
    params: &Value,
) -> std::result::Result<(), String> {
    let parsed: Params = serde_json::from_value(params.clone()).map_err(|e| e.to_string())?;
    for output in outputs.keys() {
        if !parsed.queries.contains_key(output) {
            return Err(format!(
                "output `{output}` has no query; add it under [params.queries]"
            ));
        }
    }
    for output in parsed.queries.keys() {
        if !outputs.contains_key(output) {
            return Err(format!(
                "query `{output}` has no output table; add `{output} = \"TABLE\"` under [outputs]"
            ));
        }
    }
    if outputs.is_empty() {
        return Err("a sql pipeline needs at least one table under [outputs]".into());
    }
    Ok(())
}

fn run(ctx: &JobContext) -> Result<JobResult> {
    let params: Params = serde_json::from_value(ctx.params.clone())?;
    let mut sql = SQLContext::new();
    let mut described = Vec::new();
    for (role, input) in &ctx.inputs {
        let columns: Vec<String> = input
            .snapshot
            .schema
            .iter_names()
            .map(|n| n.to_string())
            .collect();
        described.push(format!("{role} ({})", columns.join(", ")));
        sql.register(role, input.table.scan(&input.snapshot)?);
    }
    let mut result = JobResult::default();
    for (output, query) in &params.queries {
        let failed = |e: PolarsError| {
            Error::Data(format!(
                "pipeline `{}`, output `{output}`: the query failed: {e}; the tables are: {}",
                ctx.pipeline,
                if described.is_empty() {
                    "none".to_string()
                } else {
                    described.join("; ")
                }
            ))
        };
        let plan = sql.execute(query).map_err(failed)?;
        let frame = super::collect_streaming(plan).map_err(|e| match e {
            Error::Polars(e) => failed(e),
            other => other,
        })?;
        result
            .metrics
            .insert(format!("rows_{output}"), Value::from(frame.height()));
        result.outputs.push(OutputFrame {
            role: output.clone(),
            frame,
            mode: WriteMode::Overwrite,
            key: params.keys.get(output).cloned(),
        });
    }
    Ok(result)
}
