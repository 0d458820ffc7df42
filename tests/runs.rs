//! Pipeline runs through the binary: the suppression job end to end,
//! skips, dry runs, gates, leases, crashes and compensation.

mod common;

use common::{stderr, stdout, Project, EVENTS_HEADER};
use nightshift::delta::Table;
use nightshift::warehouse::Warehouse;
use polars::prelude::*;
use serde_json::Value;

const NIGHT_ONE: &str = "\
e1,c1, A@X.com ,bounce,hard,550 user unknown,k1,2026-11-01T10:00:00Z
e2,c1,a@x.com,bounce,hard,550 user unknown,k2,2026-11-03T10:00:00Z
e3,c2,b@x.com,complaint,,,k1,2026-11-02T09:00:00Z
e4,c3,c@x.com,unsubscribe,,,k1,2026-11-02T08:00:00Z
e5,c4,d@x.com,bounce,soft,mailbox full,k1,2026-11-02T08:00:00Z
e6,c5,e@x.com,bounce,block,spam,k1,2026-11-02T08:00:00Z
e7,c6,f@x.com,open,,,k1,2026-11-02T08:00:00Z
e8,c7,,complaint,,,k1,2026-11-02T08:00:00Z
";

/// Night two: a late hard bounce for a@x.com (before the first run's last
/// event), a new unsubscribe, and a repeat complaint.
const NIGHT_TWO: &str = "\
e9,c1,a@x.com,bounce,hard,550 user unknown,k3,2026-11-02T10:00:00Z
e10,c8,G@x.com,unsubscribe,,,k3,2026-11-04T10:00:00Z
e11,c2,b@x.com,complaint,,,k3,2026-11-05T10:00:00Z
";

fn warehouse(project: &Project) -> Warehouse {
    Warehouse::open(project.warehouse().to_str().unwrap()).unwrap()
}

fn read(project: &Project, table: &str, version: Option<u64>) -> DataFrame {
    let table = Table::new(&warehouse(project), table).unwrap();
    table.read(version).unwrap()
}

fn row(df: &DataFrame, key: &str) -> Vec<AnyValue<'static>> {
    let mask = df
        .column("email_normalized")
        .unwrap()
        .str()
        .unwrap()
        .equal(key);
    let found = df.filter(&mask).unwrap();
    assert_eq!(found.height(), 1, "one row for {key} in {df}");
    found
        .get_row(0)
        .unwrap()
        .0
        .into_iter()
        .map(|v| v.into_static())
        .collect()
}

fn value(df: &DataFrame, key: &str, column: &str) -> AnyValue<'static> {
    let index = df.get_column_index(column).unwrap();
    row(df, key)[index].clone()
}

fn micros(text: &str) -> i64 {
    nightshift::ingest::parse_timestamp(text).unwrap()
}

fn ingest_events(project: &Project, name: &str, rows: &str) {
    let file = project.write(name, &format!("{EVENTS_HEADER}{rows}"));
    let out = project.run(&["ingest", "email_events", &file]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn run_json(project: &Project, args: &[&str]) -> Value {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    project.json(&all)
}

#[test]
fn suppression_first_and_incremental_runs() {
    let project = Project::new();
    ingest_events(&project, "night1.csv", NIGHT_ONE);
    let report = run_json(&project, &["suppression"]);
    let manifest = &report[0]["manifest"];
    assert_eq!(manifest["status"], "succeeded");
    assert_eq!(manifest["kind"], "suppression");
    assert_eq!(manifest["trigger"], "manual");
    assert_eq!(manifest["metrics"]["triggering_events"], 5);
    assert_eq!(manifest["metrics"]["events_without_email"], 1);
    assert_eq!(manifest["metrics"]["addresses_added"], 3);
    assert_eq!(manifest["inputs"][0]["version"], 0);
    assert_eq!(manifest["outputs"][0]["table"], "suppression_changes");
    assert_eq!(manifest["outputs"][1]["table"], "suppression_list");
    assert_eq!(manifest["outputs"][1]["version"], 0);
    assert_eq!(manifest["outputs"][1]["rows"], 3);
    assert!(manifest["params_hash"].as_str().unwrap().len() == 64);

    let list = read(&project, "suppression_list", None);
    assert_eq!(list.height(), 3);
    let keys: Vec<&str> = list
        .column("email_normalized")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .flatten()
        .collect();
    assert_eq!(keys, vec!["a@x.com", "b@x.com", "c@x.com"], "sorted by key");
    assert_eq!(
        value(&list, "a@x.com", "email"),
        AnyValue::StringOwned(" A@X.com ".into()),
        "stored address kept"
    );
    assert_eq!(
        value(&list, "a@x.com", "reason"),
        AnyValue::StringOwned("hard_bounce".into())
    );
    assert_eq!(
        value(&list, "a@x.com", "event_id"),
        AnyValue::StringOwned("e1".into())
    );
    assert_eq!(value(&list, "a@x.com", "event_count"), AnyValue::Int64(2));
    assert_eq!(
        value(&list, "b@x.com", "reason"),
        AnyValue::StringOwned("complaint".into())
    );
    assert_eq!(
        value(&list, "c@x.com", "reason"),
        AnyValue::StringOwned("unsubscribe".into())
    );
    let export = project.warehouse().join("exports/suppression_list.csv");
    let csv = std::fs::read_to_string(export).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");

    // Unchanged inputs: skipped; forced: runs, but commits nothing new.
    let report = run_json(&project, &["suppression"]);
    assert_eq!(report[0]["manifest"]["status"], "skipped");
    let report = run_json(&project, &["suppression", "--force"]);
    assert_eq!(report[0]["manifest"]["status"], "succeeded");
    assert_eq!(report[0]["manifest"]["outputs"][1]["version"], Value::Null);
    assert_eq!(read(&project, "suppression_list", None).height(), 3);

    ingest_events(&project, "night2.csv", NIGHT_TWO);
    let report = run_json(&project, &["suppression"]);
    let manifest = &report[0]["manifest"];
    assert_eq!(manifest["status"], "succeeded");
    assert_eq!(manifest["inputs"][0]["incremental_from"], 0);
    assert_eq!(manifest["metrics"]["events_read"], 3);
    assert_eq!(manifest["metrics"]["addresses_added"], 1);
    assert_eq!(manifest["metrics"]["addresses_updated"], 2);
    assert_eq!(manifest["outputs"][1]["rows_added"], 1);
    assert_eq!(manifest["outputs"][1]["rows_changed"], 2);

    let list = read(&project, "suppression_list", None);
    assert_eq!(list.height(), 4);
    assert_eq!(
        value(&list, "a@x.com", "event_count"),
        AnyValue::Int64(3),
        "late event counted"
    );
    let ts = |df: &DataFrame, key: &str, column: &str| match value(df, key, column) {
        AnyValue::Datetime(v, _, _) | AnyValue::DatetimeOwned(v, _, _) => v,
        other => panic!("not a timestamp: {other:?}"),
    };
    assert_eq!(
        ts(&list, "a@x.com", "first_suppressed_at"),
        micros("2026-11-01T10:00:00Z")
    );
    assert_eq!(
        ts(&list, "a@x.com", "last_event_at"),
        micros("2026-11-03T10:00:00Z"),
        "late event does not move it back"
    );
    assert_eq!(
        ts(&list, "b@x.com", "last_event_at"),
        micros("2026-11-05T10:00:00Z")
    );
    assert_eq!(value(&list, "b@x.com", "event_count"), AnyValue::Int64(2));
    assert_eq!(
        value(&list, "g@x.com", "reason"),
        AnyValue::StringOwned("unsubscribe".into())
    );
    let changes = read(&project, "suppression_changes", None);
    assert_eq!(changes.height(), 1);
    // Time travel: version 0 is the first night's list.
    assert_eq!(read(&project, "suppression_list", Some(0)).height(), 3);

    let runs = project.json(&["runs", "suppression"]);
    let statuses: Vec<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        vec!["succeeded", "succeeded", "skipped", "succeeded"],
        "newest first"
    );
}

#[test]
fn dry_run_commits_nothing() {
    let project = Project::new();
    ingest_events(&project, "night1.csv", NIGHT_ONE);
    run_json(&project, &["suppression"]);
    ingest_events(&project, "night2.csv", NIGHT_TWO);
    let report = run_json(&project, &["suppression", "--dry-run"]);
    assert_eq!(report[0]["dry_run"], true);
    let list = &report[0]["manifest"]["outputs"][1];
    assert_eq!(list["rows_added"], 1);
    assert_eq!(list["rows_changed"], 2);
    assert_eq!(list["rows_removed"], 0);
    assert_eq!(list["version"], Value::Null);
    let history = project.json(&["history", "suppression_list"]);
    assert_eq!(history.as_array().unwrap().len(), 1);
    let runs = project.json(&["runs"]);
    assert_eq!(
        runs.as_array().unwrap().len(),
        1,
        "a dry run writes no manifest"
    );
    let out = project.run(&["run", "suppression", "--dry-run"]);
    assert!(stdout(&out).contains("would commit"), "{}", stdout(&out));
}

#[test]
fn failed_gate_commits_nothing() {
    let project = Project::new();
    ingest_events(&project, "night1.csv", NIGHT_ONE);
    project.write(
        "pipelines/strict.toml",
        "kind = \"suppression\"\n[outputs]\nlist = \"strict_list\"\nchanges = \"strict_changes\"\n\
         [[gates]]\noutput = \"list\"\nmin_rows = 100\n",
    );
    let out = project.run(&["run", "strict"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(
            "gate min_rows on output `list` failed: expected at least 100 rows, got 3 rows"
        ),
        "{}",
        stderr(&out)
    );
    let tables = project.json(&["tables"]);
    let names: Vec<&str> = tables
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["table"].as_str().unwrap())
        .collect();
    assert!(!names.contains(&"strict_list"), "{names:?}");
    let runs = project.json(&["runs", "strict"]);
    assert_eq!(runs[0]["status"], "failed");
    assert!(runs[0]["error"].as_str().unwrap().contains("min_rows"));
}

#[test]
fn held_lease_blocks_second_run() {
    let project = Project::new();
    ingest_events(&project, "night1.csv", NIGHT_ONE);
    let lease = project
        .warehouse()
        .join("leases/suppression/00000000000000000000.json");
    std::fs::create_dir_all(lease.parent().unwrap()).unwrap();
    std::fs::write(
        &lease,
        r#"{"pipeline":"suppression","run_id":"other","epoch":0,"acquired_at":"2026-01-01T00:00:00Z","expires_at":"2999-01-01T00:00:00Z"}"#,
    )
    .unwrap();
    let out = project.run(&["run", "suppression"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("already running (run other"),
        "{}",
        stderr(&out)
    );
    // An expired lease belongs to a crashed run and is taken over.
    std::fs::write(
        &lease,
        r#"{"pipeline":"suppression","run_id":"other","epoch":0,"acquired_at":"2026-01-01T00:00:00Z","expires_at":"2026-01-01T01:00:00Z"}"#,
    )
    .unwrap();
    let out = project.run(&["run", "suppression"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let next = project
        .warehouse()
        .join("leases/suppression/00000000000000000001.json");
    let record: Value = serde_json::from_slice(&std::fs::read(next).unwrap()).unwrap();
    assert_eq!(record["released"], true, "the lease is released: {record}");
    assert!(!lease.exists(), "the expired epoch is cleaned up");
}

#[test]
fn crash_before_commit_leaves_tables_and_vacuum_cleans() {
    let project = Project::new();
    ingest_events(&project, "night1.csv", NIGHT_ONE);
    run_json(&project, &["suppression"]);
    ingest_events(&project, "night2.csv", NIGHT_TWO);
    let out = project.run_with_env(
        &["run", "suppression"],
        &[("NIGHTSHIFT_FAILPOINT", "abort_before_commit")],
    );
    assert!(!out.status.success());
    assert_eq!(
        project
            .json(&["history", "suppression_list"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(read(&project, "suppression_list", None).height(), 3);

    let out = project.run(&["vacuum", "--retention-hours", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--allow-short-retention"),
        "{}",
        stderr(&out)
    );
    let report = project.json(&[
        "vacuum",
        "--retention-hours",
        "0",
        "--allow-short-retention",
    ]);
    let deleted: usize = report
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["files_deleted"].as_array().unwrap().len())
        .sum();
    assert_eq!(deleted, 2, "the orphans of both outputs: {report}");
    assert_eq!(read(&project, "suppression_list", None).height(), 3);
    // The crashed run's lease stays until it expires.
    let out = project.run(&["run", "suppression"]);
    assert!(stderr(&out).contains("already running"), "{}", stderr(&out));
    std::fs::remove_dir_all(project.warehouse().join("leases/suppression")).unwrap();
    let report = run_json(&project, &["suppression"]);
    assert_eq!(report[0]["manifest"]["status"], "succeeded");
    assert_eq!(read(&project, "suppression_list", None).height(), 4);
}

#[test]
fn failed_second_commit_is_compensated() {
    let project = Project::new();
    ingest_events(&project, "night1.csv", NIGHT_ONE);
    run_json(&project, &["suppression"]);
    ingest_events(&project, "night2.csv", NIGHT_TWO);
    let out = project.run_with_env(
        &["run", "suppression"],
        &[("NIGHTSHIFT_FAILPOINT", "fail_after_first_commit")],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let runs = project.json(&["runs", "suppression"]);
    let failed = &runs[0];
    assert_eq!(failed["status"], "failed");
    // The list commits first; the failure hits before the changes commit.
    let list = &failed["outputs"][1];
    assert_eq!(list["table"], "suppression_list");
    assert_eq!(list["version"], 1);
    assert_eq!(list["compensated_by"], 2);
    assert_eq!(failed["outputs"][0]["version"], Value::Null);
    assert_eq!(
        read(&project, "suppression_list", None).height(),
        3,
        "restored to the first night's content"
    );
    assert_eq!(read(&project, "suppression_list", Some(1)).height(), 4);
    assert_eq!(
        project
            .json(&["history", "suppression_changes"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // The next run still reads night two as new.
    let report = run_json(&project, &["suppression"]);
    assert_eq!(report[0]["manifest"]["metrics"]["addresses_added"], 1);
}

#[test]
fn invalid_pipeline_exits_with_usage_code() {
    let project = Project::new();
    project.write(
        "pipelines/broken.toml",
        "kind = \"suppression\"\nschedulee = \"daily\"\n",
    );
    let out = project.run(&["validate"]);
    assert_eq!(out.status.code(), Some(2));
    let message = stderr(&out);
    assert!(message.contains("broken.toml"), "{message}");
    assert!(message.contains("schedulee"), "{message}");
    let out = project.run(&["run", "nothere"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("pipeline `nothere` not found"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn suppression_on_s3() {
    if common::s3_endpoint().is_none() {
        return;
    }
    let project = Project::new();
    let url = common::s3_warehouse("run");
    let file = project.write("night1.csv", &format!("{EVENTS_HEADER}{NIGHT_ONE}"));
    let out = project.run(&["--warehouse", &url, "ingest", "email_events", &file]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = project.json(&["--warehouse", &url, "run", "suppression"]);
    assert_eq!(report[0]["manifest"]["status"], "succeeded");
    assert_eq!(report[0]["manifest"]["outputs"][1]["rows"], 3);
    let runs = project.json(&["--warehouse", &url, "runs"]);
    assert_eq!(runs.as_array().unwrap().len(), 1);
    let path = project.json(&["--warehouse", &url, "path", "suppression_list"]);
    assert!(path["uri"]
        .as_str()
        .unwrap()
        .starts_with("s3://nightshift-test/"));
    let warehouse = Warehouse::open(&url).unwrap();
    let list = Table::new(&warehouse, "suppression_list")
        .unwrap()
        .read(None)
        .unwrap();
    assert_eq!(list.height(), 3);
}

#[test]
fn rollback_then_run_reapplies_events() {
    let project = Project::new();
    ingest_events(&project, "night1.csv", NIGHT_ONE);
    run_json(&project, &["suppression"]);
    ingest_events(&project, "night2.csv", NIGHT_TWO);
    run_json(&project, &["suppression"]);
    assert_eq!(read(&project, "suppression_list", None).height(), 4);

    let out = project.run(&["rollback", "suppression_list", "--to", "0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(read(&project, "suppression_list", None).height(), 3);
    // The rolled-back list is no longer what the last run left, so the run
    // is real and reads every event again.
    let report = run_json(&project, &["suppression"]);
    let manifest = &report[0]["manifest"];
    assert_eq!(manifest["status"], "succeeded");
    assert_eq!(manifest["metrics"]["read_mode"], "full");
    assert_eq!(manifest["inputs"][0]["incremental_from"], Value::Null);
    let list = read(&project, "suppression_list", None);
    assert_eq!(list.height(), 4, "g@x.com is back");
    assert_eq!(
        value(&list, "a@x.com", "event_count"),
        AnyValue::Int64(3),
        "recounted, not doubled"
    );
    assert_eq!(value(&list, "b@x.com", "event_count"), AnyValue::Int64(2));
}

#[test]
fn ingest_into_output_table_rejected() {
    let project = Project::new();
    let file = project.write("list.csv", "email_normalized,email\na@x.com,a@x.com\n");
    let out = project.run(&["ingest", "suppression_list", &file]);
    assert_eq!(out.status.code(), Some(2));
    let message = stderr(&out);
    assert!(
        message.contains("output of pipeline `suppression`"),
        "{message}"
    );
    assert!(message.contains("rollback"), "{message}");
}

#[test]
fn shared_output_tables_fail_validation() {
    let project = Project::new();
    project.write("pipelines/copy.toml", "kind = \"suppression\"\n");
    let out = project.run(&["validate"]);
    assert_eq!(out.status.code(), Some(2));
    let message = stderr(&out);
    assert!(
        message.contains(
            "table `suppression_list` is an output of several pipelines (copy, suppression)"
        ),
        "{message}"
    );
    let out = project.run(&["run", "--all"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn closed_output_pipe_is_quiet() {
    let project = Project::new();
    ingest_events(&project, "night1.csv", NIGHT_ONE);
    for _ in 0..3 {
        run_json(&project, &["suppression", "--force"]);
    }
    let script = format!(
        "'{}' runs --json 2>err.txt | head -c 1 >/dev/null; cat err.txt",
        env!("CARGO_BIN_EXE_nightshift")
    );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(project.path())
        .output()
        .unwrap();
    let message = stdout(&out);
    assert!(!message.contains("panicked"), "{message}");
    assert!(!message.contains("Broken pipe"), "{message}");
}

#[test]
fn changed_export_path_is_written() {
    let project = Project::new();
    ingest_events(&project, "night1.csv", NIGHT_ONE);
    run_json(&project, &["suppression"]);
    let pipeline = project.path().join("pipelines/suppression.toml");
    let text = std::fs::read_to_string(&pipeline).unwrap();
    std::fs::write(
        &pipeline,
        text.replace("exports/suppression_list.csv", "exports/new.csv"),
    )
    .unwrap();
    let report = run_json(&project, &["suppression"]);
    assert_eq!(report[0]["manifest"]["status"], "succeeded");
    let csv = std::fs::read_to_string(project.warehouse().join("exports/new.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    assert!(csv.contains("2026-11-01T10:00:00.000000Z"), "{csv}");
}

/// Runs the standard pipeline on the sample data in `data/`, as the
/// quickstart does, and checks the figures `data/README.md` gives.
fn sample_data_runs(project: &Project, warehouse_args: &[&str]) {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let command = |args: &[&str]| {
        let mut all = warehouse_args.to_vec();
        all.extend_from_slice(args);
        project.json(&all)
    };
    for (table, file) in [
        ("contacts", "contacts.csv"),
        ("orders", "orders.csv"),
        ("email_events", "email_events.csv"),
    ] {
        let path = data.join(file);
        let summary = command(&["ingest", table, path.to_str().unwrap()]);
        assert_eq!(summary["rejected"], 0, "{table}: {summary}");
    }
    let first = command(&["run", "--all"]);
    let manifest = &first[0]["manifest"];
    assert_eq!(manifest["status"], "succeeded");
    assert_eq!(manifest["outputs"][1]["rows"], 88);
    assert_eq!(manifest["metrics"]["added_by_reason"]["hard_bounce"], 66);
    assert_eq!(manifest["metrics"]["added_by_reason"]["complaint"], 4);
    assert_eq!(manifest["metrics"]["added_by_reason"]["unsubscribe"], 18);
    assert_eq!(manifest["metrics"]["events_without_email"], 2);

    let day2 = data.join("email_events_day2.csv");
    command(&["ingest", "email_events", day2.to_str().unwrap()]);
    let second = command(&["run", "--all"]);
    let manifest = &second[0]["manifest"];
    assert_eq!(manifest["outputs"][1]["rows"], 96);
    assert_eq!(manifest["outputs"][0]["rows"], 8, "suppression_changes");
    assert_eq!(manifest["metrics"]["events_without_email"], 1);
    let events = manifest["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["role"] == "events")
        .unwrap();
    assert_eq!(events["incremental_from"], 0);
    // 5,000 contacts: 479 without an address, 112 on the list (counted
    // independently from the CSV files).
    assert_eq!(manifest["metrics"]["sendable_contacts"], 4409);
    let runs = command(&["runs"]);
    assert_eq!(runs.as_array().unwrap().len(), 2);
}

#[test]
fn sample_data_local() {
    let project = Project::new();
    sample_data_runs(&project, &[]);
    let list = read(&project, "suppression_list", None);
    let total: i64 = list
        .column("event_count")
        .unwrap()
        .i64()
        .unwrap()
        .sum()
        .unwrap();
    assert_eq!(total, 165);
}

#[test]
fn sample_data_on_s3() {
    if common::s3_endpoint().is_none() {
        return;
    }
    let project = Project::new();
    let url = common::s3_warehouse("sample");
    sample_data_runs(&project, &["--warehouse", &url]);
    let warehouse = Warehouse::open(&url).unwrap();
    let list = Table::new(&warehouse, "suppression_list")
        .unwrap()
        .read(None)
        .unwrap();
    let total: i64 = list
        .column("event_count")
        .unwrap()
        .i64()
        .unwrap()
        .sum()
        .unwrap();
    assert_eq!(total, 165);
}
