//! Pipeline files: one TOML file per declared job in the pipelines folder,
//! validated on load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::delta::table::validate_table_name;
use crate::error::{Error, Result};
use crate::jobs::{self, KindSpec};
use crate::notify::Pings;
use crate::schedule::cron::Schedule;

/// A gate: a check on one output that must pass before any output commits.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    /// The output role or table name the gate checks.
    pub output: String,
    /// Fails when the output has fewer rows.
    pub min_rows: Option<u64>,
    /// Fails when the output has more rows.
    pub max_rows: Option<u64>,
    /// Fails when the output shrinks by more than this percentage of the
    /// previous version's rows.
    pub max_shrink_pct: Option<f64>,
    /// Fails when the output grows by more than this percentage of the
    /// previous version's rows.
    pub max_growth_pct: Option<f64>,
    /// Fails when the row count changes by more than this percentage of the
    /// previous version's rows, either way.
    pub max_change_pct: Option<f64>,
    /// Columns that must hold no null in the rows written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_null: Vec<String>,
    /// Columns whose combination must be unique in the rows written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unique: Vec<String>,
    /// A SQL boolean expression that must hold for every row written, e.g.
    /// `score >= 0 AND score <= 100`.
    pub expression: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineFile {
    kind: String,
    description: Option<String>,
    schedule: Option<String>,
    time_zone: Option<String>,
    max_age: Option<String>,
    #[serde(default)]
    after: Vec<String>,
    #[serde(default)]
    pings: Pings,
    #[serde(default)]
    inputs: BTreeMap<String, String>,
    #[serde(default)]
    outputs: BTreeMap<String, String>,
    #[serde(default)]
    params: toml::Table,
    #[serde(default)]
    gates: Vec<Gate>,
}

/// A validated pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The file name without `.toml`.
    pub name: String,
    pub path: PathBuf,
    pub kind: &'static KindSpec,
    pub description: Option<String>,
    /// When the pipeline runs: a cron expression in a time zone.
    pub schedule: Option<Schedule>,
    /// A pipeline without a successful run within this long is stale.
    pub max_age: Option<chrono::Duration>,
    /// Pipelines whose run of the same cycle this one waits for.
    pub after: Vec<String>,
    /// Dead-man's-switch URLs.
    pub pings: Pings,
    /// Input role to table name, with defaults filled in.
    pub inputs: BTreeMap<String, String>,
    /// Output role to table name, with defaults filled in.
    pub outputs: BTreeMap<String, String>,
    /// Parameters, checked by the job kind, as JSON.
    pub params: serde_json::Value,
    pub gates: Vec<Gate>,
}

impl Pipeline {
    /// Loads and validates the pipeline file at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Pipeline {
            path: path.to_path_buf(),
            message: format!("cannot read the file: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates pipeline text; `path` names the pipeline.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let invalid = |message: String| Error::Pipeline {
            path: path.to_path_buf(),
            message,
        };
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| invalid("the file name is not valid UTF-8".into()))?
            .to_string();
        validate_pipeline_name(&name).map_err(invalid)?;
        let file: PipelineFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let kind = jobs::kind(&file.kind).ok_or_else(|| {
            invalid(format!(
                "unknown job kind `{}`; the job kinds are: {}",
                file.kind,
                jobs::kind_names().join(", ")
            ))
        })?;

        // A kind without declared roles (sql) takes the file's own.
        let free_roles = kind.inputs.is_empty() && kind.outputs.is_empty();
        let (inputs, outputs) = if free_roles {
            for role in file.inputs.keys().chain(file.outputs.keys()) {
                validate_role_name(role).map_err(&invalid)?;
            }
            (file.inputs.clone(), file.outputs.clone())
        } else {
            (
                resolve_roles("input", &file.inputs, kind.inputs).map_err(&invalid)?,
                resolve_roles("output", &file.outputs, kind.outputs).map_err(&invalid)?,
            )
        };
        for table in inputs.values().chain(outputs.values()) {
            validate_table_name(table).map_err(|e| invalid(e.to_string()))?;
        }
        let params =
            (kind.validate_params)(&file.params).map_err(|e| invalid(format!("[params]: {e}")))?;
        if free_roles {
            jobs::sql::check_roles(&outputs, &params).map_err(&invalid)?;
        }
        for gate in &file.gates {
            let known =
                outputs.contains_key(&gate.output) || outputs.values().any(|t| t == &gate.output);
            if !known {
                return Err(invalid(format!(
                    "gate on unknown output `{}`; the outputs are: {}",
                    gate.output,
                    outputs.keys().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
            for (name, pct) in [
                ("max_shrink_pct", gate.max_shrink_pct),
                ("max_growth_pct", gate.max_growth_pct),
                ("max_change_pct", gate.max_change_pct),
            ] {
                if pct.is_some_and(|p| !(p.is_finite() && p >= 0.0)) {
                    return Err(invalid(format!(
                        "gate on `{}`: {name} must be a percentage of 0 or more",
                        gate.output
                    )));
                }
            }
            if let Some(expression) = &gate.expression {
                let _ = polars::sql::sql_expr(expression).map_err(|e| {
                    invalid(format!(
                        "gate on `{}`: invalid expression `{expression}`: {e}",
                        gate.output
                    ))
                })?;
            }
        }
        if file.time_zone.is_some() && file.schedule.is_none() {
            return Err(invalid(
                "time_zone is set but schedule is not; add schedule = \"0 2 * * *\" or \
                 remove time_zone"
                    .into(),
            ));
        }
        let schedule = match &file.schedule {
            Some(expression) => Some(
                Schedule::parse(expression, file.time_zone.as_deref().unwrap_or("UTC"))
                    .map_err(|e| invalid(format!("schedule: {e}")))
                    .and_then(|schedule| match schedule.next_after(chrono::Utc::now()) {
                        Some(_) => Ok(schedule),
                        None => Err(invalid(format!(
                            "schedule `{expression}` never fires (a date that does not exist)"
                        ))),
                    })?,
            ),
            None => None,
        };
        let max_age = match &file.max_age {
            Some(text) => Some(parse_duration(text).map_err(|e| invalid(format!("max_age: {e}")))?),
            None => None,
        };
        for upstream in &file.after {
            if upstream == &name {
                return Err(invalid(format!(
                    "after names the pipeline itself (`{name}`)"
                )));
            }
            validate_pipeline_name(upstream).map_err(|e| invalid(format!("after: {e}")))?;
        }
        Ok(Self {
            name,
            path: path.to_path_buf(),
            kind,
            description: file.description,
            schedule,
            max_age,
            after: file.after,
            pings: file.pings,
            inputs,
            outputs,
            params,
            gates: file.gates,
        })
    }

    /// Returns the table of output `role_or_table`, given by role or name.
    pub fn output_table(&self, role_or_table: &str) -> Option<&str> {
        self.outputs
            .get(role_or_table)
            .or_else(|| self.outputs.values().find(|t| *t == role_or_table))
            .map(String::as_str)
    }
}

/// Checks a role name of a `sql` pipeline, which its queries use as a
/// table name: a letter or `_`, then letters, digits and `_`.
fn validate_role_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid name `{name}`: the queries use it as a table name, so use letters, digits \
             and _, starting with a letter"
        ))
    }
}

/// Checks a pipeline name: letters, digits, `_` and `-`.
fn validate_pipeline_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid pipeline name `{name}`: name the file with letters, digits, `_` and `-` only"
        ))
    }
}

/// Maps each role of a job kind to a table: the one the file names, or the
/// role's default. Roles the kind does not have are errors.
fn resolve_roles(
    what: &str,
    given: &BTreeMap<String, String>,
    roles: &[jobs::Role],
) -> Result<BTreeMap<String, String>, String> {
    for role in given.keys() {
        if !roles.iter().any(|r| r.name == role) {
            let names: Vec<&str> = roles.iter().map(|r| r.name).collect();
            return Err(format!(
                "unknown {what} `{role}`; this job kind's {what}s are: {}",
                names.join(", ")
            ));
        }
    }
    let mut resolved = BTreeMap::new();
    for role in roles {
        let table = given
            .get(role.name)
            .cloned()
            .unwrap_or_else(|| role.default_table.to_string());
        resolved.insert(role.name.to_string(), table);
    }
    Ok(resolved)
}

/// Loads every `*.toml` pipeline in `dir`, sorted by name. Any invalid file
/// is an error.
pub fn load_all(dir: &Path) -> Result<Vec<Pipeline>> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        Error::Config(format!(
            "cannot read the pipelines folder {}: {e}; `nightshift init` creates one",
            dir.display()
        ))
    })?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) == Some("toml") {
            paths.push(path);
        }
    }
    paths.sort();
    let mut pipelines = Vec::new();
    let mut problems = Vec::new();
    for path in &paths {
        match Pipeline::load(path) {
            Ok(pipeline) => pipelines.push(pipeline),
            Err(e) => problems.push(e.to_string()),
        }
    }
    problems.extend(shared_outputs(&pipelines));
    problems.extend(dependency_problems(&pipelines));
    if !problems.is_empty() {
        return Err(Error::Config(problems.join("\n")));
    }
    Ok(pipelines)
}

/// Lists tables that more than one pipeline writes: each run would replace
/// the other's rows.
fn shared_outputs(pipelines: &[Pipeline]) -> Vec<String> {
    let mut writers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for pipeline in pipelines {
        for (role, table) in &pipeline.outputs {
            // A review amends the list its suppression pipeline owns; both
            // commit conditionally on the version they read.
            if jobs::amends(pipeline.kind.name, role) {
                continue;
            }
            writers.entry(table).or_default().push(&pipeline.name);
        }
    }
    writers
        .into_iter()
        .filter(|(_, names)| names.len() > 1)
        .map(|(table, names)| {
            format!(
                "table `{table}` is an output of several pipelines ({}); give each pipeline its \
                 own output tables in [outputs]",
                names.join(", ")
            )
        })
        .collect()
}

/// Loads the pipeline `name` from `dir`.
pub fn load_named(dir: &Path, name: &str) -> Result<Pipeline> {
    let path = dir.join(format!("{name}.toml"));
    if !path.exists() {
        let known: Vec<String> = load_all(dir)
            .map(|all| all.into_iter().map(|p| p.name).collect())
            .unwrap_or_default();
        return Err(Error::Config(format!(
            "pipeline `{name}` not found: no file {}; the pipelines are: {}",
            path.display(),
            if known.is_empty() {
                "(none)".to_string()
            } else {
                known.join(", ")
            }
        )));
    }
    Pipeline::load(&path)
}

/// Parses a duration such as `26h`, `90m`, `7d`, `2w` or `3600s`.
pub fn parse_duration(text: &str) -> Result<chrono::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| {
        format!("invalid duration `{text}`: write a number and a unit, like 26h, 90m or 7d")
    })?;
    let seconds = match unit.trim() {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        "w" => 604_800.0,
        other => {
            return Err(format!(
                "invalid duration `{text}`: unknown unit `{other}`; use s, m, h, d or w"
            ))
        }
    };
    if !(value.is_finite() && value > 0.0) {
        return Err(format!("invalid duration `{text}`: it must be positive"));
    }
    Ok(chrono::Duration::milliseconds(
        (value * seconds * 1000.0) as i64,
    ))
}

/// Lists `after` entries that name no pipeline, and dependency cycles.
fn dependency_problems(pipelines: &[Pipeline]) -> Vec<String> {
    let names: Vec<&str> = pipelines.iter().map(|p| p.name.as_str()).collect();
    let mut problems = Vec::new();
    for pipeline in pipelines {
        for upstream in &pipeline.after {
            if !names.contains(&upstream.as_str()) {
                problems.push(format!(
                    "pipeline `{}` runs after `{upstream}`, which is not a pipeline; the \
                     pipelines are: {}",
                    pipeline.name,
                    names.join(", ")
                ));
            }
        }
    }
    if problems.is_empty() {
        if let Err(cycle) = dependency_order(pipelines) {
            problems.push(cycle);
        }
    }
    problems
}

/// Orders pipelines so that each comes after the pipelines it names in
/// `after`, keeping name order otherwise. Fails on a cycle, naming it.
pub fn dependency_order(pipelines: &[Pipeline]) -> Result<Vec<&Pipeline>, String> {
    let mut ordered: Vec<&Pipeline> = Vec::with_capacity(pipelines.len());
    let mut remaining: Vec<&Pipeline> = pipelines.iter().collect();
    while !remaining.is_empty() {
        let ready = remaining.iter().position(|p| {
            p.after.iter().all(|u| {
                ordered.iter().any(|o| &o.name == u) || !pipelines.iter().any(|q| &q.name == u)
            })
        });
        match ready {
            Some(index) => ordered.push(remaining.remove(index)),
            None => {
                let names: Vec<&str> = remaining.iter().map(|p| p.name.as_str()).collect();
                return Err(format!(
                    "pipelines wait for each other in a cycle through `after`: {}",
                    names.join(", ")
                ));
            }
        }
    }
    Ok(ordered)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Pipeline> {
        Pipeline::parse(text, Path::new("pipelines/nightly.toml"))
    }

    #[test]
    fn defaults_fill_roles() {
        let pipeline = parse("kind = \"suppression\"").unwrap();
        assert_eq!(pipeline.name, "nightly");
        assert_eq!(pipeline.inputs["events"], "email_events");
        assert_eq!(pipeline.outputs["list"], "suppression_list");
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let message = parse("kind = \"suppression\"\nschedul = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(message.contains("schedul"), "{message}");
        assert!(message.contains("nightly.toml"), "{message}");
    }

    #[test]
    fn unknown_kind_lists_kinds() {
        let message = parse("kind = \"supression\"").unwrap_err().to_string();
        assert!(message.contains("supression"), "{message}");
        assert!(message.contains("suppression"), "{message}");
    }

    #[test]
    fn unknown_param_and_role_are_named() {
        let message = parse("kind = \"suppression\"\n[params]\nexport = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(message.contains("export"), "{message}");
        let message = parse("kind = \"suppression\"\n[inputs]\nevent = \"email_events\"")
            .unwrap_err()
            .to_string();
        assert!(message.contains("unknown input `event`"), "{message}");
    }

    #[test]
    fn export_path_outside_warehouse_rejected() {
        for path in [
            "../outside.csv",
            "/tmp/x.csv",
            "s3://other/x.csv",
            "a/../../b.csv",
        ] {
            let text = format!("kind = \"suppression\"\n[params]\nexport_csv = \"{path}\"");
            let message = parse(&text).unwrap_err().to_string();
            assert!(message.contains("invalid export_csv"), "{path}: {message}");
        }
        assert!(parse("kind = \"suppression\"\n[params]\nexport_csv = \"exports/a.csv\"").is_ok());
    }

    #[test]
    fn invalid_table_name_rejected() {
        let message = parse("kind = \"suppression\"\n[outputs]\nlist = \"Bad-Name\"")
            .unwrap_err()
            .to_string();
        assert!(message.contains("Bad-Name"), "{message}");
    }
}
