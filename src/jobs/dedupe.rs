//! Job kind `dedupe`: contact deduplication.
//!
//! Records are compared on normalized match keys (the stored values are
//! never rewritten) with the Fellegi-Sunter model of
//! [`crate::dedupe::matching`]: comparison levels per field, `u` from
//! random pairs, `m` by expectation maximisation on the candidate pairs
//! that the blocking rules find, without labels. Pairs at or above
//! `threshold` link, as do pairs that a deterministic rule matches (all of
//! its fields equal). Clusters are the connected components of the links.
//!
//! Guards against wrong merges:
//! - role addresses (info@, team@, support@, ...) and addresses shared by
//!   more than `max_shared_email` records never link people: they are
//!   left out of matching;
//! - `blocked_values` ("test", "n/a", "0000000000", ...) count as missing;
//! - pairs in the do-not-merge table never link, and a cluster that would
//!   still join them through others is held for review;
//! - a cluster of more than `max_cluster_size` records is held for review
//!   instead of merged.
//!
//! Survivorship per column (`most_recent`, `most_frequent`,
//! `source_priority`, `oldest`, `keep_all`) builds one golden record per
//! cluster in `contacts_deduped`; the survivor id is the oldest record
//! (created_at, then contact_id). `keep_all` columns keep the other values
//! in `<column>_alternates`. `merge_map` maps every contact to its survivor
//! with the match probability and what linked it; `merge_ledger` keeps the
//! pre-merge records of every merged cluster, so `nightshift unmerge`
//! restores them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use polars::prelude::*;
use polars_arrow::array::{Array, Utf8ViewArray};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{JobContext, JobResult, KindSpec, OutputFrame, Role};
use crate::dedupe::matching::{self, BlockingRule, Comparison, FieldSpec};
use crate::delta::WriteMode;
use crate::error::{Error, Result};
use crate::hash::BuildFixedHasher;

pub const SPEC: KindSpec = KindSpec {
    name: "dedupe",
    description: "finds duplicate contacts, merges them into golden records, reversibly",
    inputs: &[
        Role {
            optional: false,
            name: "contacts",
            default_table: "contacts",
            description: "the contacts",
        },
        Role {
            optional: true,
            name: "do_not_merge",
            default_table: "dedupe_do_not_merge",
            description: "pairs of contact ids that must never merge",
        },
    ],
    outputs: &[
        Role {
            optional: false,
            name: "deduped",
            default_table: "contacts_deduped",
            description: "one golden record per cluster",
        },
        Role {
            optional: false,
            name: "ledger",
            default_table: "merge_ledger",
            description: "the pre-merge records of merged clusters",
        },
        Role {
            optional: false,
            name: "map",
            default_table: "merge_map",
            description: "every contact with its survivor and why",
        },
    ],
    validate_params,
    run,
};

/// How a column's golden value is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// The non-empty value of the most recently updated record.
    MostRecent,
    /// The most frequent non-empty value (ties: the most recent).
    MostFrequent,
    /// The non-empty value whose `source` comes first in `source_priority`.
    SourcePriority,
    /// The non-empty value of the oldest record.
    Oldest,
    /// The most recent value, with the others in `<column>_alternates`.
    KeepAll,
}

/// Parameters of the `dedupe` job kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// Compared fields: a contacts column and its comparison. Columns the
    /// table lacks are left out.
    pub fields: Vec<FieldSpec>,
    /// Candidate pairs: records agreeing on every key of one rule.
    pub blocking: Vec<BlockingRule>,
    /// Rules that link on their own: all of their fields equal.
    pub deterministic: Vec<BlockingRule>,
    /// Match probability at which a pair links.
    pub threshold: f64,
    /// Blocks with more records yield no pairs (reported).
    pub max_block_size: usize,
    pub blocked_values: Vec<String>,
    /// Larger clusters are held for review, not merged.
    pub max_cluster_size: usize,
    /// An address on more records than this is shared and never links.
    pub max_shared_email: usize,
    /// Role local parts that never link (defaults: the list of
    /// `crate::email`).
    pub role_local_parts: Option<Vec<String>>,
    /// Column rules; `default` for the columns not named.
    pub survivorship: BTreeMap<String, Rule>,
    pub source_priority: Vec<String>,
    pub seed: u64,
    pub u_sample_pairs: usize,
}

impl Default for Params {
    fn default() -> Self {
        let field = |name: &str, comparison: Comparison| FieldSpec::new(name, comparison);
        Self {
            fields: vec![
                field("first_name", Comparison::Name),
                field("last_name", Comparison::Name),
                field(
                    "date_of_birth",
                    Comparison::Levenshtein {
                        thresholds: vec![1, 2],
                    },
                ),
                field(
                    "soc_sec_id",
                    Comparison::Levenshtein {
                        thresholds: vec![1, 2],
                    },
                ),
                field("street_number", Comparison::Exact),
                field(
                    "address_1",
                    Comparison::JaroWinkler {
                        thresholds: vec![0.8, 0.92],
                    },
                ),
                field(
                    "city",
                    Comparison::JaroWinkler {
                        thresholds: vec![0.8, 0.92],
                    },
                ),
                field("postcode", Comparison::Postcode),
                field("email", Comparison::Email),
                field("phone", Comparison::Phone),
            ],
            // Every rule joins keys with many distinct values, so a block
            // holds few records and the candidate pairs grow about linearly
            // with the records. Each kind of error (a typo in a name, swapped
            // names, a move, a changed digit, a missing value) leaves at
            // least one rule whose keys all still agree.
            blocking: vec![
                BlockingRule::on_keys(&[
                    ("postcode", None),
                    ("first_name", None),
                    ("last_name", Some(1)),
                ]),
                BlockingRule::on_keys(&[
                    ("postcode", None),
                    ("last_name", None),
                    ("first_name", Some(1)),
                ]),
                BlockingRule::on_keys(&[("first_name", Some(3)), ("date_of_birth", None)]),
                BlockingRule::on_keys(&[("last_name", Some(3)), ("date_of_birth", None)]),
                BlockingRule::on_keys(&[
                    ("first_name", Some(3)),
                    ("last_name", Some(3)),
                    ("date_of_birth", Some(6)),
                ]),
                BlockingRule::on(&["soc_sec_id"]),
                BlockingRule::on_keys(&[("soc_sec_id", Some(4)), ("date_of_birth", Some(6))]),
                BlockingRule::on(&["address_1", "street_number"]),
                BlockingRule::on_keys(&[("address_1", Some(5)), ("postcode", None)]),
                BlockingRule::on(&["email"]),
                BlockingRule::on(&["phone"]),
            ],
            deterministic: vec![BlockingRule::on(&["email"])],
            threshold: 0.9,
            max_block_size: 2000,
            blocked_values: [
                "test",
                "n/a",
                "na",
                "none",
                "null",
                "unknown",
                "0000000000",
                "-",
            ]
            .iter()
            .map(|v| v.to_string())
            .collect(),
            max_cluster_size: 20,
            max_shared_email: 3,
            role_local_parts: None,
            survivorship: [
                ("default".to_string(), Rule::MostRecent),
                ("email".to_string(), Rule::KeepAll),
                ("phone".to_string(), Rule::KeepAll),
                ("created_at".to_string(), Rule::Oldest),
                ("source".to_string(), Rule::Oldest),
            ]
            .into_iter()
            .collect(),
            source_priority: Vec::new(),
            seed: 1,
            u_sample_pairs: 1_000_000,
        }
    }
}

fn validate_params(params: &toml::Table) -> std::result::Result<Value, String> {
    let value = super::parse_params::<Params>(params)?;
    let parsed: Params = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    let mut rules = parsed.blocking.clone();
    rules.extend(parsed.deterministic.clone());
    matching::validate(&parsed.fields, &rules).map_err(|e| e.to_string())?;
    if parsed.blocking.is_empty() {
        return Err(
            "blocking is empty: add at least one rule, e.g. { keys = [{ field = \"postcode\" }] }"
                .into(),
        );
    }
    if !(parsed.threshold > 0.0 && parsed.threshold < 1.0) {
        return Err(format!(
            "threshold must be between 0 and 1, got {}",
            parsed.threshold
        ));
    }
    if parsed.max_cluster_size < 2 {
        return Err("max_cluster_size must be at least 2".into());
    }
    if parsed
        .survivorship
        .values()
        .any(|r| *r == Rule::SourcePriority)
        && parsed.source_priority.is_empty()
    {
        return Err(
            "a source_priority rule needs source_priority = [\"crm\", \"webinar\", ...]".into(),
        );
    }
    Ok(value)
}

/// A contacts column as text, or nulls when the table lacks it.
fn text_column(frame: &DataFrame, name: &str) -> Result<Vec<Option<String>>> {
    match frame.column(name) {
        Ok(column) => Ok(column
            .cast(&DataType::String)?
            .str()?
            .iter()
            .map(|v| v.filter(|s| !is_blank(s)).map(str::to_string))
            .collect()),
        Err(_) => Ok(vec![None; frame.height()]),
    }
}

/// A contacts column as contiguous text, read in place. Blank values and a
/// missing column read as null.
struct TextColumn(Option<Utf8ViewArray>);

impl TextColumn {
    fn new(frame: &DataFrame, name: &str) -> Result<Self> {
        match frame.column(name) {
            Ok(column) => {
                let text = column.cast(&DataType::String)?;
                let text = text.str()?.rechunk();
                Ok(Self(Some(text.downcast_as_array().clone())))
            }
            Err(_) => Ok(Self(None)),
        }
    }

    fn get(&self, row: usize) -> Option<&str> {
        let array = self.0.as_ref()?;
        if array.validity().is_some_and(|valid| !valid.get_bit(row)) {
            return None;
        }
        Some(array.value(row)).filter(|value| !is_blank(value))
    }
}

/// Tells whether a value is empty or white space only. Most values start
/// with a visible character, which settles it.
fn is_blank(value: &str) -> bool {
    match value.as_bytes().first() {
        None => true,
        Some(byte) if byte.is_ascii_graphic() => false,
        Some(_) => value.trim().is_empty(),
    }
}

/// Returns the rank of every record in the order of `key`.
fn rank_records<K: Ord + Send>(n: usize, key: impl Fn(usize) -> K + Sync) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.par_sort_by_cached_key(|&i| key(i as usize));
    let mut rank = vec![0u32; n];
    for (position, &i) in order.iter().enumerate() {
        rank[i as usize] = position as u32;
    }
    rank
}

/// What a cluster became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Single,
    Merged,
    Held,
}

fn run(ctx: &JobContext) -> Result<JobResult> {
    let params: Params = serde_json::from_value(ctx.params.clone())?;
    let input = ctx.input("contacts");
    // Sorted by contact_id as text, whatever its type, so that record order
    // is the order of the ids that the outputs are sorted by.
    let contacts = input
        .table
        .scan(&input.snapshot)?
        .sort_by_exprs(
            [col("contact_id").cast(DataType::String)],
            SortMultipleOptions::default(),
        )
        .collect()?;
    let n = contacts.height();
    let ids: Vec<String> = text_column(&contacts, "contact_id")?
        .into_iter()
        .map(|v| v.unwrap_or_default())
        .collect();
    let present: BTreeSet<String> = contacts
        .get_column_names()
        .iter()
        .map(|c| c.to_string())
        .collect();
    let specs: Vec<FieldSpec> = params
        .fields
        .iter()
        .filter(|f| present.contains(&f.name))
        .cloned()
        .collect();
    let spec_names: BTreeSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let usable = |rule: &BlockingRule| {
        rule.keys
            .iter()
            .all(|k| spec_names.contains(k.field.as_str()))
    };
    let blocking: Vec<BlockingRule> = params
        .blocking
        .iter()
        .filter(|r| usable(r))
        .cloned()
        .collect();
    let deterministic: Vec<BlockingRule> = params
        .deterministic
        .iter()
        .filter(|r| usable(r))
        .cloned()
        .collect();
    if blocking.is_empty() {
        return Err(Error::Data(format!(
            "no blocking rule can run: the contacts have none of their fields; the compared \
             fields present are: {}",
            spec_names.iter().copied().collect::<Vec<_>>().join(", ")
        )));
    }
    let phase = Instant::now();
    // The compared columns are read in place, with no per-value copy.
    let mut strings: Vec<TextColumn> = Vec::with_capacity(specs.len());
    for spec in &specs {
        strings.push(TextColumn::new(&contacts, &spec.name)?);
    }
    let value = |field: usize, record: usize| -> Option<&str> { strings[field].get(record) };

    // Guards: role and shared addresses never link people.
    let mut metrics = serde_json::Map::new();
    let email = specs.iter().position(|s| s.name == "email");
    // Each address is normalized once, in parallel. The counts and the
    // lookups below then hash the normalized keys.
    let normalized_emails: Vec<Option<String>> = match email {
        Some(email) => (0..n)
            .into_par_iter()
            .map(|record| value(email, record).and_then(matching::normalize_email))
            .collect(),
        None => Vec::new(),
    };
    let mut left_out_emails: HashSet<&str, BuildFixedHasher> = HashSet::default();
    if email.is_some() {
        let roles: HashSet<String> = match &params.role_local_parts {
            Some(parts) => parts.iter().map(|p| p.trim().to_lowercase()).collect(),
            None => crate::email::ROLE_LOCAL_PARTS
                .iter()
                .map(|p| p.to_string())
                .collect(),
        };
        let mut counts: HashMap<&str, usize, BuildFixedHasher> = HashMap::default();
        for key in normalized_emails.iter().flatten() {
            *counts.entry(key.as_str()).or_default() += 1;
        }
        left_out_emails = counts
            .into_iter()
            .filter(|(key, count)| {
                let local = key.split(['@', '+']).next().unwrap_or_default();
                roles.contains(local) || *count > params.max_shared_email
            })
            .map(|(key, _)| key)
            .collect();
    }
    let emails_left_out = AtomicUsize::new(0);
    let placeholders_cleared = AtomicUsize::new(0);
    let placeholders = matching::placeholder_keys(&specs, &params.blocked_values);
    let keys = matching::MatchKeys::from_values(
        n,
        &specs,
        |field, record| {
            let raw = value(field, record)?;
            if Some(field) == email
                && normalized_emails[record]
                    .as_deref()
                    .is_some_and(|key| left_out_emails.contains(key))
            {
                emails_left_out.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Some(raw)
        },
        |field, key| {
            let placeholder = matching::is_placeholder(&placeholders[field], key);
            if placeholder {
                placeholders_cleared.fetch_add(1, Ordering::Relaxed);
            }
            !placeholder
        },
    )
    .map_err(|e| Error::Data(e.to_string()))?;
    drop(strings);
    if email.is_some() {
        metrics.insert(
            "emails_left_out".into(),
            Value::from(emails_left_out.into_inner()),
        );
    }
    metrics.insert(
        "blocked_values_cleared".into(),
        Value::from(placeholders_cleared.into_inner()),
    );
    tracing::info!(
        records = n,
        fields = specs.len(),
        seconds = phase.elapsed().as_secs_f64(),
        "dedupe: match keys computed"
    );
    let phase = Instant::now();
    let blocked = matching::block_keys(
        &keys,
        &blocking,
        params.max_block_size,
        &params.blocked_values,
    )
    .map_err(|e| Error::Data(e.to_string()))?;
    tracing::info!(
        rules = blocking.len(),
        candidate_pairs = blocked.pairs.len(),
        new_pairs_per_rule = ?blocked.rule_pairs,
        skipped_blocks = blocked.skipped_blocks.len(),
        seconds = phase.elapsed().as_secs_f64(),
        "dedupe: blocking done"
    );
    metrics.insert("records".into(), Value::from(n));
    metrics.insert("candidate_pairs".into(), Value::from(blocked.pairs.len()));
    metrics.insert(
        "candidate_pairs_per_record".into(),
        Value::from(if n > 0 {
            blocked.pairs.len() as f64 / n as f64
        } else {
            0.0
        }),
    );
    metrics.insert(
        "candidate_pairs_per_rule".into(),
        json!(blocking
            .iter()
            .zip(&blocked.rule_pairs)
            .map(|(rule, pairs)| json!({ "rule": rule.describe(), "new_pairs": pairs }))
            .collect::<Vec<_>>()),
    );
    metrics.insert(
        "skipped_blocks".into(),
        json!(blocked
            .skipped_blocks
            .iter()
            .take(20)
            .map(|(k, s)| json!({ "block": k, "records": s }))
            .collect::<Vec<_>>()),
    );

    // Score, and link what passes the threshold or a deterministic rule.
    // Each distinct level pattern is weighed and described once, and the
    // pairs keep only their pattern index.
    let mut link_info: HashMap<(u32, u32), (f64, Arc<str>)> = HashMap::new();
    if !blocked.pairs.is_empty() && n >= 2 {
        let phase = Instant::now();
        let patterns = matching::pair_patterns(&keys, &blocked.pairs)
            .map_err(|e| Error::Data(e.to_string()))?;
        tracing::info!(
            candidate_pairs = blocked.pairs.len(),
            patterns = patterns.patterns.len(),
            seconds = phase.elapsed().as_secs_f64(),
            "dedupe: candidate pairs compared"
        );
        let model = matching::train_patterns(&keys, &patterns, params.seed, params.u_sample_pairs)
            .map_err(|e| Error::Data(format!("the match model could not be trained: {e}")))?;
        metrics.insert(
            "model".into(),
            json!({
                "lambda": model.lambda,
                "em_iterations": model.em_iterations,
                "fields": model.fields.iter().map(|f| json!({"field": f.name, "m": f.m, "u": f.u})).collect::<Vec<_>>(),
            }),
        );
        metrics.insert(
            "comparison_patterns".into(),
            Value::from(patterns.patterns.len()),
        );
        let phase = Instant::now();
        let labels: Vec<Vec<String>> = specs.iter().map(|s| s.comparison.level_labels()).collect();
        let scored: Vec<Option<(f64, Arc<str>)>> = patterns
            .patterns
            .iter()
            .map(|levels| {
                let (_, probability) = model.weigh(levels);
                (probability >= params.threshold).then(|| {
                    let described = levels
                        .iter()
                        .enumerate()
                        .map(|(f, level)| {
                            format!(
                                "{}={}",
                                specs[f].name,
                                labels[f].get(*level as usize).cloned().unwrap_or_default()
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", ");
                    (probability, Arc::from(described))
                })
            })
            .collect();
        let linked: Vec<((u32, u32), u32)> = blocked
            .pairs
            .par_iter()
            .zip(patterns.pair_pattern.par_iter())
            .filter(|(_, &pattern)| scored[pattern as usize].is_some())
            .map(|(&pair, &pattern)| (pair, pattern))
            .collect();
        link_info.reserve(linked.len());
        for (pair, pattern) in linked {
            if let Some((probability, described)) = &scored[pattern as usize] {
                link_info.insert(pair, (*probability, described.clone()));
            }
        }
        tracing::info!(
            links = link_info.len(),
            threshold = params.threshold,
            seconds = phase.elapsed().as_secs_f64(),
            "dedupe: pairs scored"
        );
    }
    if !deterministic.is_empty() {
        let exact = matching::block_keys(
            &keys,
            &deterministic,
            params.max_block_size,
            &params.blocked_values,
        )
        .map_err(|e| Error::Data(e.to_string()))?;
        let names: Vec<String> = deterministic.iter().map(|r| r.describe()).collect();
        let described: Arc<str> = Arc::from(format!("rule: same {}", names.join(" or ")));
        for pair in exact.pairs {
            link_info
                .entry(pair)
                .or_insert_with(|| (1.0, described.clone()));
        }
    }

    // Do-not-merge pairs never link.
    let mut forbidden: HashSet<(u32, u32)> = HashSet::new();
    if let Some(pinned) = ctx.optional_input("do_not_merge") {
        let frame = pinned.table.scan(&pinned.snapshot)?.collect()?;
        // The records of an id: by binary search while the ids are in text
        // order, as the sort above leaves them, else through a map. Every
        // record of an id that appears twice takes part.
        let by_id: Option<HashMap<&str, Vec<u32>>> = (!ids.is_sorted()).then(|| {
            let mut map: HashMap<&str, Vec<u32>> = HashMap::new();
            for (record, id) in ids.iter().enumerate() {
                map.entry(id.as_str()).or_default().push(record as u32);
            }
            map
        });
        let records = |id: &str| -> Vec<u32> {
            match &by_id {
                Some(map) => map.get(id).cloned().unwrap_or_default(),
                None => {
                    let start = ids.partition_point(|probe| probe.as_str() < id);
                    let end = ids.partition_point(|probe| probe.as_str() <= id);
                    (start as u32..end as u32).collect()
                }
            }
        };
        let a = text_column(&frame, "contact_id_a")?;
        let b = text_column(&frame, "contact_id_b")?;
        for (a, b) in a.iter().zip(&b) {
            let (Some(a), Some(b)) = (a.as_deref(), b.as_deref()) else {
                continue;
            };
            for record_a in records(a) {
                for record_b in records(b) {
                    if record_a != record_b {
                        forbidden.insert((record_a.min(record_b), record_a.max(record_b)));
                    }
                }
            }
        }
    }
    let removed = link_info.keys().filter(|p| forbidden.contains(p)).count();
    link_info.retain(|pair, _| !forbidden.contains(pair));
    metrics.insert("links_removed_by_do_not_merge".into(), Value::from(removed));
    let mut links: Vec<(u32, u32)> = link_info.keys().copied().collect();
    links.sort_unstable();
    metrics.insert("links".into(), Value::from(links.len()));
    let phase = Instant::now();
    let cluster_of = matching::clusters(n, &links);

    // Cluster members: every cluster's records in ascending order, one
    // slice per cluster. A cluster is named by its smallest record, and the
    // clusters run in that order.
    let mut sizes_of = vec![0u32; n];
    for c in &cluster_of {
        sizes_of[*c as usize] += 1;
    }
    let mut starts = vec![0usize; n + 1];
    for c in 0..n {
        starts[c + 1] = starts[c] + sizes_of[c] as usize;
    }
    let mut member_records = vec![0u32; n];
    let mut filled = starts.clone();
    for (record, c) in cluster_of.iter().enumerate() {
        member_records[filled[*c as usize]] = record as u32;
        filled[*c as usize] += 1;
    }
    drop(filled);
    let clusters: Vec<u32> = (0..n as u32)
        .filter(|c| sizes_of[*c as usize] > 0)
        .collect();
    let members =
        |cluster: u32| &member_records[starts[cluster as usize]..starts[cluster as usize + 1]];

    // A cluster that would join a do-not-merge pair through other records
    // is held.
    let joins_forbidden: HashSet<u32> = forbidden
        .iter()
        .filter(|(a, b)| cluster_of[*a as usize] == cluster_of[*b as usize])
        .map(|(a, _)| cluster_of[*a as usize])
        .collect();
    let mut fate = vec![Fate::Single; n];
    let mut held_reasons: Vec<Value> = Vec::new();
    for &cluster in &clusters {
        let size = members(cluster).len();
        fate[cluster as usize] = if size == 1 {
            Fate::Single
        } else if size > params.max_cluster_size {
            held_reasons.push(json!({
                "cluster": ids[cluster as usize],
                "records": size,
                "reason": format!("more than max_cluster_size = {}", params.max_cluster_size),
            }));
            Fate::Held
        } else if joins_forbidden.contains(&cluster) {
            held_reasons.push(json!({
                "cluster": ids[cluster as usize],
                "records": size,
                "reason": "it would join a do-not-merge pair through other records",
            }));
            Fate::Held
        } else {
            Fate::Merged
        };
    }
    let merged: Vec<u32> = clusters
        .iter()
        .copied()
        .filter(|c| fate[*c as usize] == Fate::Merged)
        .collect();
    tracing::info!(
        links = links.len(),
        clusters_merged = merged.len(),
        clusters_held = clusters
            .iter()
            .filter(|c| fate[**c as usize] == Fate::Held)
            .count(),
        seconds = phase.elapsed().as_secs_f64(),
        "dedupe: clusters formed"
    );
    let phase = Instant::now();

    // Survivor: the oldest record (created_at, then contact_id). The age and
    // recency orders are ranked once, so choosing a record compares integers.
    let created = TextColumn::new(&contacts, "created_at")?;
    let updated = TextColumn::new(&contacts, "updated_at")?;
    let sources = TextColumn::new(&contacts, "source")?;
    let (age_rank, recent_rank) = rayon::join(
        || rank_records(n, |i| (created.get(i).unwrap_or("~"), ids[i].as_str())),
        || {
            rank_records(n, |i| {
                (
                    updated.get(i).or(created.get(i)).unwrap_or_default(),
                    ids[i].as_str(),
                )
            })
        },
    );
    let survivor_of = |cluster: u32| -> u32 {
        let list = members(cluster);
        *list
            .iter()
            .min_by_key(|i| age_rank[**i as usize])
            .unwrap_or(&list[0])
    };
    // Indexed by cluster. The entry of a record that names no cluster, or
    // a cluster of one, is the record itself.
    let mut cluster_survivor: Vec<u32> = (0..n as u32).collect();
    for &cluster in &clusters {
        if members(cluster).len() > 1 {
            cluster_survivor[cluster as usize] = survivor_of(cluster);
        }
    }

    // Golden rows: per column, the row that gives its value.
    let column_names: Vec<String> = contacts
        .get_column_names()
        .iter()
        .map(|c| c.to_string())
        .collect();
    let rule_of = |column: &str| -> Rule {
        params
            .survivorship
            .get(column)
            .or_else(|| params.survivorship.get("default"))
            .copied()
            .unwrap_or(Rule::MostRecent)
    };
    // Golden rows as (survivor, members), in the order of the survivor
    // ids, which is the order of the records.
    let mut golden_clusters: Vec<(u32, &[u32])> = Vec::new();
    for &cluster in &clusters {
        if fate[cluster as usize] == Fate::Merged {
            golden_clusters.push((cluster_survivor[cluster as usize], members(cluster)));
        } else {
            for i in members(cluster) {
                golden_clusters.push((*i, std::slice::from_ref(i)));
            }
        }
    }
    golden_clusters.par_sort_unstable_by_key(|(survivor, _)| *survivor);
    // The columns are independent, so they are built in parallel.
    let built = column_names
        .par_iter()
        .map(|name| -> Result<(Column, Option<Column>)> {
            let rule = if name == "contact_id" {
                Rule::Oldest
            } else {
                rule_of(name)
            };
            let take: Vec<IdxSize> = if name == "contact_id" {
                golden_clusters
                    .iter()
                    .map(|(survivor, _)| *survivor as IdxSize)
                    .collect()
            } else {
                let values = TextColumn::new(&contacts, name)?;
                let mut take = Vec::with_capacity(golden_clusters.len());
                let alternates_name = format!("{name}_alternates");
                let mut alts = ListStringChunkedBuilder::new(
                    alternates_name.as_str().into(),
                    if rule == Rule::KeepAll {
                        golden_clusters.len()
                    } else {
                        0
                    },
                    0,
                );
                for &(surv, list) in &golden_clusters {
                    // A single record gives every value and has no alternates.
                    if list.len() == 1 {
                        take.push(list[0] as IdxSize);
                        if rule == Rule::KeepAll {
                            alts.append_values_iter(std::iter::empty());
                        }
                        continue;
                    }
                    let non_empty: Vec<u32> = list
                        .iter()
                        .copied()
                        .filter(|i| values.get(*i as usize).is_some())
                        .collect();
                    let chosen = if non_empty.is_empty() {
                        surv
                    } else {
                        match rule {
                            Rule::MostRecent | Rule::KeepAll => *non_empty
                                .iter()
                                .max_by_key(|i| recent_rank[**i as usize])
                                .unwrap_or(&surv),
                            Rule::Oldest => *non_empty
                                .iter()
                                .min_by_key(|i| age_rank[**i as usize])
                                .unwrap_or(&surv),
                            Rule::MostFrequent => {
                                let mut counts: HashMap<&str, usize> = HashMap::new();
                                for i in &non_empty {
                                    *counts
                                        .entry(values.get(*i as usize).unwrap_or_default())
                                        .or_default() += 1;
                                }
                                *non_empty
                                    .iter()
                                    .max_by_key(|i| {
                                        (
                                            counts[values.get(**i as usize).unwrap_or_default()],
                                            recent_rank[**i as usize],
                                        )
                                    })
                                    .unwrap_or(&surv)
                            }
                            Rule::SourcePriority => *non_empty
                                .iter()
                                .min_by_key(|i| {
                                    let rank = sources
                                        .get(**i as usize)
                                        .and_then(|s| {
                                            params.source_priority.iter().position(|p| p == s)
                                        })
                                        .unwrap_or(usize::MAX);
                                    (rank, std::cmp::Reverse(recent_rank[**i as usize]))
                                })
                                .unwrap_or(&surv),
                        }
                    };
                    take.push(chosen as IdxSize);
                    if rule == Rule::KeepAll {
                        let mut others: Vec<&str> = non_empty
                            .iter()
                            .filter(|i| **i != chosen)
                            .filter_map(|i| values.get(*i as usize))
                            .filter(|v| Some(*v) != values.get(chosen as usize))
                            .collect();
                        others.sort_unstable();
                        others.dedup();
                        alts.append_values_iter(others.into_iter());
                    }
                }
                if rule == Rule::KeepAll {
                    let idx = IdxCa::from_vec("".into(), take);
                    return Ok((
                        contacts.column(name)?.take(&idx)?,
                        Some(alts.finish().into_column()),
                    ));
                }
                take
            };
            let idx = IdxCa::from_vec("".into(), take);
            Ok((contacts.column(name)?.take(&idx)?, None))
        })
        .collect::<Result<Vec<_>>>()?;
    let height = golden_clusters.len();
    let mut out_columns: Vec<Column> = Vec::with_capacity(built.len() + 4);
    let mut alternates: Vec<Column> = Vec::new();
    for (column, alts) in built {
        out_columns.push(column);
        alternates.extend(alts);
    }
    alternates.sort_by(|a, b| a.name().cmp(b.name()));
    out_columns.extend(alternates);
    // The members of a cluster are in record order, which is id order.
    let mut merged_ids =
        ListStringChunkedBuilder::new("merged_ids".into(), height, golden_clusters.len());
    for (_, list) in &golden_clusters {
        merged_ids.append_values_iter(list.iter().map(|i| ids[*i as usize].as_str()));
    }
    out_columns.push(merged_ids.finish().into_column());
    out_columns.push(Column::new(
        "cluster_id".into(),
        golden_clusters
            .iter()
            .map(|(surv, _)| ids[*surv as usize].as_str())
            .collect::<Vec<_>>(),
    ));
    out_columns.push(super::text_scalar("run_id", &ctx.run_id, height));
    let deduped = DataFrame::new(height, out_columns)?;

    // The merge map: every contact, its survivor and why.
    let mut best: Vec<Option<(f64, u32, Arc<str>)>> = vec![None; n];
    for ((a, b), (p, why)) in &link_info {
        for (me, other) in [(*a, *b), (*b, *a)] {
            let entry = &mut best[me as usize];
            let better = match entry {
                None => true,
                Some((q, current, _)) => *p > *q || (*p == *q && other < *current),
            };
            if better {
                *entry = Some((*p, other, why.clone()));
            }
        }
    }
    let mut map_contact = Vec::with_capacity(n);
    let mut map_survivor = Vec::with_capacity(n);
    let mut map_cluster = Vec::with_capacity(n);
    let mut map_status = Vec::with_capacity(n);
    let mut map_probability: Vec<Option<f64>> = Vec::with_capacity(n);
    let mut map_linked_to: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut map_linked_by: Vec<Option<&str>> = Vec::with_capacity(n);
    for i in 0..n as u32 {
        let cluster = cluster_of[i as usize];
        let f = fate[cluster as usize];
        let cluster_surv = cluster_survivor[cluster as usize];
        let surv = if f == Fate::Merged { cluster_surv } else { i };
        map_contact.push(ids[i as usize].as_str());
        map_survivor.push(ids[surv as usize].as_str());
        map_cluster.push(ids[cluster_surv as usize].as_str());
        map_status.push(match f {
            Fate::Single => "single",
            Fate::Merged if surv == i => "survivor",
            Fate::Merged => "merged",
            Fate::Held => "held",
        });
        match &best[i as usize] {
            Some((p, other, why)) => {
                map_probability.push(Some(*p));
                map_linked_to.push(Some(ids[*other as usize].as_str()));
                map_linked_by.push(Some(&**why));
            }
            None => {
                map_probability.push(None);
                map_linked_to.push(None);
                map_linked_by.push(None);
            }
        }
    }
    let merge_map = DataFrame::new(
        n,
        vec![
            Column::new("contact_id".into(), map_contact),
            Column::new("survivor_id".into(), map_survivor),
            Column::new("cluster_id".into(), map_cluster),
            Column::new("status".into(), map_status),
            Column::new("match_probability".into(), map_probability),
            Column::new("linked_to".into(), map_linked_to),
            Column::new("linked_by".into(), map_linked_by),
            super::text_scalar("run_id", &ctx.run_id, n),
        ],
    )?;

    // The ledger: the pre-merge records of every merged cluster.
    let mut ledger_rows: Vec<IdxSize> = Vec::new();
    let mut ledger_cluster: Vec<&str> = Vec::new();
    for &cluster in &merged {
        let surv = ids[cluster_survivor[cluster as usize] as usize].as_str();
        for i in members(cluster) {
            ledger_rows.push(*i as IdxSize);
            ledger_cluster.push(surv);
        }
    }
    let mut ledger = contacts.take(&IdxCa::from_vec("".into(), ledger_rows))?;
    let rows = ledger.height();
    ledger.with_column(Column::new("cluster_id".into(), ledger_cluster))?;
    ledger.with_column(super::text_scalar("run_id", &ctx.run_id, rows))?;

    // Cluster statistics, largest first (ties: the survivor's id, which
    // is the record order).
    let mut sizes: BTreeMap<usize, usize> = BTreeMap::new();
    for &cluster in &merged {
        *sizes.entry(members(cluster).len()).or_default() += 1;
    }
    let mut largest: Vec<(usize, u32, u32)> = merged
        .iter()
        .map(|&c| (members(c).len(), cluster_survivor[c as usize], c))
        .collect();
    largest.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    metrics.insert("clusters_merged".into(), Value::from(merged.len()));
    metrics.insert(
        "records_merged_away".into(),
        Value::from(largest.iter().map(|c| c.0 - 1).sum::<usize>()),
    );
    metrics.insert("golden_records".into(), Value::from(height));
    metrics.insert(
        "cluster_sizes".into(),
        json!(sizes
            .iter()
            .map(|(s, c)| (s.to_string(), json!(c)))
            .collect::<serde_json::Map<_, _>>()),
    );
    metrics.insert("held_for_review".into(), Value::from(held_reasons));
    metrics.insert(
        "largest_merges".into(),
        json!(largest
            .iter()
            .take(20)
            .map(|(size, survivor, cluster)| json!({
                "cluster": ids[*survivor as usize],
                "records": size,
                "contacts": members(*cluster).iter().map(|i| ids[*i as usize].as_str()).collect::<Vec<_>>(),
            }))
            .collect::<Vec<_>>()),
    );
    tracing::info!(
        golden_records = height,
        seconds = phase.elapsed().as_secs_f64(),
        "dedupe: golden records, merge map and ledger built"
    );
    let mut result = JobResult {
        metrics,
        ..Default::default()
    };
    result.outputs.push(OutputFrame {
        role: "deduped".into(),
        frame: deduped,
        mode: WriteMode::Overwrite,
        key: Some("contact_id".into()),
    });
    result.outputs.push(OutputFrame {
        role: "map".into(),
        frame: merge_map,
        mode: WriteMode::Overwrite,
        key: Some("contact_id".into()),
    });
    result.outputs.push(OutputFrame {
        role: "ledger".into(),
        frame: ledger,
        mode: WriteMode::Overwrite,
        key: None,
    });
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_values_are_empty_or_white_space() {
        for blank in ["", " ", "\t\n", "\u{a0}", " \u{2003} "] {
            assert!(is_blank(blank), "{blank:?}");
        }
        for value in ["a", " a", "\u{e9}", "\u{a0}x", "0"] {
            assert!(!is_blank(value), "{value:?}");
        }
    }
}
