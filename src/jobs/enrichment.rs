//! Job kind `enrichment`: company data for the contacts' companies, from
//! an HTTP API or a vendor's file, cached per domain.
//!
//! A contact's domain is its `company_domain`, or its email's domain when
//! it has none; free-mail and disposable domains are no company. Each
//! domain is requested at most once per run, and only when the cache
//! (`firmographics`) has no fresh answer for it: found answers live
//! `ttl_days`, not-found answers `not_found_ttl_days`, and errors are
//! retried first on the next run. Domains the request budget leaves out
//! are kept as `pending` and requested first next time, so no domain is
//! lost between runs.
//!
//! Outputs:
//!
//! | table | rows |
//! |---|---|
//! | `firmographics` | one per domain ever seen: status (found, not_found, error, pending), the fields, fetched_at and attempted_at (the start of the run that got the last answer, or made the last attempt), attempts, http_status, error |
//! | `firmographic_changes` | one per field whose value this run changed: domain, field, old_value, new_value |
//! | `contacts_enriched` | one per contact: domain, and per field its value, `<field>_source` and `<field>_updated_at` |
//!
//! Writing back never rewrites the contacts table: `contacts_enriched`
//! takes the contact's own value where it has one (`company` for
//! company_name, `country`, and `industry`, `employee_count` and
//! `revenue_band` when contacts carries them), and the provider's value
//! otherwise, or always for the fields listed in `overwrite`.
//!
//! When more than `max_failure_ratio` of the requested domains end in an
//! error, the run fails after committing every answer it did get.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use polars::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{string_column as strings, JobContext, JobResult, KindSpec, OutputFrame, Role};
use crate::delta::WriteMode;
use crate::enrich::http::{self, Answer, Fetched, HttpProvider};
use crate::enrich::{email_domain, is_free_mail, normalize_domain, FREE_MAIL_DOMAINS};
use crate::error::{Error, Result};
use crate::schema::utc_timestamp;

pub const SPEC: KindSpec = KindSpec {
    name: "enrichment",
    description: "company data per contact domain from an HTTP API or a vendor file, cached",
    inputs: &[Role {
        optional: false,
        name: "contacts",
        default_table: "contacts",
        description: "contacts with company_domain or email",
    }],
    outputs: &[
        Role {
            optional: false,
            name: "cache",
            default_table: "firmographics",
            description: "one row per domain with the provider's response",
        },
        Role {
            optional: false,
            name: "changes",
            default_table: "firmographic_changes",
            description: "the field values this run changed",
        },
        Role {
            optional: false,
            name: "contacts",
            default_table: "contacts_enriched",
            description: "one row per contact with each field's value and source",
        },
    ],
    validate_params,
    run,
};

/// The firmographic fields, with whether each is a whole number.
pub const FIELDS: [(&str, bool); 5] = [
    ("company_name", false),
    ("industry", false),
    ("employee_count", true),
    ("revenue_band", false),
    ("country", false),
];

/// Returns the contacts column that contains a contact's own value of a field.
fn contact_column(field: &str) -> &str {
    match field {
        "company_name" => "company",
        other => other,
    }
}

/// A vendor's delivered file, joined on domain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileProvider {
    /// A CSV or Parquet file: a local path (relative to the current folder)
    /// or a path under the warehouse written `warehouse:PATH`.
    pub path: String,
    /// The file's domain column.
    #[serde(default = "default_domain_column")]
    pub domain_column: String,
    /// Our field to the file's column.
    pub fields: BTreeMap<String, String>,
}

fn default_domain_column() -> String {
    "domain".into()
}

/// Parameters of the `enrichment` job kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// The provider's name, recorded with each value.
    pub provider: Option<String>,
    pub http: Option<HttpProvider>,
    pub file: Option<FileProvider>,
    /// Days a found response stays fresh.
    pub ttl_days: f64,
    /// Days a not-found response stays fresh.
    pub not_found_ttl_days: f64,
    /// The run fails (after committing) when more of the requested domains
    /// end in an error.
    pub max_failure_ratio: f64,
    /// More free-mail or disposable domains.
    pub free_mail_domains: Vec<String>,
    /// Use `free_mail_domains` instead of the built-in list.
    pub replace_free_mail_domains: bool,
    /// Fields where the provider's value replaces the contact's own.
    pub overwrite: Vec<String>,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            provider: None,
            http: None,
            file: None,
            ttl_days: 30.0,
            not_found_ttl_days: 7.0,
            max_failure_ratio: 0.05,
            free_mail_domains: Vec::new(),
            replace_free_mail_domains: false,
            overwrite: Vec::new(),
        }
    }
}

impl Params {
    fn provider_name(&self) -> String {
        self.provider.clone().unwrap_or_else(|| {
            if self.http.is_some() {
                "http".into()
            } else {
                "file".into()
            }
        })
    }

    fn mapped_fields(&self) -> Vec<&str> {
        let fields = match (&self.http, &self.file) {
            (Some(h), _) => h.fields.keys().map(String::as_str).collect(),
            (_, Some(f)) => f.fields.keys().map(String::as_str).collect(),
            _ => Vec::new(),
        };
        fields
    }
}

fn field_names() -> String {
    FIELDS
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

fn validate_params(params: &toml::Table) -> std::result::Result<Value, String> {
    let value = super::parse_params::<Params>(params)?;
    let parsed: Params = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    match (&parsed.http, &parsed.file) {
        (Some(_), Some(_)) => {
            return Err("give either [params.http] or [params.file], not both".into())
        }
        (None, None) => {
            return Err(
                "no provider: add [params.http] (an API) or [params.file] (a vendor file)".into(),
            )
        }
        (Some(http), None) => http.validate()?,
        (None, Some(file)) => {
            if file.fields.is_empty() {
                return Err("file.fields is empty: map at least one field to a column".into());
            }
        }
    }
    for field in parsed
        .mapped_fields()
        .into_iter()
        .chain(parsed.overwrite.iter().map(String::as_str))
    {
        if !FIELDS.iter().any(|(n, _)| *n == field) {
            return Err(format!(
                "unknown field `{field}`; the fields are: {}",
                field_names()
            ));
        }
    }
    for (name, days) in [
        ("ttl_days", parsed.ttl_days),
        ("not_found_ttl_days", parsed.not_found_ttl_days),
    ] {
        if !(days.is_finite() && days >= 0.0) {
            return Err(format!("{name} must be 0 or more days"));
        }
    }
    if !(0.0..=1.0).contains(&parsed.max_failure_ratio) {
        return Err(format!(
            "max_failure_ratio must be between 0 and 1 (0.05 is 5%), got {}",
            parsed.max_failure_ratio
        ));
    }
    Ok(value)
}

/// Returns the columns of `firmographics`, in order.
pub fn cache_schema() -> Schema {
    let mut fields = vec![
        Field::new("domain".into(), DataType::String),
        Field::new("status".into(), DataType::String),
        Field::new("provider".into(), DataType::String),
    ];
    for (name, integer) in FIELDS {
        let dtype = if integer {
            DataType::Int64
        } else {
            DataType::String
        };
        fields.push(Field::new(name.into(), dtype));
    }
    fields.extend([
        Field::new("fetched_at".into(), utc_timestamp()),
        Field::new("attempted_at".into(), utc_timestamp()),
        Field::new("attempts".into(), DataType::Int64),
        Field::new("http_status".into(), DataType::Int64),
        Field::new("error".into(), DataType::String),
        Field::new("run_id".into(), DataType::String),
    ]);
    Schema::from_iter(fields)
}

/// One cached domain.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CacheRow {
    pub domain: String,
    pub status: String,
    pub provider: Option<String>,
    /// Field values as text (employee_count as digits).
    pub values: BTreeMap<String, Option<String>>,
    pub fetched_at: Option<i64>,
    pub attempted_at: Option<i64>,
    pub attempts: Option<i64>,
    pub http_status: Option<i64>,
    pub error: Option<String>,
    pub run_id: Option<String>,
}

fn integers(frame: &DataFrame, name: &str) -> Result<Vec<Option<i64>>> {
    Ok(frame
        .column(name)?
        .cast(&DataType::Int64)?
        .i64()?
        .iter()
        .collect())
}

fn read_cache(frame: &DataFrame) -> Result<BTreeMap<String, CacheRow>> {
    let domains = strings(frame, "domain")?;
    let status = strings(frame, "status")?;
    let provider = strings(frame, "provider")?;
    let mut values: Vec<(&str, Vec<Option<String>>)> = Vec::new();
    for (name, _) in FIELDS {
        values.push((name, strings(frame, name)?));
    }
    let fetched = integers(frame, "fetched_at")?;
    let attempted = integers(frame, "attempted_at")?;
    let attempts = integers(frame, "attempts")?;
    let http_status = integers(frame, "http_status")?;
    let error = strings(frame, "error")?;
    let run_id = strings(frame, "run_id")?;
    let mut cache = BTreeMap::new();
    for i in 0..frame.height() {
        let Some(domain) = domains[i].clone() else {
            continue;
        };
        cache.insert(
            domain.clone(),
            CacheRow {
                domain,
                status: status[i].clone().unwrap_or_else(|| "pending".into()),
                provider: provider[i].clone(),
                values: values
                    .iter()
                    .map(|(name, column)| (name.to_string(), column[i].clone()))
                    .collect(),
                fetched_at: fetched[i],
                attempted_at: attempted[i],
                attempts: attempts[i],
                http_status: http_status[i],
                error: error[i].clone(),
                run_id: run_id[i].clone(),
            },
        );
    }
    Ok(cache)
}

fn cache_frame(rows: &[&CacheRow]) -> Result<DataFrame> {
    let mut columns = vec![
        Column::new(
            "domain".into(),
            rows.iter().map(|r| r.domain.clone()).collect::<Vec<_>>(),
        ),
        Column::new(
            "status".into(),
            rows.iter().map(|r| r.status.clone()).collect::<Vec<_>>(),
        ),
        Column::new(
            "provider".into(),
            rows.iter().map(|r| r.provider.clone()).collect::<Vec<_>>(),
        ),
    ];
    for (name, integer) in FIELDS {
        let values: Vec<Option<String>> = rows
            .iter()
            .map(|r| r.values.get(name).cloned().flatten())
            .collect();
        if integer {
            let parsed: Vec<Option<i64>> = values
                .iter()
                .map(|v| v.as_deref().and_then(|v| v.parse().ok()))
                .collect();
            columns.push(Column::new(name.into(), parsed));
        } else {
            columns.push(Column::new(name.into(), values));
        }
    }
    let times = |f: fn(&CacheRow) -> Option<i64>| -> Result<Column> {
        Ok(
            Column::new("t".into(), rows.iter().map(|r| f(r)).collect::<Vec<_>>())
                .cast(&DataType::Datetime(TimeUnit::Microseconds, None))?
                .cast(&utc_timestamp())?,
        )
    };
    columns.push(times(|r| r.fetched_at)?.with_name("fetched_at".into()));
    columns.push(times(|r| r.attempted_at)?.with_name("attempted_at".into()));
    columns.extend([
        Column::new(
            "attempts".into(),
            rows.iter().map(|r| r.attempts).collect::<Vec<_>>(),
        ),
        Column::new(
            "http_status".into(),
            rows.iter().map(|r| r.http_status).collect::<Vec<_>>(),
        ),
        Column::new(
            "error".into(),
            rows.iter().map(|r| r.error.clone()).collect::<Vec<_>>(),
        ),
        Column::new(
            "run_id".into(),
            rows.iter().map(|r| r.run_id.clone()).collect::<Vec<_>>(),
        ),
    ]);
    Ok(DataFrame::new(rows.len(), columns)?)
}

/// Which domains to request, most urgent first: errors and pending
/// domains, then domains never requested, then stale answers, oldest
/// first.
pub fn plan_requests(
    domains: &BTreeSet<String>,
    cache: &BTreeMap<String, CacheRow>,
    now: DateTime<Utc>,
    params: &Params,
) -> Vec<String> {
    let now = now.timestamp_micros();
    let ttl = |days: f64| (days * 86_400_000_000.0) as i64;
    let mut plan: Vec<(u8, i64, &String)> = Vec::new();
    for domain in domains {
        match cache.get(domain) {
            None => plan.push((1, 0, domain)),
            Some(row) => {
                let age = row.fetched_at.map(|t| now - t);
                match row.status.as_str() {
                    "error" | "pending" => plan.push((0, row.attempted_at.unwrap_or(0), domain)),
                    "found" if age.is_none_or(|a| a >= ttl(params.ttl_days)) => {
                        plan.push((2, row.fetched_at.unwrap_or(0), domain))
                    }
                    "not_found" if age.is_none_or(|a| a >= ttl(params.not_found_ttl_days)) => {
                        plan.push((2, row.fetched_at.unwrap_or(0), domain))
                    }
                    _ => {}
                }
            }
        }
    }
    plan.sort();
    plan.into_iter().map(|(_, _, d)| d.clone()).collect()
}

/// Reads a vendor file and answers every requested domain from it.
fn fetch_from_file(
    ctx: &JobContext,
    file: &FileProvider,
    domains: &[String],
) -> Result<Vec<Fetched>> {
    let path = match file.path.strip_prefix("warehouse:") {
        Some(relative) => {
            super::check_relative_path("file.path", relative).map_err(Error::Config)?;
            let location = ctx.warehouse.path(relative);
            ctx.warehouse.uri(&location)
        }
        None => file.path.clone(),
    };
    let lower = path.to_lowercase();
    let plan = if lower.ends_with(".parquet") {
        let args = ScanArgsParquet {
            cloud_options: ctx.warehouse.cloud_options(),
            ..Default::default()
        };
        LazyFrame::scan_parquet(PlRefPath::new(&path), args)?
    } else if lower.ends_with(".csv") {
        LazyCsvReader::new(PlRefPath::new(&path))
            .with_has_header(true)
            .with_infer_schema_length(Some(0))
            .finish()?
    } else {
        return Err(Error::Config(format!(
            "vendor file {path}: expected a .csv or .parquet file"
        )));
    };
    let frame = plan
        .collect()
        .map_err(|e| Error::Input(format!("cannot read the vendor file {path}: {e}")))?;
    let mut wanted = vec![file.domain_column.as_str()];
    wanted.extend(file.fields.values().map(String::as_str));
    for column in &wanted {
        if frame.column(column).is_err() {
            let names: Vec<String> = frame
                .get_column_names()
                .iter()
                .map(|n| n.to_string())
                .collect();
            return Err(Error::Input(format!(
                "vendor file {path} has no column `{column}`; its columns are: {}",
                names.join(", ")
            )));
        }
    }
    let file_domains = strings(&frame, &file.domain_column)?;
    let mut columns = BTreeMap::new();
    for (field, column) in &file.fields {
        columns.insert(field.clone(), strings(&frame, column)?);
    }
    let mut by_domain: HashMap<String, usize> = HashMap::new();
    for (i, domain) in file_domains.iter().enumerate() {
        if let Some(domain) = domain.as_deref().and_then(normalize_domain) {
            by_domain.entry(domain).or_insert(i);
        }
    }
    Ok(domains
        .iter()
        .map(|domain| {
            let answer = match by_domain.get(domain) {
                Some(&i) => Answer::Found(
                    columns
                        .iter()
                        .map(|(field, values)| {
                            (
                                field.clone(),
                                values[i].clone().map(Value::from).unwrap_or(Value::Null),
                            )
                        })
                        .collect(),
                ),
                None => Answer::NotFound,
            };
            Fetched {
                domain: domain.clone(),
                answer,
                attempts: 1,
                http_status: None,
            }
        })
        .collect())
}

/// A JSON value as the text a field stores; numbers for employee_count
/// keep their digits.
fn value_text(value: &Value, integer: bool) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) if s.trim().is_empty() => None,
        Value::String(s) if integer => s
            .trim()
            .replace(',', "")
            .parse::<f64>()
            .ok()
            .map(|n| (n.round() as i64).to_string()),
        Value::String(s) => Some(s.trim().to_string()),
        Value::Number(n) if integer => n.as_f64().map(|n| (n.round() as i64).to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        other => Some(other.to_string()),
    }
}

fn run(ctx: &JobContext) -> Result<JobResult> {
    let params: Params = serde_json::from_value(ctx.params.clone())?;
    let provider = params.provider_name();
    let now = ctx.started_at;
    let input = ctx.input("contacts");
    let contacts = input.table.scan(&input.snapshot)?;
    let available: Vec<String> = input
        .snapshot
        .schema
        .iter_names()
        .map(|n| n.to_string())
        .collect();
    let mut wanted: Vec<Expr> = vec![col("contact_id")];
    for name in ["email", "company_domain"] {
        if available.iter().any(|a| a == name) {
            wanted.push(col(name));
        }
    }
    for (field, _) in FIELDS {
        let column = contact_column(field);
        if available.iter().any(|a| a == column) {
            wanted.push(col(column).cast(DataType::String));
        }
    }
    let contacts = super::collect_streaming(
        contacts
            .select(wanted)
            .sort(["contact_id"], SortMultipleOptions::default()),
    )?;

    // The domain of every contact.
    let free: BTreeSet<String> = if params.replace_free_mail_domains {
        params
            .free_mail_domains
            .iter()
            .map(|d| d.to_lowercase())
            .collect()
    } else {
        FREE_MAIL_DOMAINS
            .iter()
            .map(|d| d.to_string())
            .chain(params.free_mail_domains.iter().map(|d| d.to_lowercase()))
            .collect()
    };
    let company_domains = strings(&contacts, "company_domain")?;
    let emails = strings(&contacts, "email")?;
    // The free-mail check runs once per distinct domain, not per contact.
    let mut free_checked: HashMap<String, bool> = HashMap::new();
    let mut is_company = |domain: String| -> Option<String> {
        let free_mail = *free_checked
            .entry(domain.clone())
            .or_insert_with(|| is_free_mail(&domain, &free));
        (!free_mail).then_some(domain)
    };
    let contact_domains: Vec<Option<String>> = company_domains
        .iter()
        .zip(&emails)
        .map(|(company, email)| {
            company
                .as_deref()
                .and_then(normalize_domain)
                .and_then(&mut is_company)
                .or_else(|| {
                    email
                        .as_deref()
                        .and_then(email_domain)
                        .and_then(&mut is_company)
                })
        })
        .collect();
    let domains: BTreeSet<String> = contact_domains.iter().flatten().cloned().collect();

    let mut cache = match ctx.output("cache").read()? {
        Some(frame) => read_cache(&frame)?,
        None => BTreeMap::new(),
    };
    let plan = plan_requests(&domains, &cache, now, &params);
    let mut result = JobResult::default();
    let metrics = &mut result.metrics;
    metrics.insert("provider".into(), Value::from(provider.clone()));
    metrics.insert("contacts".into(), Value::from(contacts.height()));
    metrics.insert(
        "contacts_with_domain".into(),
        Value::from(contact_domains.iter().filter(|d| d.is_some()).count()),
    );
    metrics.insert("domains".into(), Value::from(domains.len()));
    metrics.insert("domains_to_request".into(), Value::from(plan.len()));
    if ctx.dry_run {
        // A dry run never calls the provider: requests may cost money.
        metrics.insert("requests".into(), Value::from(0));
        return Ok(result);
    }

    let fetched = match (&params.http, &params.file) {
        (Some(http_provider), _) => {
            let key = match &http_provider.api_key_env {
                Some(name) => Some(std::env::var(name).map_err(|_| {
                    Error::Config(format!(
                        "the API key comes from the environment variable {name}, which is not set"
                    ))
                })?),
                None => None,
            };
            let (fetched, stats) = http::fetch_all(http_provider, key.as_deref(), plan.clone())
                .map_err(Error::Data)?;
            metrics.insert("http".into(), serde_json::to_value(&stats)?);
            fetched
        }
        (None, Some(file)) => fetch_from_file(ctx, file, &plan)?,
        (None, None) => return Err(Error::Config("no provider configured".into())),
    };

    // Apply the answers to the cache, and list what changed.
    let mut changes: Vec<(String, String, Option<String>, Option<String>)> = Vec::new();
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    let now_micros = now.timestamp_micros();
    for item in &fetched {
        let previous = cache.get(&item.domain).cloned();
        let mut row = previous.clone().unwrap_or_else(|| CacheRow {
            domain: item.domain.clone(),
            status: "pending".into(),
            ..Default::default()
        });
        row.run_id = Some(ctx.run_id.clone());
        row.http_status = item.http_status.map(i64::from);
        if item.attempts > 0 {
            row.attempted_at = Some(now_micros);
            row.attempts = Some(i64::from(item.attempts));
        }
        match &item.answer {
            Answer::Found(values) => {
                *counts.entry("found").or_default() += 1;
                row.status = "found".into();
                row.provider = Some(provider.clone());
                row.fetched_at = Some(now_micros);
                row.error = None;
                let mut new_values = BTreeMap::new();
                for (field, integer) in FIELDS {
                    let new = values.get(field).and_then(|v| value_text(v, integer));
                    new_values.insert(field.to_string(), new);
                }
                for (field, new) in &new_values {
                    let old = previous
                        .as_ref()
                        .and_then(|p| p.values.get(field).cloned().flatten());
                    if &old != new {
                        changes.push((item.domain.clone(), field.clone(), old, new.clone()));
                    }
                }
                row.values = new_values;
            }
            Answer::NotFound => {
                *counts.entry("not_found").or_default() += 1;
                row.status = "not_found".into();
                row.provider = Some(provider.clone());
                row.fetched_at = Some(now_micros);
                row.error = None;
            }
            Answer::Error(message) => {
                *counts.entry("error").or_default() += 1;
                row.status = "error".into();
                row.error = Some(message.clone());
            }
            Answer::Deferred => {
                *counts.entry("deferred").or_default() += 1;
                if previous.is_none() {
                    row.status = "pending".into();
                } else {
                    // A stale answer stays until the next run renews it.
                    row.run_id = previous.as_ref().and_then(|p| p.run_id.clone());
                    row.http_status = previous.as_ref().and_then(|p| p.http_status);
                }
            }
        }
        cache.insert(item.domain.clone(), row);
    }
    let requested = fetched.iter().filter(|f| f.attempts > 0).count() as u64;
    let errors = counts.get("error").copied().unwrap_or(0);
    for (name, n) in &counts {
        metrics.insert(format!("domains_{name}"), Value::from(*n));
    }
    metrics.insert("domains_requested".into(), Value::from(requested));
    metrics.insert(
        "domains_fresh_in_cache".into(),
        Value::from(domains.len() - plan.len()),
    );
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    for row in cache.values() {
        *by_status.entry(row.status.clone()).or_default() += 1;
    }
    metrics.insert("cache_by_status".into(), json!(by_status));
    metrics.insert("fields_changed".into(), Value::from(changes.len()));
    if requested > 0 {
        let ratio = errors as f64 / requested as f64;
        if ratio > params.max_failure_ratio {
            result.fail_after_commit = Some(format!(
                "{errors} of {requested} enrichment requests failed ({:.1}%), more than \
                 max_failure_ratio {:.1}%; they are retried first on the next run",
                ratio * 100.0,
                params.max_failure_ratio * 100.0
            ));
        }
    }

    let rows: Vec<&CacheRow> = cache.values().collect();
    let cache_out = cache_frame(&rows)?;
    let changes_out = DataFrame::new(
        changes.len(),
        vec![
            Column::new(
                "domain".into(),
                changes.iter().map(|c| c.0.clone()).collect::<Vec<_>>(),
            ),
            Column::new(
                "field".into(),
                changes.iter().map(|c| c.1.clone()).collect::<Vec<_>>(),
            ),
            Column::new(
                "old_value".into(),
                changes.iter().map(|c| c.2.clone()).collect::<Vec<_>>(),
            ),
            Column::new(
                "new_value".into(),
                changes.iter().map(|c| c.3.clone()).collect::<Vec<_>>(),
            ),
            Column::new("run_id".into(), vec![ctx.run_id.clone(); changes.len()]),
        ],
    )?
    .lazy()
    .with_column(
        lit(now_micros)
            .cast(DataType::Datetime(TimeUnit::Microseconds, None))
            .cast(utc_timestamp())
            .alias("changed_at"),
    )
    .collect()?;
    let enriched = enrich_contacts(&contacts, &contact_domains, &cache, &params)?;

    result.outputs.push(OutputFrame {
        role: "cache".into(),
        frame: cache_out,
        mode: WriteMode::Overwrite,
        key: Some("domain".into()),
    });
    result.outputs.push(OutputFrame {
        role: "changes".into(),
        frame: changes_out,
        mode: WriteMode::Overwrite,
        key: None,
    });
    result.outputs.push(OutputFrame {
        role: "contacts".into(),
        frame: enriched,
        mode: WriteMode::Overwrite,
        key: Some("contact_id".into()),
    });
    Ok(result)
}

/// One row per contact: each field from the contact or the provider.
fn enrich_contacts(
    contacts: &DataFrame,
    domains: &[Option<String>],
    cache: &BTreeMap<String, CacheRow>,
    params: &Params,
) -> Result<DataFrame> {
    let height = contacts.height();
    let mut columns = vec![
        contacts.column("contact_id")?.clone(),
        Column::new("domain".into(), domains.to_vec()),
    ];
    for (field, integer) in FIELDS {
        let own = strings(contacts, contact_column(field))?;
        let overwrite = params.overwrite.iter().any(|f| f == field);
        let mut values: Vec<Option<String>> = Vec::with_capacity(height);
        let mut sources: Vec<Option<String>> = Vec::with_capacity(height);
        let mut times: Vec<Option<i64>> = Vec::with_capacity(height);
        for i in 0..height {
            let own = own[i].clone().filter(|v| !v.trim().is_empty());
            let row = domains[i]
                .as_ref()
                .and_then(|d| cache.get(d))
                .filter(|r| r.status == "found" || r.fetched_at.is_some());
            let theirs = row.and_then(|r| r.values.get(field).cloned().flatten());
            let take_theirs = theirs.is_some() && (own.is_none() || overwrite);
            if take_theirs {
                values.push(theirs);
                sources.push(row.and_then(|r| r.provider.clone()));
                times.push(row.and_then(|r| r.fetched_at));
            } else if own.is_some() {
                values.push(own);
                sources.push(Some("contacts".into()));
                times.push(None);
            } else {
                values.push(None);
                sources.push(None);
                times.push(None);
            }
        }
        let values = if integer {
            Column::new(
                field.into(),
                values
                    .iter()
                    .map(|v| {
                        v.as_deref()
                            .and_then(|v| v.trim().parse::<f64>().ok())
                            .map(|n| n.round() as i64)
                    })
                    .collect::<Vec<_>>(),
            )
        } else {
            Column::new(field.into(), values)
        };
        columns.push(values);
        columns.push(Column::new(format!("{field}_source").into(), sources));
        columns.push(
            Column::new(format!("{field}_updated_at").into(), times)
                .cast(&DataType::Datetime(TimeUnit::Microseconds, None))?
                .cast(&utc_timestamp())?,
        );
    }
    Ok(DataFrame::new(height, columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn row(
        domain: &str,
        status: &str,
        fetched_days_ago: Option<i64>,
        now: DateTime<Utc>,
    ) -> CacheRow {
        CacheRow {
            domain: domain.into(),
            status: status.into(),
            fetched_at: fetched_days_ago.map(|d| (now - Duration::days(d)).timestamp_micros()),
            ..Default::default()
        }
    }

    #[test]
    fn plan_puts_errors_first_and_skips_fresh_answers() {
        let now = Utc::now();
        let params = Params::default();
        let domains: BTreeSet<String> = ["a.com", "b.com", "c.com", "d.com", "e.com", "f.com"]
            .iter()
            .map(|d| d.to_string())
            .collect();
        let cache: BTreeMap<String, CacheRow> = [
            row("a.com", "found", Some(1), now),
            row("b.com", "found", Some(31), now),
            row("c.com", "error", None, now),
            row("d.com", "not_found", Some(3), now),
            row("e.com", "not_found", Some(8), now),
        ]
        .into_iter()
        .map(|r| (r.domain.clone(), r))
        .collect();
        let plan = plan_requests(&domains, &cache, now, &params);
        assert_eq!(plan, vec!["c.com", "f.com", "b.com", "e.com"]);
    }

    #[test]
    fn values_become_text() {
        assert_eq!(value_text(&json!(1200.0), true), Some("1200".into()));
        assert_eq!(value_text(&json!("1,200"), true), Some("1200".into()));
        assert_eq!(value_text(&json!("many"), true), None);
        assert_eq!(value_text(&json!(" Retail "), false), Some("Retail".into()));
        assert_eq!(value_text(&json!(""), false), None);
        assert_eq!(value_text(&Value::Null, false), None);
    }
}
