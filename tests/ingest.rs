//! Ingest through the binary: formats, bad rows, bad files, modes.

mod common;

use common::{stderr, Project, EVENTS_HEADER};
use serde_json::Value;

const GOOD: &str = "e1,c1,a@x.com,bounce,hard,550,k1,2026-11-01T10:00:00Z\n\
                    e2,c2,b@x.com,open,,,k1,2026-11-01 11:00:00\n";

#[test]
fn csv_bad_rows_are_quarantined() {
    let project = Project::new();
    let text = format!(
        "{EVENTS_HEADER}{GOOD}\
         e3,c3,c@x.com,open,,,k1,not-a-date\n\
         ,c4,d@x.com,open,,,k1,2026-11-01T10:00:00Z\n\
         e1,c5,e@x.com,open,,,k1,2026-11-02T10:00:00Z\n\
         e6,c6,f@x.com,open\n"
    );
    let file = project.write("events.csv", &text);
    let summary = project.json(&["ingest", "email_events", &file]);
    assert_eq!(summary["rows_read"], 6);
    assert_eq!(summary["accepted"], 2);
    assert_eq!(summary["rejected"], 4);
    assert_eq!(summary["rejected_table"], "email_events_rejected");

    let rejected = project.json(&["path", "email_events_rejected"]);
    assert_eq!(rejected["rows"], 4);
    let events = project.json(&["path", "email_events"]);
    assert_eq!(events["rows"], 2);

    let uri = rejected["uri"].as_str().unwrap();
    let df = polars::prelude::LazyFrame::scan_parquet_files(
        rejected["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| polars::prelude::PlRefPath::new(f.as_str().unwrap()))
            .collect(),
        Default::default(),
    )
    .unwrap()
    .collect()
    .unwrap();
    assert!(uri.ends_with("email_events_rejected"));
    let reasons: Vec<String> = df
        .column("reason")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .flatten()
        .map(str::to_string)
        .collect();
    let lines: Vec<i64> = df
        .column("line")
        .unwrap()
        .i64()
        .unwrap()
        .iter()
        .flatten()
        .collect();
    let joined = reasons.join("\n");
    assert!(
        joined.contains("invalid timestamp `not-a-date` in column occurred_at"),
        "{joined}"
    );
    assert!(
        joined.contains("missing required field event_id"),
        "{joined}"
    );
    assert!(joined.contains("duplicate key `e1`"), "{joined}");
    assert!(joined.contains("line has 4 fields, expected 8"), "{joined}");
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(sorted, vec![4, 5, 6, 7]);
    let records = df.column("record").unwrap().str().unwrap();
    assert!(records.iter().flatten().any(|r| r.contains("not-a-date")));
}

#[test]
fn max_rejected_fails_without_commit() {
    let project = Project::new();
    let text = format!("{EVENTS_HEADER}{GOOD}e3,c3,c@x.com,open,,,k1,never\n");
    let file = project.write("events.csv", &text);
    let out = project.run(&["ingest", "email_events", &file, "--max-rejected", "10%"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("rejected 1 of 3 rows"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("nothing was committed"));
    let tables = project.json(&["tables"]);
    assert_eq!(tables.as_array().unwrap().len(), 0, "{tables}");

    let out = project.run(&["ingest", "email_events", &file, "--max-rejected", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn empty_truncated_and_wrong_format_files_named() {
    let project = Project::new();
    let cases = [
        ("empty.csv", String::new(), "is empty"),
        (
            "cut.csv",
            format!("{EVENTS_HEADER}{GOOD}e9,c9,z@x.com,op"),
            "truncated: its last line 4",
        ),
        (
            "fake.parquet",
            "not parquet at all".to_string(),
            "is not a Parquet file",
        ),
        (
            "quote.csv",
            format!("{EVENTS_HEADER}q1,c1,\"a@x.com,open,,,k1,2026-11-01\n{GOOD}"),
            "quote.csv line 2: a quoted field opened on this line is never closed",
        ),
        (
            "cut.ndjson",
            "{\"event_id\":\"e1\"}\n{\"event_id\":\"e2\",\"ema".to_string(),
            "truncated",
        ),
    ];
    for (name, text, expected) in cases {
        let file = project.write(name, &text);
        let out = project.run(&["ingest", "email_events", &file]);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", stderr(&out));
        let message = stderr(&out);
        assert!(message.contains(name), "{name}: {message}");
        assert!(message.contains(expected), "{name}: {message}");
    }
    // A Parquet file cut short loses its footer.
    let good = project.write("good.csv", &format!("{EVENTS_HEADER}{GOOD}"));
    let out = project.run(&["ingest", "email_events", &good]);
    assert!(out.status.success(), "{}", stderr(&out));
    let path = project.json(&["path", "email_events"]);
    let data = std::fs::read(path["files"][0].as_str().unwrap()).unwrap();
    let cut = project.path().join("cut.parquet");
    std::fs::write(&cut, &data[..data.len() / 2]).unwrap();
    let out = project.run(&["ingest", "email_events", cut.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cut.parquet is truncated"),
        "{}",
        stderr(&out)
    );
    let binary_csv = project.path().join("binary.csv");
    std::fs::write(
        &binary_csv,
        [0xff, 0xfe, 0x00, 0x41, b'\n', 0xc3, 0x28, b'\n'],
    )
    .unwrap();
    let out = project.run(&["ingest", "email_events", binary_csv.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("binary.csv line 1 is not valid UTF-8"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn mapping_delimiter_and_missing_column() {
    let project = Project::new();
    let text = "Id;Mail;Type;When\nx1;A@x.com;unsubscribe;2026-11-03\n";
    let file = project.write("vendor.csv", text);
    let out = project.run(&["ingest", "email_events", &file, "--delimiter", ";"]);
    assert_eq!(out.status.code(), Some(1));
    let message = stderr(&out);
    assert!(message.contains("has no column `event_id`"), "{message}");
    assert!(message.contains("--map"), "{message}");
    let summary = project.json(&[
        "ingest",
        "email_events",
        &file,
        "--delimiter",
        ";",
        "--map",
        "Id=event_id",
        "--map",
        "Mail=email",
        "--map",
        "Type=event_type",
        "--map",
        "When=occurred_at",
    ]);
    assert_eq!(summary["accepted"], 1);
    let out = project.run(&[
        "ingest",
        "email_events",
        &file,
        "--map",
        "Nope=email",
        "--delimiter",
        ";",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not have: Nope."),
        "{}",
        stderr(&out)
    );
}

#[test]
fn ndjson_and_parquet_round_trip() {
    let project = Project::new();
    let ndjson = "{\"event_id\":\"n1\",\"email\":\"a@x.com\",\"event_type\":\"complaint\",\"occurred_at\":\"2026-11-01T00:00:00Z\"}\n\
                  [1,2]\n\
                  {\"event_id\":\"n2\",\"email\":\"b@x.com\",\"event_type\":\"open\",\"occurred_at\":\"2026-11-01T00:00:00Z\",\"extra\":5}\n";
    let file = project.write("events.ndjson", ndjson);
    let summary = project.json(&["ingest", "email_events", &file]);
    assert_eq!(summary["rows_read"], 3);
    assert_eq!(summary["accepted"], 2);
    assert_eq!(summary["rejected"], 1);
    // Re-ingest the table's own Parquet file into another table.
    let path = project.json(&["path", "email_events"]);
    let parquet = path["files"][0].as_str().unwrap().to_string();
    let summary = project.json(&["ingest", "events_copy", &parquet, "--key", "event_id"]);
    assert_eq!(summary["accepted"], 2);
    let copy = project.json(&["path", "events_copy"]);
    assert_eq!(copy["rows"], 2);
}

#[test]
fn upsert_and_overwrite_modes() {
    let project = Project::new();
    let first = project.write("c1.csv", "contact_id,email\nc1,old@x.com\nc2,two@x.com\n");
    let second = project.write("c2.csv", "contact_id,email\nc1,new@x.com\nc3,three@x.com\n");
    project.json(&["ingest", "contacts", &first]);
    let summary = project.json(&["ingest", "contacts", &second, "--mode", "upsert"]);
    assert_eq!(summary["version"], 1);
    let path = project.json(&["path", "contacts"]);
    assert_eq!(path["rows"], 3);
    let history = project.json(&["history", "contacts"]);
    assert_eq!(history[1]["operation"], "MERGE");
    let summary = project.json(&["ingest", "contacts", &first, "--mode", "overwrite"]);
    assert_eq!(summary["version"], 2);
    assert_eq!(project.json(&["path", "contacts"])["rows"], 2);
    assert_eq!(
        project.json(&["path", "contacts", "--version", "1"])["rows"],
        3
    );
    let out = project.run(&["ingest", "contacts", &first, "--mode", "sideways"]);
    assert_eq!(out.status.code(), Some(2));
    let v: Value = project.json(&["history", "contacts"]);
    assert_eq!(v.as_array().unwrap().len(), 3);
}

#[test]
fn reingested_file_is_rejected_not_duplicated() {
    let project = Project::new();
    let file = project.write("events.csv", &format!("{EVENTS_HEADER}{GOOD}"));
    let first = project.json(&["ingest", "email_events", &file]);
    assert_eq!(first["accepted"], 2);
    let again = project.json(&["ingest", "email_events", &file]);
    assert_eq!(again["rows_read"], 2);
    assert_eq!(again["accepted"], 0);
    assert_eq!(again["rejected"], 2);
    assert_eq!(again["committed"], false);
    assert_eq!(again["version"], 0);
    assert_eq!(project.json(&["path", "email_events"])["rows"], 2);
    let reasons = again["rejection_reasons"].to_string();
    assert!(
        reasons.contains("already in table `email_events`"),
        "{reasons}"
    );
    // Upsert replaces instead.
    let upsert = project.json(&["ingest", "email_events", &file, "--mode", "upsert"]);
    assert_eq!(upsert["accepted"], 2);
    assert_eq!(project.json(&["path", "email_events"])["rows"], 2);
}

#[test]
fn vocabulary_and_bounce_type_checked() {
    let project = Project::new();
    let text = format!(
        "{EVENTS_HEADER}\
         v1,c1,a@x.com, Bounce ,HARD,550,k1,2026-11-01T10:00:00Z\n\
         v2,c2,b@x.com,hardbounce,,,k1,2026-11-01T10:00:00Z\n\
         v3,c3,c@x.com,bounce,,,k1,2026-11-01T10:00:00Z\n"
    );
    let file = project.write("events.csv", &text);
    let summary = project.json(&["ingest", "email_events", &file]);
    assert_eq!(summary["accepted"], 1);
    assert_eq!(summary["rejected"], 2);
    let reasons = summary["rejection_reasons"].to_string();
    assert!(
        reasons.contains("invalid event_type `…`; expected one of: sent"),
        "{reasons}"
    );
    assert!(
        reasons.contains("missing bounce_type for a bounce event"),
        "{reasons}"
    );
    let warehouse =
        nightshift::warehouse::Warehouse::open(project.warehouse().to_str().unwrap()).unwrap();
    let events = nightshift::delta::Table::new(&warehouse, "email_events")
        .unwrap()
        .read(None)
        .unwrap();
    let event_type = events
        .column("event_type")
        .unwrap()
        .str()
        .unwrap()
        .get(0)
        .map(str::to_string);
    assert_eq!(
        event_type.as_deref(),
        Some("bounce"),
        "trimmed and lower-cased"
    );
}

#[test]
fn numeric_timestamp_column_is_an_error() {
    let project = Project::new();
    let path = project.path().join("numbers.parquet");
    let mut df = polars::prelude::df!(
        "event_id" => ["n1"],
        "event_type" => ["open"],
        "occurred_at" => [1_700_000_000i64]
    )
    .unwrap();
    let file = std::fs::File::create(&path).unwrap();
    polars::prelude::ParquetWriter::new(file)
        .finish(&mut df)
        .unwrap();
    let out = project.run(&["ingest", "email_events", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let message = stderr(&out);
    assert!(message.contains("numbers.parquet"), "{message}");
    assert!(
        message.contains("`occurred_at` is a timestamp"),
        "{message}"
    );
}

#[test]
fn folder_and_wrong_delimiter_explained() {
    let project = Project::new();
    std::fs::create_dir_all(project.path().join("in")).unwrap();
    let out = project.run(&["ingest", "email_events", "in"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("in is a folder"), "{}", stderr(&out));
    let file = project.write(
        "semi.csv",
        "event_id;event_type;occurred_at\ne1;open;2026-11-01\n",
    );
    let out = project.run(&["ingest", "email_events", &file]);
    let message = stderr(&out);
    assert!(
        message.contains("has no column `event_id`, `event_type`, `occurred_at`"),
        "{message}"
    );
    assert!(message.contains("pass --delimiter ';'"), "{message}");
}
