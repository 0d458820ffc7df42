//! The command line: argument definitions and one function per subcommand.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use crate::config::Config;
use crate::delta::table::CommitOptions;
use crate::delta::Table;
use crate::error::Error;
use crate::generate::{self, GenerateOptions};
use crate::ingest::{self, CsvOptions, Format, IngestMode, IngestOptions, MaxRejected};
use crate::manifest::{self, Manifest, Status};
use crate::monitor;
use crate::pipeline::{self, Pipeline};
use crate::runner::RunOptions;
use crate::schedule;
use crate::warehouse::Warehouse;

/// Exit code of a run or data failure.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code of a usage or configuration error.
pub const EXIT_USAGE: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "nightshift",
    version,
    about = "Scheduled batch jobs for marketing operations over versioned Delta tables",
    after_help = "Exit codes: 0 success, 1 run or data failure, 2 usage or configuration error.\n\
                  Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=nightshift=debug) for more."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Configuration file [default: ./nightshift.toml when it exists]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Warehouse URL: file://PATH or s3://BUCKET/PREFIX (overrides the configuration)
    #[arg(long, global = true, value_name = "URL", env = "NIGHTSHIFT_WAREHOUSE")]
    pub warehouse: Option<String>,
    /// Print JSON instead of text for people
    #[arg(long, global = true)]
    pub json: bool,
    /// Log more (-v: run starts and ends, -vv: debug, -vvv: trace); RUST_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log errors only
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write nightshift.toml and the standard suppression pipeline into a folder
    Init(InitArgs),
    /// Generate synthetic contacts, email events, activities and orders as Parquet
    Generate(GenerateArgs),
    /// Load CSV, Parquet or NDJSON files into a table
    Ingest(IngestArgs),
    /// Run pipelines
    Run(RunArgs),
    /// List recorded runs, newest first
    Runs(RunsArgs),
    /// List the warehouse's tables with their latest version and rows
    Tables,
    /// Show a table's versions
    History(TableArgs),
    /// Print what a notebook needs to read a table
    Path(PathArgs),
    /// Commit a new version restoring an older one (nothing is deleted)
    Rollback(RollbackArgs),
    /// Delete data files no version inside the retention window references
    Vacuum(VacuumArgs),
    /// Check the configuration and every pipeline file
    Validate,
    /// Show every pipeline's schedule, last run, last success, next due
    /// time and health; exits 1 when any is failing or stale
    Status(StatusArgs),
    /// Print the pipelines' metrics in the Prometheus text format
    Metrics,
    /// Run pipelines on their schedules in the foreground until SIGTERM
    Schedule(ScheduleArgs),
    /// Customer lifetime value tools
    #[command(subcommand)]
    Clv(ClvCommand),
    /// Explain why a job decided what it did
    #[command(subcommand)]
    Explain(ExplainCommand),
    /// Undo a merge: restore a cluster's records and never merge them again
    Unmerge(UnmergeArgs),
}

#[derive(Debug, Subcommand)]
pub enum ExplainCommand {
    /// Why an address is suppressed: reason, rule and triggering events
    Suppression(ExplainSuppressionArgs),
    /// Show a contact's score, rule group by rule group and fit rule by fit rule
    Score(ExplainScoreArgs),
    /// Why a contact was merged: its survivor, cluster and the comparison
    Merge(ExplainMergeArgs),
}

#[derive(Debug, Args)]
pub struct ExplainMergeArgs {
    pub contact_id: String,
    /// The dedupe pipeline whose tables to use
    #[arg(long, default_value = "dedupe")]
    pub pipeline: String,
}

#[derive(Debug, Args)]
pub struct UnmergeArgs {
    /// A cluster id (its survivor's contact id) or any contact id in it
    pub cluster_or_contact: String,
    /// The dedupe pipeline whose tables to use
    #[arg(long, default_value = "dedupe")]
    pub pipeline: String,
    /// The reason the records are different people, stored with the do-not-merge pairs
    #[arg(long, default_value = "unmerged by hand")]
    pub reason: String,
}

#[derive(Debug, Args)]
pub struct ExplainScoreArgs {
    pub contact_id: String,
    /// The scoring pipeline whose table and model to use
    #[arg(long, default_value = "scoring")]
    pub pipeline: String,
}

#[derive(Debug, Args)]
pub struct ExplainSuppressionArgs {
    /// The email address, as stored anywhere (it is normalized for lookup)
    pub email: String,
    /// The suppression pipeline whose tables and normalization to use
    #[arg(long, default_value = "suppression")]
    pub pipeline: String,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Evaluate staleness and due times as if it were this time (RFC 3339)
    #[arg(long, value_name = "TIME")]
    pub now: Option<String>,
}

#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// Check staleness at least this often, in seconds
    #[arg(long, default_value_t = 60)]
    pub check_every: u64,
}

#[derive(Debug, Subcommand)]
pub enum ClvCommand {
    /// Fit BG/NBD on the orders through a date and compare its predictions
    /// with the purchases made after it, in total and by repeat purchases
    Holdout(HoldoutArgs),
}

#[derive(Debug, Args)]
pub struct HoldoutArgs {
    /// Last day of the calibration period (YYYY-MM-DD)
    #[arg(long, value_name = "DATE")]
    pub until: String,
    /// Last day of the holdout period [default: the day of the last order]
    #[arg(long, value_name = "DATE")]
    pub end: Option<String>,
    /// Take the orders table and time unit from this clv pipeline
    #[arg(long)]
    pub pipeline: Option<String>,
    /// Orders table, when no pipeline is given
    #[arg(long, default_value = "orders", conflicts_with = "pipeline")]
    pub table: String,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Folder to initialise
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Overwrite existing files
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Random seed; the same seed and sizes give the same files
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Number of contacts (about 3% of them near-duplicates of another)
    #[arg(long, default_value_t = 10_000)]
    pub contacts: u64,
    /// Mean number of email events per contact
    #[arg(long, default_value_t = 10)]
    pub events_per_contact: u64,
    /// Mean number of activities per contact
    #[arg(long, default_value_t = 3)]
    pub activities_per_contact: u64,
    /// Output folder; receives contacts/, email_events/, activities/ and orders/
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Table to load into (canonical: contacts, email_events, activities, orders)
    pub table: String,
    /// Local paths or URLs (s3://BUCKET/KEY, file://PATH)
    #[arg(required = true)]
    pub files: Vec<String>,
    /// File format [default: from each file's extension]
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// CSV field delimiter, one character (use \t for tab)
    #[arg(long, default_value = ",")]
    pub delimiter: String,
    /// The CSV files have no header line; columns are named column_1, column_2, ...
    #[arg(long)]
    pub no_header: bool,
    /// CSV quote character, or "none" to turn quoting off
    #[arg(long, default_value = "\"")]
    pub quote: String,
    /// Map a source column onto a table column, e.g. --map Email=email (repeatable)
    #[arg(long = "map", value_name = "SOURCE=COLUMN")]
    pub mapping: Vec<String>,
    /// Write mode: append the rows, overwrite the table, or upsert by key
    #[arg(long, value_enum, default_value_t = IngestMode::Append)]
    pub mode: IngestMode,
    /// Key column for upserts and duplicate checks [default: the table's key]
    #[arg(long)]
    pub key: Option<String>,
    /// Fail without committing when more rows are rejected: a count (100) or a percentage (1%)
    #[arg(long, value_name = "N|P%")]
    pub max_rejected: Option<MaxRejected>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Pipelines to run, by file name without .toml
    pub pipelines: Vec<String>,
    /// Run every pipeline in the pipelines folder, upstream pipelines first
    #[arg(long, conflicts_with = "pipelines")]
    pub all: bool,
    /// Run the pipelines whose scheduled time has come since their last
    /// scheduled run (missed times are caught up with one run); for system
    /// cron, a Kubernetes CronJob or any scheduler
    #[arg(long, conflicts_with_all = ["pipelines", "all"])]
    pub due: bool,
    /// Evaluate schedules as if it were this time (RFC 3339), with --due; the
    /// runs are recorded as serving that time, so use it on test warehouses
    #[arg(long, value_name = "TIME", requires = "due")]
    pub now: Option<String>,
    /// Run even when inputs and parameters are unchanged since the last success
    #[arg(long)]
    pub force: bool,
    /// Compute and report rows added, removed and changed per output; commit nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Commit even when a gate fails, after a person has checked the output;
    /// recorded in the manifest
    #[arg(long)]
    pub skip_gates: bool,
}

#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Only runs of this pipeline
    pub pipeline: Option<String>,
    /// Show at most this many runs
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
}

#[derive(Debug, Args)]
pub struct TableArgs {
    pub table: String,
}

#[derive(Debug, Args)]
pub struct PathArgs {
    pub table: String,
    /// Version to read [default: the latest]
    #[arg(long)]
    pub version: Option<u64>,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    pub table: String,
    /// Version whose content the new version restores
    #[arg(long)]
    pub to: u64,
}

#[derive(Debug, Args)]
pub struct VacuumArgs {
    /// Tables to vacuum [default: all]
    pub tables: Vec<String>,
    /// Keep every version committed within this many hours
    #[arg(long, default_value_t = 168.0)]
    pub retention_hours: f64,
    /// List the files that would be deleted, delete nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Allow a retention under 1 hour, which deletes the files of writes
    /// still in progress: use it only when no ingest or run is active
    #[arg(long)]
    pub allow_short_retention: bool,
}

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    let config = Config::load(cli.global.config.as_deref())?;
    let json_output = cli.global.json;
    let warehouse_url = || {
        cli.global
            .warehouse
            .clone()
            .unwrap_or_else(|| config.warehouse.clone())
    };
    let open = || -> anyhow::Result<Warehouse> { Ok(Warehouse::open(&warehouse_url())?) };
    match cli.command {
        Command::Init(args) => init(&args, json_output),
        Command::Generate(args) => generate_files(&args, json_output),
        Command::Ingest(args) => ingest_files(&open()?, &config, args, json_output),
        Command::Run(args) => run_pipelines(&open()?, &config, &args, json_output),
        Command::Runs(args) => list_runs(&open()?, &config, &args, json_output),
        Command::Tables => list_tables(&open()?, json_output),
        Command::History(args) => history(&open()?, &args.table, json_output),
        Command::Path(args) => table_path(&open()?, &args, json_output),
        Command::Rollback(args) => rollback(&open()?, &args, json_output),
        Command::Vacuum(args) => vacuum(&open()?, &args, json_output),
        Command::Validate => validate(&open()?, &config, json_output),
        Command::Status(args) => status(&open()?, &config, &args, json_output),
        Command::Metrics => metrics(&open()?, &config),
        Command::Schedule(args) => serve(&open()?, &config, &args),
        Command::Explain(ExplainCommand::Merge(args)) => {
            explain_merge(&open()?, &config, &args, json_output)
        }
        Command::Unmerge(args) => unmerge(&open()?, &config, &args, json_output),
        Command::Explain(ExplainCommand::Score(args)) => {
            explain_score(&open()?, &config, &args, json_output)
        }
        Command::Explain(ExplainCommand::Suppression(args)) => {
            explain_suppression(&open()?, &config, &args, json_output)
        }
        Command::Clv(ClvCommand::Holdout(args)) => {
            clv_holdout(&open()?, &config, &args, json_output)
        }
    }
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

const CONFIG_TEMPLATE: &str = r#"# nightshift configuration.
# The warehouse: file://PATH (relative to this file), s3://BUCKET/PREFIX
# (credentials, region and endpoint from AWS_* environment variables).
warehouse = "file://./warehouse"
# The folder of pipeline files, relative to this file.
pipelines = "pipelines"
"#;

const SUPPRESSION_TEMPLATE: &str = r#"# Nightly bounce suppression: moves hard bounces, complaints and
# unsubscribes from email_events to suppression_list.
kind = "suppression"
description = "Nightly bounce suppression"
# Every night at 02:00 UTC; `nightshift run --due` or `nightshift schedule`
# runs it. A pipeline without a successful run for 26 hours is stale.
schedule = "0 2 * * *"
time_zone = "UTC"
max_age = "26h"

[inputs]
events = "email_events"

[outputs]
list = "suppression_list"
changes = "suppression_changes"

[params]
# CSV of the whole list, under the warehouse, for the email platform.
export_csv = "exports/suppression_list.csv"

# Fail the run, committing nothing, if the list would shrink by more than 5%:
# the list only grows unless someone removes entries on purpose.
[[gates]]
output = "list"
max_shrink_pct = 5.0
"#;

fn init(args: &InitArgs, json_output: bool) -> anyhow::Result<u8> {
    let files = [
        (args.dir.join("nightshift.toml"), CONFIG_TEMPLATE),
        (
            args.dir.join("pipelines/suppression.toml"),
            SUPPRESSION_TEMPLATE,
        ),
    ];
    let mut written = Vec::new();
    for (path, text) in &files {
        if path.exists() && !args.force {
            bail!(Error::Config(format!(
                "{} already exists; pass --force to overwrite it",
                path.display()
            )));
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path.display().to_string());
    }
    if json_output {
        print_json(&json!({ "written": written }))?;
    } else {
        for path in written {
            println!("wrote {path}");
        }
    }
    Ok(0)
}

fn progress_bar(total: u64, what: &str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

fn spinner(what: String) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message(what);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn generate_files(args: &GenerateArgs, json_output: bool) -> anyhow::Result<u8> {
    let mut options = GenerateOptions::new(args.seed, args.contacts, &args.out);
    options.events_per_contact = args.events_per_contact;
    options.activities_per_contact = args.activities_per_contact;
    let bar = progress_bar(args.contacts, "generating contacts");
    let summary = generate::generate(&options, |n| bar.inc(n))?;
    bar.finish_and_clear();
    if json_output {
        print_json(&summary)?;
    } else {
        println!(
            "generated {} contacts, {} email events, {} activities, {} orders in {}",
            summary.contacts,
            summary.email_events,
            summary.activities,
            summary.orders,
            args.out.display()
        );
    }
    Ok(0)
}

fn single_byte(option: &str, value: &str) -> anyhow::Result<u8> {
    let value = if value == "\\t" { "\t" } else { value };
    match value.as_bytes() {
        [byte] => Ok(*byte),
        _ => bail!(Error::Config(format!(
            "invalid {option} `{value}`: expected exactly one character"
        ))),
    }
}

fn ingest_files(
    warehouse: &Warehouse,
    config: &Config,
    args: IngestArgs,
    json_output: bool,
) -> anyhow::Result<u8> {
    // Output tables belong to their pipelines: rows ingested into one would
    // bypass the job's rules and be replaced by its next run.
    if config.pipelines_dir.is_dir() {
        for pipeline in pipeline::load_all(&config.pipelines_dir)? {
            if pipeline.outputs.values().any(|t| t == &args.table) {
                bail!(Error::Config(format!(
                    "table `{}` is an output of pipeline `{}` ({}); ingest loads input tables \
                     only. To undo a run, use `nightshift rollback {} --to VERSION`",
                    args.table,
                    pipeline.name,
                    pipeline.path.display(),
                    args.table
                )));
            }
        }
    }
    if crate::schema::input_table(&args.table).is_none() && !json_output {
        let canonical: Vec<&str> = crate::schema::INPUT_TABLES.iter().map(|t| t.name).collect();
        eprintln!(
            "warning: `{}` is not a canonical table ({}); its columns are stored as they are, \
             and only --key is checked",
            args.table,
            canonical.join(", ")
        );
    }
    let mut mapping = BTreeMap::new();
    for entry in &args.mapping {
        let Some((source, target)) = entry.split_once('=') else {
            bail!(Error::Config(format!(
                "invalid --map `{entry}`: expected SOURCE=COLUMN, e.g. --map Email=email"
            )));
        };
        mapping.insert(source.trim().to_string(), target.trim().to_string());
    }
    let quote = if args.quote.eq_ignore_ascii_case("none") {
        None
    } else {
        Some(single_byte("--quote", &args.quote)?)
    };
    let options = IngestOptions {
        table: args.table.clone(),
        files: args.files.clone(),
        format: args.format,
        csv: CsvOptions {
            delimiter: single_byte("--delimiter", &args.delimiter)?,
            has_header: !args.no_header,
            quote,
        },
        mapping,
        mode: args.mode,
        key: args.key.clone(),
        max_rejected: args.max_rejected,
    };
    let bar = spinner(format!(
        "ingesting {} file(s) into {}",
        args.files.len(),
        args.table
    ));
    let result = ingest::ingest(warehouse, &options);
    bar.finish_and_clear();
    let summary = result?;
    if json_output {
        print_json(&summary)?;
        return Ok(0);
    }
    let outcome = if summary.committed {
        format!("committed version {}", summary.version)
    } else {
        format!(
            "nothing to commit, table stays at version {}",
            summary.version
        )
    };
    println!(
        "{}: read {} rows = {} accepted + {} rejected; {outcome}",
        summary.table, summary.rows_read, summary.accepted, summary.rejected
    );
    if summary.files.len() > 1 {
        for file in &summary.files {
            println!(
                "  {}: {} read, {} accepted, {} rejected",
                file.file, file.rows_read, file.accepted, file.rejected
            );
        }
    }
    if let (Some(table), Some(version)) = (&summary.rejected_table, summary.rejected_version) {
        println!("rejected rows are in table {table} (version {version}); most frequent reasons:");
        for (reason, count) in &summary.rejection_reasons {
            println!("  {count:>8}  {reason}");
        }
    }
    Ok(0)
}

fn run_pipelines(
    warehouse: &Warehouse,
    config: &Config,
    args: &RunArgs,
    json_output: bool,
) -> anyhow::Result<u8> {
    if args.due {
        return run_due(warehouse, config, args, json_output);
    }
    let pipelines: Vec<Pipeline> = if args.all {
        let all = pipeline::load_all(&config.pipelines_dir)?;
        let ordered = pipeline::dependency_order(&all).map_err(Error::Config)?;
        ordered.into_iter().cloned().collect()
    } else if args.pipelines.is_empty() {
        bail!(Error::Config(
            "name the pipelines to run, or pass --all or --due".into()
        ));
    } else {
        args.pipelines
            .iter()
            .map(|name| pipeline::load_named(&config.pipelines_dir, name))
            .collect::<Result<_, _>>()?
    };
    let options = RunOptions {
        force: args.force,
        dry_run: args.dry_run,
        skip_gates: args.skip_gates,
        lease_timeout: chrono::Duration::minutes(config.lease_timeout_minutes as i64),
        ..Default::default()
    };
    let mut reports = Vec::new();
    let mut failures = 0;
    let mut exit = 0;
    for pipeline in &pipelines {
        let bar = spinner(format!("running {}", pipeline.name));
        let outcome = schedule::run_monitored(warehouse, config, pipeline, &options);
        bar.finish_and_clear();
        match outcome {
            Ok(report) => {
                if !json_output {
                    print_run(&report.manifest, report.dry_run);
                }
                reports.push(json!({ "dry_run": report.dry_run, "manifest": report.manifest }));
            }
            Err(e) => {
                failures += 1;
                exit = exit.max(match &e {
                    Error::Config(_) | Error::Pipeline { .. } => EXIT_USAGE,
                    _ => EXIT_FAILURE,
                });
                eprintln!("error: pipeline {} failed: {e}", pipeline.name);
                let last = manifest::list(warehouse, &pipeline.name)
                    .ok()
                    .and_then(|all| all.into_iter().last())
                    .filter(|m| {
                        m.status == Status::Failed && m.error.as_deref() == Some(&e.to_string())
                    });
                reports.push(
                    json!({ "pipeline": pipeline.name, "error": e.to_string(), "manifest": last }),
                );
            }
        }
    }
    if !args.dry_run {
        write_metrics(warehouse, config);
    }
    if json_output {
        print_json(&reports)?;
    } else if pipelines.len() > 1 {
        println!("{} pipeline(s) run, {failures} failed", pipelines.len());
    }
    Ok(exit)
}

/// Writes the metrics file when one is configured; a failure is logged,
/// never turned into a run failure.
fn write_metrics(warehouse: &Warehouse, config: &Config) {
    if config.metrics_file.is_none() {
        return;
    }
    let written = pipeline::load_all(&config.pipelines_dir).and_then(|pipelines| {
        monitor::write_metrics_file(warehouse, config, &pipelines, chrono::Utc::now())
    });
    if let Err(e) = written {
        tracing::warn!("cannot write the metrics file: {e}");
    }
}

fn parse_now(value: Option<&str>) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    match value {
        None => Ok(chrono::Utc::now()),
        Some(text) => chrono::DateTime::parse_from_rfc3339(text.trim())
            .map(|t| t.with_timezone(&chrono::Utc))
            .map_err(|_| {
                anyhow::Error::new(Error::Config(format!(
                    "invalid --now `{text}`: expected a time like 2026-03-29T01:30:00Z"
                )))
            }),
    }
}

fn run_due(
    warehouse: &Warehouse,
    config: &Config,
    args: &RunArgs,
    json_output: bool,
) -> anyhow::Result<u8> {
    let now = parse_now(args.now.as_deref())?;
    let pipelines = pipeline::load_all(&config.pipelines_dir)?;
    let options = RunOptions {
        force: args.force,
        dry_run: args.dry_run,
        skip_gates: args.skip_gates,
        lease_timeout: chrono::Duration::minutes(config.lease_timeout_minutes as i64),
        ..Default::default()
    };
    let never = std::sync::atomic::AtomicBool::new(false);
    let outcomes = schedule::run_due(warehouse, config, &pipelines, now, &options, &never)?;
    let mut exit = 0;
    let mut reports = Vec::new();
    for (name, outcome) in &outcomes {
        match outcome {
            schedule::Outcome::Ran(report) => {
                if !json_output {
                    print_run(&report.manifest, report.dry_run);
                }
                reports.push(json!({ "pipeline": name, "dry_run": report.dry_run, "manifest": report.manifest }));
            }
            schedule::Outcome::Failed { error, manifest } => {
                exit = EXIT_FAILURE;
                eprintln!("error: pipeline {name} failed: {error}");
                reports.push(
                    json!({ "pipeline": name, "error": error.to_string(), "manifest": manifest }),
                );
            }
            schedule::Outcome::Blocked(manifest) => {
                exit = EXIT_FAILURE;
                let reason = manifest.skipped_reason.clone().unwrap_or_default();
                eprintln!("error: pipeline {name} not run: {reason}");
                reports
                    .push(json!({ "pipeline": name, "held_back": reason, "manifest": manifest }));
            }
        }
    }
    if !args.dry_run {
        if let Err(e) = monitor::check_health(warehouse, config, &pipelines, now) {
            tracing::warn!("cannot check the pipelines' health: {e}");
        }
        write_metrics(warehouse, config);
    }
    if json_output {
        print_json(&reports)?;
    } else if outcomes.is_empty() {
        println!(
            "no pipeline is due at {}",
            now.format("%Y-%m-%d %H:%M:%S UTC")
        );
    } else {
        let counts = schedule::summarize(&outcomes);
        let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
        println!("{} due pipeline(s): {}", outcomes.len(), parts.join(", "));
    }
    Ok(exit)
}

fn status(
    warehouse: &Warehouse,
    config: &Config,
    args: &StatusArgs,
    json_output: bool,
) -> anyhow::Result<u8> {
    let now = parse_now(args.now.as_deref())?;
    let pipelines = pipeline::load_all(&config.pipelines_dir)?;
    // Checking health here sends the staleness alerts a cron-driven setup
    // would otherwise never send.
    let statuses = monitor::check_health(warehouse, config, &pipelines, now)?;
    write_metrics(warehouse, config);
    let unhealthy = statuses
        .iter()
        .filter(|s| s.health != monitor::Health::Ok)
        .count();
    if json_output {
        print_json(&statuses)?;
    } else {
        let when = |t: Option<chrono::DateTime<chrono::Utc>>| {
            t.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
                .unwrap_or_else(|| "never".into())
        };
        println!(
            "{:<20} {:<8} {:<22} {:<30} {:<20} {:<20}",
            "PIPELINE", "HEALTH", "SCHEDULE", "LAST RUN", "LAST SUCCESS", "NEXT DUE"
        );
        for s in &statuses {
            let schedule = match (&s.schedule, &s.time_zone) {
                (Some(e), Some(z)) if z != "UTC" => format!("{e} {z}"),
                (Some(e), _) => e.clone(),
                (None, _) => "-".into(),
            };
            let last = s
                .last_run
                .as_ref()
                .map(|r| format!("{} {}", r.started_at.format("%Y-%m-%d %H:%M"), r.status))
                .unwrap_or_else(|| "never".into());
            let next = if s.schedule.is_some() {
                when(s.next_due_at)
            } else {
                "-".into()
            };
            println!(
                "{:<20} {:<8} {:<22} {:<30} {:<20} {:<20}",
                s.pipeline,
                s.health.name(),
                schedule,
                last,
                when(s.last_success_at),
                next
            );
            if let Some(reason) = &s.reason {
                println!("  {reason}");
            }
        }
    }
    Ok(if unhealthy > 0 { EXIT_FAILURE } else { 0 })
}

fn metrics(warehouse: &Warehouse, config: &Config) -> anyhow::Result<u8> {
    let pipelines = pipeline::load_all(&config.pipelines_dir)?;
    let statuses = monitor::statuses(warehouse, &pipelines, chrono::Utc::now())?;
    print!("{}", monitor::prometheus_text(&statuses));
    Ok(0)
}

fn serve(warehouse: &Warehouse, config: &Config, args: &ScheduleArgs) -> anyhow::Result<u8> {
    // Check the files once up front, so that a broken setup fails at once
    // instead of in the log of a background service.
    pipeline::load_all(&config.pipelines_dir)?;
    let stop = schedule::install_stop_handler();
    let options = RunOptions {
        lease_timeout: chrono::Duration::minutes(config.lease_timeout_minutes as i64),
        ..Default::default()
    };
    schedule::serve(
        warehouse,
        config,
        &options,
        stop,
        Duration::from_secs(args.check_every.max(1)),
    )?;
    Ok(0)
}

fn print_run(manifest: &Manifest, dry_run: bool) {
    let label = if dry_run { "dry run of" } else { "run of" };
    println!(
        "{label} {} ({}) {} in {:.2}s, run id {}",
        manifest.pipeline,
        manifest.kind,
        manifest.status,
        manifest.elapsed_seconds,
        manifest.run_id
    );
    if let Some(reason) = &manifest.skipped_reason {
        println!("  skipped: {reason}");
    }
    for input in &manifest.inputs {
        let scope = match input.incremental_from {
            Some(from) if from == input.version => ", nothing new since the last run".to_string(),
            Some(from) => format!(
                ", read only what versions {} to {} added",
                from + 1,
                input.version
            ),
            None => String::new(),
        };
        println!(
            "  input  {:<22} version {:<4} {}{scope}",
            input.table,
            input.version,
            count(input.rows, "row")
        );
    }
    for output in &manifest.outputs {
        let version = match (output.version, dry_run) {
            (Some(v), _) => format!("committed version {v}"),
            (None, true) if output.rows_added.is_some() => "would commit".to_string(),
            (None, _) => {
                let at = output
                    .version_before
                    .map(|v| format!(" at version {v}"))
                    .unwrap_or_default();
                println!(
                    "  output {:<22} unchanged{at}: {}",
                    output.table,
                    count(output.rows, "row")
                );
                continue;
            }
        };
        println!(
            "  output {:<22} {version}: {} (+{} -{} ~{})",
            output.table,
            count(output.rows, "row"),
            fmt_opt(output.rows_added),
            fmt_opt(output.rows_removed),
            fmt_opt(output.rows_changed)
        );
    }
    if !manifest.metrics.is_empty() {
        let metrics: Vec<String> = manifest
            .metrics
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}={}",
                    match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    }
                )
            })
            .collect();
        println!("  metrics: {}", metrics.join(", "));
    }
}

/// Formats a count with its noun, singular for one: "1 row", "3 rows".
fn count(value: Option<u64>, noun: &str) -> String {
    match value {
        Some(1) => format!("1 {noun}"),
        Some(n) => format!("{n} {noun}s"),
        None => format!("? {noun}s"),
    }
}

fn fmt_opt(value: Option<u64>) -> String {
    value.map(|v| v.to_string()).unwrap_or_else(|| "?".into())
}

fn list_runs(
    warehouse: &Warehouse,
    config: &Config,
    args: &RunsArgs,
    json_output: bool,
) -> anyhow::Result<u8> {
    let names = match &args.pipeline {
        Some(name) => vec![name.clone()],
        None => manifest::pipelines(warehouse)?,
    };
    let mut all = Vec::new();
    for name in names {
        all.extend(manifest::list(warehouse, &name)?);
    }
    if let (Some(name), true) = (&args.pipeline, all.is_empty()) {
        let file = config.pipelines_dir.join(format!("{name}.toml"));
        if !file.exists() {
            bail!(Error::Config(format!(
                "pipeline `{name}` not found: no runs recorded and no file {}",
                file.display()
            )));
        }
    }
    all.sort_by(|a, b| b.run_id.cmp(&a.run_id));
    all.truncate(args.limit);
    if json_output {
        print_json(&all)?;
        return Ok(0);
    }
    if all.is_empty() {
        println!("no runs recorded");
        return Ok(0);
    }
    println!(
        "{:<36}  {:<20}  {:<9}  {:<25}  {:>8}  error",
        "run id", "pipeline", "status", "started at", "seconds"
    );
    for m in all {
        println!(
            "{:<36}  {:<20}  {:<9}  {:<25}  {:>8.2}  {}",
            m.run_id,
            m.pipeline,
            m.status.to_string(),
            m.started_at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            m.elapsed_seconds,
            m.error.unwrap_or_default()
        );
    }
    Ok(0)
}

fn list_tables(warehouse: &Warehouse, json_output: bool) -> anyhow::Result<u8> {
    let mut rows = Vec::new();
    for name in warehouse.list_folders(&warehouse.path("tables"))? {
        let Ok(table) = Table::new(warehouse, &name) else {
            continue;
        };
        let Some(version) = table.latest_version()? else {
            continue;
        };
        let snapshot = table.snapshot(Some(version))?;
        rows.push(json!({
            "table": name,
            "version": version,
            "rows": snapshot.num_rows(),
            "files": snapshot.files.len(),
            "uri": table.uri(),
        }));
    }
    if json_output {
        print_json(&rows)?;
        return Ok(0);
    }
    if rows.is_empty() {
        println!("no tables in {}", warehouse.url());
        return Ok(0);
    }
    println!(
        "{:<28}  {:>7}  {:>12}  {:>5}",
        "table", "version", "rows", "files"
    );
    for row in rows {
        println!(
            "{:<28}  {:>7}  {:>12}  {:>5}",
            row["table"].as_str().unwrap_or(""),
            row["version"].as_u64().unwrap_or(0),
            row["rows"]
                .as_u64()
                .map(|r| r.to_string())
                .unwrap_or_else(|| "?".into()),
            row["files"].as_u64().unwrap_or(0)
        );
    }
    Ok(0)
}

fn existing_table(warehouse: &Warehouse, name: &str) -> anyhow::Result<Table> {
    let table = Table::new(warehouse, name)?;
    if !table.exists()? {
        bail!(Error::TableNotFound(name.to_string()));
    }
    Ok(table)
}

fn history(warehouse: &Warehouse, name: &str, json_output: bool) -> anyhow::Result<u8> {
    let table = existing_table(warehouse, name)?;
    let entries = table.history()?;
    if json_output {
        print_json(&entries)?;
        return Ok(0);
    }
    println!(
        "{:>7}  {:<25}  {:<9}  {:<10}  {:>10}  {:>6}  {:>8}  run id",
        "version", "committed at", "operation", "mode", "rows", "files+", "files-"
    );
    for e in entries.iter().rev() {
        let mode = e
            .parameters
            .get("mode")
            .and_then(Value::as_str)
            .unwrap_or("");
        println!(
            "{:>7}  {:<25}  {:<9}  {:<10}  {:>10}  {:>6}  {:>8}  {}",
            e.version,
            e.timestamp
                .clone()
                .unwrap_or_default()
                .chars()
                .take(25)
                .collect::<String>(),
            e.operation.clone().unwrap_or_default(),
            mode,
            fmt_opt(e.num_rows),
            e.files_added,
            e.files_removed,
            e.run_id.clone().unwrap_or_default()
        );
    }
    Ok(0)
}

fn table_path(warehouse: &Warehouse, args: &PathArgs, json_output: bool) -> anyhow::Result<u8> {
    let table = existing_table(warehouse, &args.table)?;
    let snapshot = table.snapshot(args.version)?;
    table.check_readable(&snapshot)?;
    let uri = table.uri();
    let files: Vec<String> = snapshot
        .files
        .iter()
        .map(|f| format!("{}/{}", uri.trim_end_matches('/'), f.path))
        .collect();
    let is_s3 = uri.starts_with("s3://");
    if json_output {
        print_json(&json!({
            "table": args.table,
            "uri": uri,
            "version": snapshot.version,
            "rows": snapshot.num_rows(),
            "files": files,
            "format": "delta",
        }))?;
        return Ok(0);
    }
    let version = snapshot.version;
    let options = if is_s3 {
        ", storage_options={\"AWS_ENDPOINT_URL\": ..., \"AWS_REGION\": ...}"
    } else {
        ""
    };
    println!("table    {}", args.table);
    println!("uri      {uri}");
    println!(
        "version  {version} ({}, {})",
        count(snapshot.num_rows(), "row"),
        count(Some(files.len() as u64), "file")
    );
    println!();
    println!("polars:    pl.read_delta(\"{uri}\", version={version}{options})");
    println!("deltalake: DeltaTable(\"{uri}\", version={version}{options}).to_pandas()");
    println!("duckdb:    SELECT * FROM delta_scan('{uri}')  -- latest version");
    Ok(0)
}

fn rollback(warehouse: &Warehouse, args: &RollbackArgs, json_output: bool) -> anyhow::Result<u8> {
    let table = existing_table(warehouse, &args.table)?;
    let version = table.restore(args.to, CommitOptions::new("RESTORE"))?;
    if json_output {
        print_json(&json!({ "table": args.table, "restored": args.to, "version": version }))?;
    } else {
        println!(
            "{}: committed version {version}, restoring the content of version {}",
            args.table, args.to
        );
    }
    Ok(0)
}

fn vacuum(warehouse: &Warehouse, args: &VacuumArgs, json_output: bool) -> anyhow::Result<u8> {
    if args.retention_hours.is_nan() || args.retention_hours < 0.0 {
        bail!(Error::Config(format!(
            "invalid --retention-hours {}: expected 0 or more",
            args.retention_hours
        )));
    }
    if args.retention_hours < 1.0 && !args.allow_short_retention {
        bail!(Error::Config(format!(
            "--retention-hours {} is under 1 hour: vacuum would delete the data files of any \
             ingest or run still writing, and of versions a running job reads. Pass \
             --allow-short-retention if nothing else uses the warehouse now",
            args.retention_hours
        )));
    }
    let names = if args.tables.is_empty() {
        warehouse.list_folders(&warehouse.path("tables"))?
    } else {
        args.tables.clone()
    };
    let retention = Duration::from_secs_f64(args.retention_hours * 3600.0);
    let mut reports = Vec::new();
    for name in names {
        let table = existing_table(warehouse, &name)?;
        reports.push(table.vacuum(retention, args.dry_run)?);
    }
    if json_output {
        print_json(&reports)?;
        return Ok(0);
    }
    let verb = if args.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    for report in reports {
        println!(
            "{}: {verb} {} files ({} bytes); oldest readable version {}",
            report.table,
            report.files_deleted.len(),
            report.bytes_deleted,
            fmt_opt(report.oldest_readable_version)
        );
        for file in &report.files_deleted {
            println!("  {file}");
        }
    }
    Ok(0)
}

fn validate(warehouse: &Warehouse, config: &Config, json_output: bool) -> anyhow::Result<u8> {
    let pipelines = match pipeline::load_all(&config.pipelines_dir) {
        Ok(pipelines) => pipelines,
        Err(Error::Config(message)) if json_output => {
            let problems: Vec<&str> = message.lines().collect();
            print_json(&json!({ "pipelines": [], "problems": problems }))?;
            return Ok(EXIT_USAGE);
        }
        Err(e) => return Err(e.into()),
    };
    let produced: Vec<&str> = pipelines
        .iter()
        .flat_map(|p| p.outputs.values().map(String::as_str))
        .collect();
    let mut problems = Vec::new();
    for p in &pipelines {
        for (role, table) in &p.inputs {
            let optional = p.kind.inputs.iter().any(|r| r.name == role && r.optional);
            let known = optional
                || crate::schema::input_table(table).is_some()
                || produced.contains(&table.as_str())
                || Table::new(warehouse, table)?.exists()?;
            if !known {
                problems.push(format!(
                    "{}: input `{role}` names table `{table}`, which is not a canonical table, not \
                     written by any pipeline, and not in the warehouse",
                    p.path.display()
                ));
            }
        }
    }
    if json_output {
        let names: Vec<&str> = pipelines.iter().map(|p| p.name.as_str()).collect();
        print_json(
            &json!({ "pipelines": names, "problems": problems, "config": config.source.as_deref().map(Path::display).map(|d| d.to_string()) }),
        )?;
    } else {
        for p in &pipelines {
            let prefix = p.path.display().to_string();
            if !problems.iter().any(|problem| problem.starts_with(&prefix)) {
                println!("ok  {} ({}) {}", p.name, p.kind.name, p.path.display());
            }
        }
        for problem in &problems {
            eprintln!("error: {problem}");
        }
    }
    if problems.is_empty() {
        Ok(0)
    } else {
        Ok(EXIT_USAGE)
    }
}

fn parse_date(option: &str, value: &str) -> anyhow::Result<chrono::NaiveDate> {
    chrono::NaiveDate::parse_from_str(value.trim(), "%Y-%m-%d").map_err(|_| {
        anyhow::Error::new(Error::Config(format!(
            "invalid {option} `{value}`: expected a date like 1997-09-30"
        )))
    })
}

fn clv_holdout(
    warehouse: &Warehouse,
    config: &Config,
    args: &HoldoutArgs,
    json_output: bool,
) -> anyhow::Result<u8> {
    use crate::jobs::clv::{self, Params, TimeUnit};
    let until = parse_date("--until", &args.until)?;
    let end = args
        .end
        .as_deref()
        .map(|e| parse_date("--end", e))
        .transpose()?;
    let (table, unit) = match &args.pipeline {
        Some(name) => {
            let pipeline = pipeline::load_named(&config.pipelines_dir, name)?;
            if pipeline.kind.name != "clv" {
                bail!(Error::Config(format!(
                    "pipeline `{name}` is of kind `{}`; --pipeline needs a clv pipeline",
                    pipeline.kind.name
                )));
            }
            let params: Params = serde_json::from_value(pipeline.params.clone())?;
            (pipeline.inputs["orders"].clone(), params.time_unit)
        }
        None => (args.table.clone(), TimeUnit::Weeks),
    };
    let table = existing_table(warehouse, &table)?;
    let Some(snapshot) = table.latest_snapshot()? else {
        bail!(Error::TableNotFound(table.name().to_string()));
    };
    let report = clv::holdout(table.scan(&snapshot)?, until, end, unit)?;
    if json_output {
        print_json(&report)?;
        return Ok(0);
    }
    let bg = &report.bgnbd;
    println!(
        "BG/NBD fitted on {} customers through {}: r = {:.4}, alpha = {:.4}, a = {:.4}, b = {:.4}, \
         log-likelihood {:.1}",
        report.customers,
        report.calibration_end,
        bg["r"].as_f64().unwrap_or(f64::NAN),
        bg["alpha"].as_f64().unwrap_or(f64::NAN),
        bg["a"].as_f64().unwrap_or(f64::NAN),
        bg["b"].as_f64().unwrap_or(f64::NAN),
        bg["log_likelihood"].as_f64().unwrap_or(f64::NAN),
    );
    println!(
        "holdout: after {} through {} ({:.2} {})",
        report.calibration_end, report.holdout_end, report.holdout_length, report.time_unit
    );
    println!(
        "{:>17}  {:>9}  {:>11}  {:>14}",
        "repeat purchases", "customers", "actual mean", "predicted mean"
    );
    for group in &report.groups {
        println!(
            "{:>17}  {:>9}  {:>11.3}  {:>14.3}",
            group.frequency, group.customers, group.actual_mean, group.predicted_mean
        );
    }
    println!(
        "total purchases in the holdout: actual {:.0}, predicted {:.1}",
        report.actual_total, report.predicted_total
    );
    Ok(0)
}

fn explain_suppression(
    warehouse: &Warehouse,
    config: &Config,
    args: &ExplainSuppressionArgs,
    json_output: bool,
) -> anyhow::Result<u8> {
    use crate::jobs::suppression::{with_list_columns, Params};
    use polars::prelude::*;
    let pipeline = pipeline::load_named(&config.pipelines_dir, &args.pipeline)?;
    if pipeline.kind.name != "suppression" {
        bail!(Error::Config(format!(
            "pipeline `{}` is of kind `{}`; --pipeline needs a suppression pipeline",
            pipeline.name, pipeline.kind.name
        )));
    }
    let params: Params = serde_json::from_value(pipeline.params.clone())?;
    let Some(key) = params.normalization.key_of(&args.email) else {
        bail!(Error::Config("give a non-empty email address".into()));
    };
    let find = |table: &str| -> anyhow::Result<Option<DataFrame>> {
        let table = Table::new(warehouse, table)?;
        let Some(snapshot) = table.latest_snapshot()? else {
            return Ok(None);
        };
        let frame = table
            .scan(&snapshot)?
            .filter(col("email_normalized").eq(lit(key.clone())))
            .collect()?;
        Ok(Some(frame))
    };
    let list = find(&pipeline.outputs["list"])?
        .map(|f| with_list_columns(f).collect())
        .transpose()?;
    let held = find(&pipeline.outputs["pending_review"])?;
    let row = list.as_ref().filter(|f| f.height() > 0);
    let held_row = held.as_ref().filter(|f| f.height() > 0);
    let text = |frame: &DataFrame, name: &str| -> Option<String> {
        let value = frame.column(name).ok()?.get(0).ok()?;
        match value {
            AnyValue::Null => None,
            AnyValue::String(s) => Some(s.to_string()),
            AnyValue::StringOwned(s) => Some(s.to_string()),
            AnyValue::Datetime(t, _, _) | AnyValue::DatetimeOwned(t, _, _) => {
                chrono::DateTime::from_timestamp_micros(t).map(|t| t.to_rfc3339())
            }
            other => Some(other.to_string()),
        }
    };
    let source = row.or(held_row);
    let event_ids: Vec<String> = source
        .and_then(|f| f.column("event_ids").ok())
        .and_then(|c| c.list().ok().and_then(|l| l.get_as_series(0)))
        .and_then(|s| {
            s.str()
                .ok()
                .map(|s| s.iter().flatten().map(str::to_string).collect())
        })
        .unwrap_or_default();
    let mut events = Vec::new();
    if !event_ids.is_empty() {
        let table = Table::new(warehouse, &pipeline.inputs["events"])?;
        if let Some(snapshot) = table.latest_snapshot()? {
            let found = table
                .scan(&snapshot)?
                .filter(col("event_id").is_in(
                    lit(Series::new("ids".into(), event_ids.clone())).implode(false),
                    false,
                ))
                .sort(["occurred_at", "event_id"], SortMultipleOptions::default())
                .collect()?;
            for i in 0..found.height() {
                let one = found.slice(i as i64, 1);
                events.push(json!({
                    "event_id": text(&one, "event_id"),
                    "occurred_at": text(&one, "occurred_at"),
                    "event_type": text(&one, "event_type"),
                    "bounce_type": text(&one, "bounce_type"),
                    "reason": text(&one, "reason"),
                    "campaign_id": text(&one, "campaign_id"),
                    "email": text(&one, "email"),
                }));
            }
        }
    }
    let state = match (row, held_row) {
        (Some(r), _) if text(r, "expired_at").is_some() => "expired",
        (Some(_), _) => "active",
        (None, Some(_)) => "held",
        (None, None) => "not_suppressed",
    };
    let fields = [
        "email",
        "reason",
        "rule",
        "source",
        "first_suppressed_at",
        "last_event_at",
        "event_count",
        "expires_at",
        "expired_at",
        "held_reason",
        "run_id",
    ];
    let mut details = serde_json::Map::new();
    if let Some(frame) = source {
        for name in fields {
            if let Some(value) = text(frame, name) {
                details.insert(name.to_string(), Value::from(value));
            }
        }
    }
    if json_output {
        print_json(&json!({
            "email_normalized": key,
            "state": state,
            "entry": details,
            "event_ids": event_ids,
            "events": events,
            "normalization": params.normalization.describe(),
        }))?;
        return Ok(0);
    }
    match state {
        "not_suppressed" => {
            println!(
                "{key} is not on the suppression list of pipeline `{}`",
                pipeline.name
            );
            return Ok(0);
        }
        "active" => println!("{key} is suppressed"),
        "expired" => println!("{key} was suppressed; the entry has expired"),
        _ => println!("{key} is held for review, not yet suppressed"),
    }
    for (name, value) in &details {
        println!("  {name:<20} {}", value.as_str().unwrap_or_default());
    }
    if events.is_empty() {
        println!("  no triggering events (the rule needs none)");
    } else {
        println!("  triggering events:");
        for event in &events {
            let field = |name: &str| event[name].as_str().unwrap_or("").to_string();
            println!(
                "    {:<12} {:<28} {} {} {} {}",
                field("event_id"),
                field("occurred_at"),
                field("event_type"),
                field("bounce_type"),
                field("reason"),
                field("campaign_id")
            );
        }
    }
    Ok(0)
}

fn explain_score(
    warehouse: &Warehouse,
    config: &Config,
    args: &ExplainScoreArgs,
    json_output: bool,
) -> anyhow::Result<u8> {
    use crate::jobs::scoring::Params;
    use polars::prelude::*;
    let pipeline = pipeline::load_named(&config.pipelines_dir, &args.pipeline)?;
    if pipeline.kind.name != "scoring" {
        bail!(Error::Config(format!(
            "pipeline `{}` is of kind `{}`; --pipeline needs a scoring pipeline",
            pipeline.name, pipeline.kind.name
        )));
    }
    let params: Params = serde_json::from_value(pipeline.params.clone())?;
    let table = existing_table(warehouse, &pipeline.outputs["scores"])?;
    let Some(snapshot) = table.latest_snapshot()? else {
        bail!(Error::TableNotFound(table.name().to_string()));
    };
    let row = table
        .scan(&snapshot)?
        .filter(col("contact_id").eq(lit(args.contact_id.clone())))
        .collect()?;
    if row.height() == 0 {
        bail!(Error::Data(format!(
            "contact `{}` has no score in `{}`; is the id right, and has the pipeline run since \
             the contact was loaded?",
            args.contact_id,
            table.name()
        )));
    }
    let value = |name: &str| -> Value {
        match row.column(name).ok().and_then(|c| c.get(0).ok()) {
            Some(AnyValue::Float64(v)) => json!(v),
            Some(AnyValue::Boolean(v)) => json!(v),
            Some(AnyValue::String(v)) => json!(v),
            Some(AnyValue::StringOwned(v)) => json!(v.to_string()),
            Some(AnyValue::Null) | None => Value::Null,
            Some(other) => json!(other.to_string()),
        }
    };
    let mut groups = Vec::new();
    for (name, group) in &params.groups {
        groups.push(json!({
            "group": name,
            "points": value(&format!("engagement_{name}")),
            "source": group.source,
            "rules": group.points,
            "decay": group.decay,
            "cap": group.cap,
        }));
    }
    let mut fit = Vec::new();
    for rule in &params.fit {
        fit.push(json!({
            "rule": rule.name,
            "when": rule.rule,
            "points": value(&format!("fit_{}", rule.name)),
        }));
    }
    let report = json!({
        "contact_id": args.contact_id,
        "score": value("score"),
        "engagement_score": value("engagement_score"),
        "fit_score": value("fit_score"),
        "grade": value("grade"),
        "mql": value("mql"),
        "previous_score": value("previous_score"),
        "score_change": value("score_change"),
        "as_of": value("as_of"),
        "engagement": groups,
        "fit": fit,
        "engagement_cap": params.engagement_cap,
        "fit_cap": params.fit_cap,
    });
    if json_output {
        print_json(&report)?;
        return Ok(0);
    }
    let number = |v: &Value| v.as_f64().map(|n| format!("{n:.2}")).unwrap_or("-".into());
    println!(
        "contact {}: score {} (engagement {} + fit {}), grade {}, MQL {}",
        args.contact_id,
        number(&report["score"]),
        number(&report["engagement_score"]),
        number(&report["fit_score"]),
        report["grade"].as_str().unwrap_or("-"),
        report["mql"]
    );
    println!(
        "  as of {}; previous score {}, change {}",
        report["as_of"].as_str().unwrap_or("-"),
        number(&report["previous_score"]),
        number(&report["score_change"])
    );
    for group in &groups {
        println!(
            "  engagement {:<16} {:>8}   cap {}, decay {}",
            group["group"].as_str().unwrap_or_default(),
            number(&group["points"]),
            group["cap"]
                .as_f64()
                .map(|c| c.to_string())
                .unwrap_or("none".into()),
            group["decay"]
        );
    }
    for rule in &fit {
        println!(
            "  fit        {:<16} {:>8}   when {}",
            rule["rule"].as_str().unwrap_or_default(),
            number(&rule["points"]),
            rule["when"].as_str().unwrap_or_default()
        );
    }
    if let Some(cap) = params.engagement_cap {
        println!("  engagement is capped at {cap}");
    }
    if let Some(cap) = params.fit_cap {
        println!("  fit is capped at {cap}");
    }
    Ok(0)
}

fn dedupe_pipeline(config: &Config, name: &str) -> anyhow::Result<Pipeline> {
    let pipeline = pipeline::load_named(&config.pipelines_dir, name)?;
    if pipeline.kind.name != "dedupe" {
        bail!(Error::Config(format!(
            "pipeline `{}` is of kind `{}`; --pipeline needs a dedupe pipeline",
            pipeline.name, pipeline.kind.name
        )));
    }
    Ok(pipeline)
}

fn latest_frame(warehouse: &Warehouse, name: &str) -> anyhow::Result<polars::prelude::DataFrame> {
    let table = existing_table(warehouse, name)?;
    let Some(snapshot) = table.latest_snapshot()? else {
        bail!(Error::TableNotFound(name.to_string()));
    };
    Ok(table.scan(&snapshot)?.collect()?)
}

fn strings(frame: &polars::prelude::DataFrame, name: &str) -> anyhow::Result<Vec<Option<String>>> {
    Ok(crate::jobs::string_column(frame, name)?)
}

fn explain_merge(
    warehouse: &Warehouse,
    config: &Config,
    args: &ExplainMergeArgs,
    json_output: bool,
) -> anyhow::Result<u8> {
    let pipeline = dedupe_pipeline(config, &args.pipeline)?;
    let map = latest_frame(warehouse, &pipeline.outputs["map"])?;
    let contact = strings(&map, "contact_id")?;
    let Some(row) = contact
        .iter()
        .position(|c| c.as_deref() == Some(args.contact_id.as_str()))
    else {
        bail!(Error::Data(format!(
            "contact `{}` is not in `{}`; has the dedupe pipeline run since it was loaded?",
            args.contact_id, pipeline.outputs["map"]
        )));
    };
    let field =
        |name: &str| -> anyhow::Result<Option<String>> { Ok(strings(&map, name)?[row].clone()) };
    let cluster = field("cluster_id")?;
    let clusters = strings(&map, "cluster_id")?;
    let statuses = strings(&map, "status")?;
    let mut members = Vec::new();
    for (i, c) in clusters.iter().enumerate() {
        if c == &cluster {
            members.push(json!({ "contact_id": contact[i], "status": statuses[i] }));
        }
    }
    let report = json!({
        "contact_id": args.contact_id,
        "status": field("status")?,
        "survivor_id": field("survivor_id")?,
        "cluster_id": cluster,
        "match_probability": field("match_probability")?,
        "linked_to": field("linked_to")?,
        "linked_by": field("linked_by")?,
        "cluster": members,
    });
    if json_output {
        print_json(&report)?;
        return Ok(0);
    }
    let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
    match report["status"].as_str() {
        Some("single") => println!("{} was not merged: no record matched it", args.contact_id),
        Some("held") => println!(
            "{} is in a cluster held for review (see the run's held_for_review), not merged",
            args.contact_id
        ),
        Some("survivor") => println!("{} is the survivor of its cluster", args.contact_id),
        Some("unmerged") => println!(
            "{} was unmerged by hand; {} keeps it apart from its former cluster",
            args.contact_id, pipeline.inputs["do_not_merge"]
        ),
        _ => println!(
            "{} was merged into {}",
            args.contact_id,
            text(&report["survivor_id"])
        ),
    }
    if report["linked_to"].is_string() {
        println!(
            "  linked to {} with match probability {}",
            text(&report["linked_to"]),
            text(&report["match_probability"])
        );
        println!("  comparison: {}", text(&report["linked_by"]));
    }
    println!("  cluster {}:", text(&report["cluster_id"]));
    for member in &members {
        println!(
            "    {} ({})",
            text(&member["contact_id"]),
            text(&member["status"])
        );
    }
    Ok(0)
}

fn unmerge(
    warehouse: &Warehouse,
    config: &Config,
    args: &UnmergeArgs,
    json_output: bool,
) -> anyhow::Result<u8> {
    use crate::delta::WriteMode;
    use polars::prelude::*;
    let pipeline = dedupe_pipeline(config, &args.pipeline)?;
    let map = latest_frame(warehouse, &pipeline.outputs["map"])?;
    let contacts = strings(&map, "contact_id")?;
    let clusters = strings(&map, "cluster_id")?;
    let statuses = strings(&map, "status")?;
    let wanted = args.cluster_or_contact.as_str();
    let cluster = clusters
        .iter()
        .zip(&contacts)
        .find(|(c, id)| c.as_deref() == Some(wanted) || id.as_deref() == Some(wanted))
        .and_then(|(c, _)| c.clone())
        .ok_or_else(|| {
            Error::Data(format!(
                "`{wanted}` is neither a cluster nor a contact of `{}`",
                pipeline.outputs["map"]
            ))
        })?;
    let members: Vec<String> = (0..contacts.len())
        .filter(|i| clusters[*i].as_deref() == Some(cluster.as_str()))
        .filter(|i| matches!(statuses[*i].as_deref(), Some("merged") | Some("survivor")))
        .filter_map(|i| contacts[i].clone())
        .collect();
    if members.len() < 2 {
        let unmerged = (0..contacts.len()).any(|i| {
            clusters[i].as_deref() == Some(cluster.as_str())
                && statuses[i].as_deref() == Some("unmerged")
        });
        bail!(Error::Data(if unmerged {
            format!("`{wanted}` is already unmerged; its records are apart")
        } else {
            format!("cluster `{cluster}` merged nothing; there is nothing to unmerge")
        }));
    }
    // The do-not-merge pairs first: a crash after this still keeps the
    // records apart on the next run.
    let mut a = Vec::new();
    let mut b = Vec::new();
    for (i, x) in members.iter().enumerate() {
        for y in &members[i + 1..] {
            a.push(x.clone());
            b.push(y.clone());
        }
    }
    let pairs = a.len();
    let now = chrono::Utc::now().to_rfc3339();
    let frame = DataFrame::new(
        pairs,
        vec![
            Column::new("contact_id_a".into(), a),
            Column::new("contact_id_b".into(), b),
            Column::new("reason".into(), vec![args.reason.clone(); pairs]),
            Column::new("added_at".into(), vec![now; pairs]),
        ],
    )?;
    let options = || {
        CommitOptions::new("UNMERGE")
            .with_parameter("cluster", cluster.clone())
            .with_parameter("pipeline", pipeline.name.clone())
    };
    let do_not_merge = Table::new(warehouse, &pipeline.inputs["do_not_merge"])?;
    let dnm_version = do_not_merge.append_retrying(frame, options())?;

    // The records come back from the ledger, each its own golden record.
    let ledger = latest_frame(warehouse, &pipeline.outputs["ledger"])?;
    let restored = ledger
        .clone()
        .lazy()
        .filter(col("cluster_id").eq(lit(cluster.clone())))
        .collect()?;
    let deduped_table = Table::new(warehouse, &pipeline.outputs["deduped"])?;
    let deduped = latest_frame(warehouse, &pipeline.outputs["deduped"])?;
    let schema = deduped.schema().clone();
    let mut exprs = Vec::new();
    for (name, dtype) in schema.iter() {
        let expr = match name.as_str() {
            "cluster_id" => col("contact_id").alias("cluster_id"),
            "merged_ids" => concat_list([col("contact_id")])?.alias("merged_ids"),
            n if n.ends_with("_alternates") => {
                lit(Series::new_empty("x".into(), &DataType::String))
                    .implode(false)
                    .first()
                    .alias(n)
            }
            n if restored.schema().contains(n) => col(n),
            n => lit(NULL).alias(n),
        };
        exprs.push(expr.cast(dtype.clone()));
    }
    let restored_rows = restored.clone().lazy().select(exprs).collect()?;
    let kept = deduped
        .lazy()
        .filter(col("cluster_id").neq(lit(cluster.clone())))
        .collect()?;
    let new_deduped = kept
        .vstack(&restored_rows)?
        .lazy()
        .sort(["contact_id"], SortMultipleOptions::default())
        .collect()?;
    let deduped_version = deduped_table.write(new_deduped, WriteMode::Overwrite, options())?;
    let map_table = Table::new(warehouse, &pipeline.outputs["map"])?;
    let new_map = map
        .lazy()
        .with_columns([
            when(col("cluster_id").eq(lit(cluster.clone())))
                .then(col("contact_id"))
                .otherwise(col("survivor_id"))
                .alias("survivor_id"),
            when(col("cluster_id").eq(lit(cluster.clone())))
                .then(lit("unmerged"))
                .otherwise(col("status"))
                .alias("status"),
        ])
        .with_columns(["match_probability", "linked_to", "linked_by"].map(|name| {
            when(col("status").eq(lit("unmerged")))
                .then(lit(NULL))
                .otherwise(col(name))
                .alias(name)
        }))
        .with_column(
            when(col("status").eq(lit("unmerged")))
                .then(col("contact_id"))
                .otherwise(col("cluster_id"))
                .alias("cluster_id"),
        )
        .collect()?;
    let map_version = map_table.write(new_map, WriteMode::Overwrite, options())?;
    if json_output {
        print_json(&json!({
            "cluster": cluster,
            "restored": members,
            "do_not_merge_pairs": pairs,
            "versions": {
                pipeline.inputs["do_not_merge"].clone(): dnm_version,
                pipeline.outputs["deduped"].clone(): deduped_version,
                pipeline.outputs["map"].clone(): map_version,
            },
        }))?;
    } else {
        println!(
            "unmerged cluster {cluster}: restored {} records ({}); {pairs} pair(s) added to {} \
             so the next run keeps them apart",
            members.len(),
            members.join(", "),
            pipeline.inputs["do_not_merge"]
        );
    }
    Ok(0)
}
