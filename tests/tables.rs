//! Delta tables on a real object store: versions, time travel, appends,
//! restore, vacuum and racing writers, on the local filesystem and on the
//! S3 test server.

mod common;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use nightshift::delta::table::CommitOptions;
use nightshift::delta::{Table, WriteMode};
use nightshift::warehouse::Warehouse;
use nightshift::Error;
use polars::prelude::*;

fn frame(ids: &[i64]) -> DataFrame {
    df!("id" => ids, "name" => ids.iter().map(|i| format!("n{i}")).collect::<Vec<_>>()).unwrap()
}

fn ids(df: &DataFrame) -> Vec<i64> {
    df.column("id")
        .unwrap()
        .i64()
        .unwrap()
        .iter()
        .flatten()
        .collect()
}

fn write(table: &Table, ids_: &[i64], mode: WriteMode) -> u64 {
    table
        .write(frame(ids_), mode, CommitOptions::new("WRITE"))
        .unwrap()
}

/// Exercises versions, time travel and appends on one warehouse.
fn versions_and_time_travel(warehouse: &Warehouse) {
    let table = Table::new(warehouse, "people").unwrap();
    assert!(!table.exists().unwrap());
    assert_eq!(write(&table, &[1, 2], WriteMode::Overwrite), 0);
    assert_eq!(write(&table, &[3], WriteMode::Append), 1);
    assert_eq!(write(&table, &[9], WriteMode::Overwrite), 2);

    assert_eq!(ids(&table.read(Some(0)).unwrap()), vec![1, 2]);
    assert_eq!(ids(&table.read(Some(1)).unwrap()), vec![1, 2, 3]);
    assert_eq!(ids(&table.read(None).unwrap()), vec![9]);
    assert_eq!(table.snapshot(Some(1)).unwrap().num_rows(), Some(3));

    let added = table
        .added_between(0, 1)
        .unwrap()
        .expect("append-only range");
    assert_eq!(added.len(), 1);
    let schema = table.snapshot(None).unwrap().schema;
    assert_eq!(
        ids(&table
            .scan_files(&schema, &added)
            .unwrap()
            .collect()
            .unwrap()),
        vec![3]
    );
    assert!(
        table.added_between(0, 2).unwrap().is_none(),
        "an overwrite is not an append"
    );

    match table.snapshot(Some(7)) {
        Err(Error::VersionNotFound {
            version: 7,
            latest: 2,
            ..
        }) => {}
        other => panic!("expected VersionNotFound, got {other:?}"),
    }

    let restored = table.restore(1, CommitOptions::new("RESTORE")).unwrap();
    assert_eq!(restored, 3);
    assert_eq!(ids(&table.read(None).unwrap()), vec![1, 2, 3]);
    assert_eq!(
        ids(&table.read(Some(2)).unwrap()),
        vec![9],
        "restore deletes nothing"
    );

    let history = table.history().unwrap();
    assert_eq!(history.len(), 4);
    assert_eq!(history[3].operation.as_deref(), Some("RESTORE"));
    assert_eq!(history[3].num_rows, Some(3));
}

#[test]
fn local_versions_and_time_travel() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::open(&format!("file://{}", dir.path().display())).unwrap();
    versions_and_time_travel(&warehouse);
    let log = dir
        .path()
        .join("tables/people/_delta_log/00000000000000000000.json");
    let text = std::fs::read_to_string(log).unwrap();
    assert!(text.contains("\"minReaderVersion\":1"), "{text}");
    assert!(text.contains("\"minWriterVersion\":2"), "{text}");
}

#[test]
fn memory_versions_and_time_travel() {
    let warehouse = Warehouse::open("memory://").unwrap();
    versions_and_time_travel(&warehouse);
}

#[test]
fn s3_versions_and_time_travel() {
    if common::s3_endpoint().is_none() {
        return;
    }
    let warehouse = Warehouse::open(&common::s3_warehouse("versions")).unwrap();
    versions_and_time_travel(&warehouse);
}

/// Races `writers` threads to commit version 1 of one table.
fn race_commits(warehouse: &Warehouse, writers: usize) {
    let table = Table::new(warehouse, "raced").unwrap();
    write(&table, &[0], WriteMode::Overwrite);
    let base = table.snapshot(None).unwrap();
    let barrier = Arc::new(Barrier::new(writers));
    let handles: Vec<_> = (0..writers)
        .map(|i| {
            let table = table.clone();
            let base = base.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let staged = table
                    .stage(frame(&[i as i64 + 100]), WriteMode::Append, Some(&base))
                    .unwrap();
                barrier.wait();
                staged.commit(CommitOptions::new("WRITE"))
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let winners = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(winners, 1, "exactly one writer wins: {results:?}");
    for result in &results {
        if let Err(e) = result {
            assert!(matches!(e, Error::CommitConflict { version: 1, .. }), "{e}");
        }
    }
    let rows = ids(&table.read(None).unwrap());
    assert_eq!(
        rows.len(),
        2,
        "the winner's row and the first one: {rows:?}"
    );
    assert_eq!(table.latest_version().unwrap(), Some(1));
}

#[test]
fn local_racing_writers_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::open(dir.path().to_str().unwrap()).unwrap();
    for _ in 0..3 {
        let table_dir = dir.path().join("tables/raced");
        let _ = std::fs::remove_dir_all(&table_dir);
        race_commits(&warehouse, 8);
    }
}

#[test]
fn s3_racing_writers_one_wins() {
    if common::s3_endpoint().is_none() {
        return;
    }
    for _ in 0..3 {
        let warehouse = Warehouse::open(&common::s3_warehouse("race")).unwrap();
        race_commits(&warehouse, 8);
    }
}

#[test]
fn vacuum_keeps_window_and_removes_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::open(dir.path().to_str().unwrap()).unwrap();
    let table = Table::new(&warehouse, "kept").unwrap();
    write(&table, &[1], WriteMode::Overwrite);
    write(&table, &[2], WriteMode::Overwrite);
    // An orphan: data files staged but never committed.
    let base = table.snapshot(None).unwrap();
    let staged = table
        .stage(frame(&[3]), WriteMode::Overwrite, Some(&base))
        .unwrap();
    drop(staged);

    let report = table.vacuum(Duration::from_secs(3600), false).unwrap();
    assert!(
        report.files_deleted.is_empty(),
        "all recent: {:?}",
        report.files_deleted
    );
    assert_eq!(ids(&table.read(Some(0)).unwrap()), vec![1]);

    let report = table.vacuum(Duration::ZERO, true).unwrap();
    assert_eq!(
        report.files_deleted.len(),
        2,
        "old version's file and the orphan"
    );
    let report = table.vacuum(Duration::ZERO, false).unwrap();
    assert_eq!(report.files_deleted.len(), 2);
    assert_eq!(report.oldest_readable_version, Some(1));
    assert_eq!(ids(&table.read(None).unwrap()), vec![2]);
    let parquet_files = std::fs::read_dir(dir.path().join("tables/kept"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "parquet")
        })
        .count();
    assert_eq!(parquet_files, 1);
    let err = table.restore(0, CommitOptions::new("RESTORE")).unwrap_err();
    assert!(err.to_string().contains("removed by vacuum"), "{err}");
}

#[test]
fn append_with_new_column_extends_schema() {
    let warehouse = Warehouse::open("memory://").unwrap();
    let table = Table::new(&warehouse, "wide").unwrap();
    write(&table, &[1], WriteMode::Overwrite);
    let extra = df!("id" => [2i64], "name" => ["b"], "score" => [1.5f64]).unwrap();
    table
        .write(extra, WriteMode::Append, CommitOptions::new("WRITE"))
        .unwrap();
    let df = table.read(None).unwrap();
    assert_eq!(df.width(), 3);
    let score = df.column("score").unwrap().f64().unwrap();
    assert_eq!(score.get(0), None);
    assert_eq!(score.get(1), Some(1.5));
}

#[test]
fn invalid_table_name_rejected() {
    let warehouse = Warehouse::open("memory://").unwrap();
    let err = Table::new(&warehouse, "../escape").unwrap_err();
    assert!(err.to_string().contains("invalid table name"), "{err}");
}

#[test]
fn revert_keeps_later_appends() {
    let warehouse = Warehouse::open("memory://").unwrap();
    let table = Table::new(&warehouse, "undo").unwrap();
    write(&table, &[1], WriteMode::Overwrite);
    let ours = write(&table, &[2], WriteMode::Append);
    write(&table, &[3], WriteMode::Append);
    let version = table.revert(ours, CommitOptions::new("RESTORE")).unwrap();
    assert_eq!(version, 3);
    let mut rows = ids(&table.read(None).unwrap());
    rows.sort();
    assert_eq!(rows, vec![1, 3], "only the reverted append is gone");

    // An overwrite with later versions on top cannot be undone safely.
    let overwrite = write(&table, &[9], WriteMode::Overwrite);
    write(&table, &[10], WriteMode::Append);
    let err = table
        .revert(overwrite, CommitOptions::new("RESTORE"))
        .unwrap_err();
    assert!(err.to_string().contains("cannot undo version 4"), "{err}");
    // The latest version reverts to the one before it.
    let latest = table.latest_version().unwrap().unwrap();
    table.revert(latest, CommitOptions::new("RESTORE")).unwrap();
    assert_eq!(ids(&table.read(None).unwrap()), vec![9]);
}
