//! The synthetic data generator: deterministic files and realistic rates.

mod common;

use common::{stderr, Project};
use polars::prelude::*;

fn read_all(dir: &std::path::Path) -> DataFrame {
    let mut frames = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    for path in paths {
        let file = std::fs::File::open(path).unwrap();
        frames.push(ParquetReader::new(file).finish().unwrap().lazy());
    }
    concat(frames, UnionArgs::default())
        .unwrap()
        .collect()
        .unwrap()
}

#[test]
fn generate_is_deterministic_with_realistic_rates() {
    let project = Project::new();
    let contacts = "30000";
    for out in ["a", "b"] {
        let result = project.run(&[
            "generate",
            "--seed",
            "7",
            "--contacts",
            contacts,
            "--out",
            out,
        ]);
        assert!(result.status.success(), "{}", stderr(&result));
    }
    for table in ["contacts", "email_events", "activities", "orders"] {
        let part = "part-00000.parquet";
        let a = std::fs::read(project.path().join("a").join(table).join(part)).unwrap();
        let b = std::fs::read(project.path().join("b").join(table).join(part)).unwrap();
        assert!(
            a == b,
            "{table}/{part} differs between two runs with one seed"
        );
    }

    let contacts_df = read_all(&project.path().join("a/contacts"));
    assert_eq!(contacts_df.height(), 30_000);
    let events = read_all(&project.path().join("a/email_events"));
    let per_contact = events.height() as f64 / 30_000.0;
    assert!(
        (7.0..13.0).contains(&per_contact),
        "events per contact: {per_contact}"
    );

    let share = |filter: Expr| -> f64 {
        let addresses = events
            .clone()
            .lazy()
            .filter(filter)
            .select([col("email").n_unique()])
            .collect()
            .unwrap();
        let n = addresses
            .column("email")
            .unwrap()
            .get(0)
            .unwrap()
            .extract::<u64>()
            .unwrap();
        n as f64 / 30_000.0
    };
    let hard = share(col("bounce_type").eq(lit("hard")));
    let complaints = share(col("event_type").eq(lit("complaint")));
    let unsubscribes = share(col("event_type").eq(lit("unsubscribe")));
    assert!((0.012..0.03).contains(&hard), "hard bounce share {hard}");
    assert!(
        (0.0002..0.003).contains(&complaints),
        "complaint share {complaints}"
    );
    assert!(
        (0.002..0.01).contains(&unsubscribes),
        "unsubscribe share {unsubscribes}"
    );

    let orders = read_all(&project.path().join("a/orders"));
    let buyers = orders.column("contact_id").unwrap().n_unique().unwrap() as f64 / 30_000.0;
    assert!((0.15..0.25).contains(&buyers), "buyer share {buyers}");

    // The generated files load through ingest without a rejected row.
    let file = project.path().join("a/email_events/part-00000.parquet");
    let summary = project.json(&["ingest", "email_events", file.to_str().unwrap()]);
    assert_eq!(summary["rejected"], 0, "{summary}");
}
