//! The `clv` job kind end to end on the CDNOW sample (data/orders.csv):
//! the published BG/NBD and Gamma-Gamma figures, the output table, the
//! holdout comparison and the edge cases.

mod common;

use common::{stderr, stdout, strings, Project};
use nightshift::delta::Table;
use nightshift::warehouse::Warehouse;
use polars::prelude::*;
use serde_json::Value;

fn orders_csv() -> String {
    format!("{}/data/orders.csv", env!("CARGO_MANIFEST_DIR"))
}

fn project_with_orders() -> Project {
    let project = Project::new();
    let out = project.run(&["ingest", "orders", &orders_csv()]);
    assert!(out.status.success(), "{}", stderr(&out));
    project
}

fn clv_pipeline(project: &Project, params: &str) {
    project.write(
        "pipelines/clv.toml",
        &format!("kind = \"clv\"\n[params]\n{params}\n"),
    );
}

fn run_clv(project: &Project) -> Value {
    let report = project.json(&["run", "clv"]);
    assert_eq!(report[0]["manifest"]["status"], "succeeded", "{report}");
    report[0]["manifest"].clone()
}

fn read_values(project: &Project) -> DataFrame {
    let warehouse = Warehouse::open(project.warehouse().to_str().unwrap()).unwrap();
    Table::new(&warehouse, "clv").unwrap().read(None).unwrap()
}

fn round(value: &Value, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value.as_f64().unwrap() * scale).round() / scale
}

#[test]
fn cdnow_calibration_reproduces_the_published_parameters() {
    let project = project_with_orders();
    clv_pipeline(&project, "as_of = \"1997-09-30\"\nhorizon = 39");
    let manifest = run_clv(&project);
    let metrics = &manifest["metrics"];
    assert_eq!(metrics["customers"], 2357);
    assert_eq!(metrics["repeat_customers"], 946);
    let bg = &metrics["bgnbd"];
    assert_eq!(round(&bg["r"], 3), 0.243, "{bg}");
    assert_eq!(round(&bg["alpha"], 3), 4.414, "{bg}");
    assert_eq!(round(&bg["a"], 3), 0.793, "{bg}");
    assert_eq!(round(&bg["b"], 3), 2.426, "{bg}");
    assert_eq!(round(&bg["log_likelihood"], 1), -9582.4, "{bg}");
    assert!(bg["iterations"].as_u64().unwrap() > 0);
    let gg = &metrics["gamma_gamma"];
    assert_eq!(gg["customers"], 946);
    assert_eq!(round(&gg["p"], 2), 6.25, "{gg}");
    assert_eq!(round(&gg["q"], 2), 3.74, "{gg}");
    assert_eq!(round(&gg["v"], 2), 15.44, "{gg}");
    assert_eq!(gg["excluded_nonpositive_value"], 0);

    let values = read_values(&project);
    assert_eq!(values.height(), 2357);
    // One-time buyers: their own cohort, no probability alive of 1.
    let one_time = values
        .clone()
        .lazy()
        .filter(col("frequency").eq(lit(0.0)))
        .collect()
        .unwrap();
    assert_eq!(one_time.height(), 2357 - 946);
    assert_eq!(
        one_time.column("probability_alive").unwrap().null_count(),
        one_time.height()
    );
    assert_eq!(
        one_time.column("churn_risk").unwrap().null_count(),
        one_time.height()
    );
    let cohorts = one_time.column("cohort").unwrap().str().unwrap().clone();
    assert!(
        cohorts.iter().all(|c| c == Some("one_time")),
        "first orders are 6+ months old"
    );
    // Repeat buyers: probability alive in (0, 1], a churn band, finite CLV.
    let repeat = values
        .clone()
        .lazy()
        .filter(col("frequency").gt(lit(0.0)))
        .collect()
        .unwrap();
    let alive = repeat
        .column("probability_alive")
        .unwrap()
        .f64()
        .unwrap()
        .clone();
    assert!(alive.iter().all(|p| p.is_some_and(|p| p > 0.0 && p <= 1.0)));
    assert_eq!(repeat.column("churn_risk").unwrap().null_count(), 0);
    let clv = values.column("clv").unwrap().f64().unwrap().clone();
    assert!(clv
        .iter()
        .all(|v| v.is_some_and(|v| v.is_finite() && v >= 0.0)));
    // RFM scores run 1 to 5 and every row has a segment.
    for score in ["r_score", "f_score", "m_score"] {
        let s = values.column(score).unwrap().i32().unwrap().clone();
        assert!(
            s.iter().all(|v| v.is_some_and(|v| (1..=5).contains(&v))),
            "{score}"
        );
    }
    assert_eq!(values.column("rfm_segment").unwrap().null_count(), 0);
    let segments = metrics["segments"].as_object().unwrap();
    let total: u64 = segments.values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(total, 2357);
}

#[test]
fn historic_values_follow_the_orders() {
    let project = Project::new();
    let file = project.write(
        "orders.csv",
        "order_id,contact_id,ordered_at,amount,currency,status\n\
         o1,c1,2026-01-10T10:00:00Z,100,USD,completed\n\
         o2,c1,2026-01-10T18:00:00Z,20,USD,completed\n\
         o3,c1,2026-03-01T10:00:00Z,50,USD,completed\n\
         o4,c1,2026-05-01T10:00:00Z,70,USD,refunded\n\
         o5,c1,2026-06-20T10:00:00Z,30,USD,completed\n\
         o6,c2,2026-06-25T10:00:00Z,40,USD,completed\n\
         o7,c2,2026-06-26T10:00:00Z,10,USD,cancelled\n\
         o8,c3,2026-07-15T10:00:00Z,99,USD,completed\n",
    );
    let out = project.run(&["ingest", "orders", &file]);
    assert!(out.status.success(), "{}", stderr(&out));
    clv_pipeline(
        &project,
        "as_of = \"2026-06-30\"\nrevenue_windows_days = [30, 365]\nmin_repeat_customers = 5000",
    );
    let manifest = run_clv(&project);
    assert_eq!(
        manifest["metrics"]["customers"], 2,
        "c3 ordered after as_of"
    );
    let values = read_values(&project);
    let c1 = values
        .clone()
        .lazy()
        .filter(col("contact_id").eq(lit("c1")))
        .collect()
        .unwrap();
    let get = |name: &str| c1.column(name).unwrap().get(0).unwrap().into_static();
    assert_eq!(
        get("orders"),
        AnyValue::Int64(4),
        "the refund does not count"
    );
    assert_eq!(get("revenue_lifetime"), AnyValue::Float64(200.0));
    assert_eq!(get("revenue_30d"), AnyValue::Float64(30.0));
    assert_eq!(get("average_order_value"), AnyValue::Float64(50.0));
    // Two orders on 2026-01-10 are one transaction: 2 repeat days.
    assert_eq!(get("frequency"), AnyValue::Float64(2.0));
    assert_eq!(get("recency_days"), AnyValue::Int64(10));
    // 161 days from the first to the last order, over 3 gaps.
    assert_eq!(
        get("avg_days_between_orders"),
        AnyValue::Float64(161.0 / 3.0)
    );
    let c2 = values
        .lazy()
        .filter(col("contact_id").eq(lit("c2")))
        .collect()
        .unwrap();
    assert_eq!(
        c2.column("cohort").unwrap().get(0).unwrap(),
        AnyValue::String("new")
    );
    assert_eq!(
        c2.column("avg_days_between_orders").unwrap().null_count(),
        1
    );
    assert_eq!(
        c2.column("revenue_lifetime").unwrap().get(0).unwrap(),
        AnyValue::Float64(40.0)
    );
}

#[test]
fn segments_take_the_first_matching_rule() {
    let project = Project::new();
    let file = project.write(
        "orders.csv",
        "order_id,contact_id,ordered_at,amount,currency,status\n\
         o1,a-longer-contact-id-1,2026-01-10T10:00:00Z,10,USD,completed\n\
         o2,a-longer-contact-id-1,2026-02-10T10:00:00Z,10,USD,completed\n\
         o3,a-longer-contact-id-1,2026-03-10T10:00:00Z,10,USD,completed\n\
         o4,c2,2026-01-10T10:00:00Z,10,USD,completed\n\
         o5,c2,2026-02-10T10:00:00Z,10,USD,completed\n\
         o6,c3,2026-06-01T10:00:00Z,10,USD,completed\n\
         o7,a-longer-contact-id-4,2026-01-01T10:00:00Z,10,USD,completed\n",
    );
    let out = project.run(&["ingest", "orders", &file]);
    assert!(out.status.success(), "{}", stderr(&out));

    clv_pipeline(
        &project,
        "as_of = \"2026-06-30\"\nmin_repeat_customers = 5000\n\
         default_segment = \"repeat\"\n\
         segments = [{ name = \"big\", rule = \"orders >= 3\" }, \
         { name = \"repeat\", rule = \"orders >= 2\" }]",
    );
    let manifest = run_clv(&project);
    let metrics = &manifest["metrics"];

    // The default segment shares its name with a rule: one count. Names
    // come in alphabetical order.
    assert_eq!(
        metrics["segments"],
        serde_json::json!({"big": 1, "repeat": 3})
    );
    assert_eq!(
        metrics["cohorts"],
        serde_json::json!({"new": 1, "one_time": 1, "repeat": 2})
    );
    let cohorts: Vec<&String> = metrics["cohorts"].as_object().unwrap().keys().collect();
    assert_eq!(cohorts, ["new", "one_time", "repeat"]);

    // Per customer, sorted by id: the first matching rule wins.
    let values = read_values(&project)
        .sort(["contact_id"], SortMultipleOptions::default())
        .unwrap();
    assert_eq!(
        strings(&values, "contact_id"),
        ["a-longer-contact-id-1", "a-longer-contact-id-4", "c2", "c3"]
    );
    assert_eq!(
        strings(&values, "rfm_segment"),
        ["big", "repeat", "repeat", "repeat"]
    );
    assert_eq!(
        strings(&values, "cohort"),
        ["repeat", "one_time", "repeat", "new"]
    );
    assert_eq!(
        values.column("orders").unwrap().i64().unwrap().get(0),
        Some(3)
    );

    // A rule that is a constant applies to every row.
    clv_pipeline(
        &project,
        "as_of = \"2026-06-30\"\nmin_repeat_customers = 5000\n\
         segments = [{ name = \"everyone\", rule = \"TRUE\" }]",
    );
    let report = project.json(&["run", "clv", "--force"]);
    let manifest = &report[0]["manifest"];
    assert_eq!(manifest["status"], "succeeded", "{manifest}");
    assert_eq!(
        manifest["metrics"]["segments"],
        serde_json::json!({"everyone": 4})
    );
}

#[test]
fn thin_data_skips_predictions_and_says_why() {
    let project = project_with_orders();
    clv_pipeline(
        &project,
        "as_of = \"1997-09-30\"\nmin_repeat_customers = 5000",
    );
    let manifest = run_clv(&project);
    let metrics = &manifest["metrics"];
    assert_eq!(metrics["predictions"], "skipped");
    let reason = metrics["predictions_skipped_reason"].as_str().unwrap();
    assert!(
        reason.contains("946 customers") && reason.contains("5000"),
        "{reason}"
    );
    assert!(metrics.get("bgnbd").is_none());
    let values = read_values(&project);
    assert_eq!(values.height(), 2357);
    assert_eq!(values.column("clv").unwrap().null_count(), 2357);
    assert_eq!(values.column("revenue_lifetime").unwrap().null_count(), 0);

    clv_pipeline(&project, "as_of = \"1997-01-20\"\nmin_repeat_customers = 1");
    let manifest = run_clv(&project);
    let reason = manifest["metrics"]["predictions_skipped_reason"]
        .as_str()
        .unwrap();
    assert!(reason.contains("min_history_days"), "{reason}");
}

#[test]
fn nonpositive_repeat_value_is_left_out_of_the_spend_model() {
    let project = project_with_orders();
    let file = project.write(
        "free.csv",
        "order_id,contact_id,ordered_at,amount,currency,status\n\
         f1,free1,1997-02-01T10:00:00Z,10,USD,completed\n\
         f2,free1,1997-03-01T10:00:00Z,0,USD,completed\n",
    );
    let out = project.run(&["ingest", "orders", &file]);
    assert!(out.status.success(), "{}", stderr(&out));
    clv_pipeline(&project, "as_of = \"1997-09-30\"");
    let manifest = run_clv(&project);
    let gg = &manifest["metrics"]["gamma_gamma"];
    assert_eq!(gg["excluded_nonpositive_value"], 1, "{gg}");
    assert_eq!(gg["customers"], 946);
}

#[test]
fn invalid_parameters_are_named() {
    let project = Project::new();
    let cases = [
        ("as_of = \"last tuesday\"", "as_of `last tuesday`"),
        ("horizon = 0", "horizon must be a positive number of weeks"),
        ("monthly_discount_rate = 1.5", "monthly_discount_rate"),
        ("time_unit = \"fortnights\"", "fortnights"),
        (
            "segments = [{ name = \"vip\", rule = \"lifetime_spend > 100\" }]",
            "the columns are: r_score",
        ),
        (
            "segments = [{ name = \"vip\", rule = \"r_score >>\" }]",
            "invalid rule",
        ),
    ];
    for (params, expected) in cases {
        clv_pipeline(&project, params);
        let out = project.run(&["validate"]);
        assert_eq!(out.status.code(), Some(2), "{params}");
        assert!(
            stderr(&out).contains(expected),
            "{params}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn holdout_compares_predicted_and_actual_purchases() {
    let project = project_with_orders();
    let out = project.run(&["clv", "holdout", "--until", "1997-09-30"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("r = 0.2426"), "{text}");
    assert!(text.contains("repeat purchases"), "{text}");
    let report = project.json(&["clv", "holdout", "--until", "1997-09-30"]);
    assert_eq!(report["customers"], 2357);
    assert_eq!(report["holdout_end"], "1998-06-30");
    assert!((report["holdout_length"].as_f64().unwrap() - 39.0).abs() < 1e-9);
    let actual = report["actual_total"].as_f64().unwrap();
    let predicted = report["predicted_total"].as_f64().unwrap();
    // 1,882 transaction days fall in the holdout; the calibrated model
    // expects 1,653 of them, 12% fewer. The holdout includes the 1997
    // Christmas season; the calibration period has no December.
    assert_eq!(actual, 1882.0);
    assert!((predicted - 1653.4).abs() < 0.5, "{predicted}");
    let groups = report["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 8);
    assert_eq!(groups[7]["frequency"], "7+");
    let customers: u64 = groups
        .iter()
        .map(|g| g["customers"].as_u64().unwrap())
        .sum();
    assert_eq!(customers, 2357);

    let out = project.run(&["clv", "holdout", "--until", "1999-01-01"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("holdout period is empty"),
        "{}",
        stderr(&out)
    );
    let out = project.run(&["clv", "holdout", "--until", "30/09/1997"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("invalid --until"), "{}", stderr(&out));
}

#[test]
fn clv_table_independent_of_order_of_orders() {
    let forward = project_with_orders();
    clv_pipeline(&forward, "as_of = \"1997-09-30\"");
    run_clv(&forward);

    // The same orders, stored last line first.
    let text = std::fs::read_to_string(orders_csv()).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let mut reversed: Vec<&str> = lines.collect();
    reversed.reverse();
    let backward = Project::new();
    let file = backward.write(
        "orders-reversed.csv",
        &format!("{header}\n{}\n", reversed.join("\n")),
    );
    let out = backward.run(&["ingest", "orders", &file]);
    assert!(out.status.success(), "{}", stderr(&out));
    clv_pipeline(&backward, "as_of = \"1997-09-30\"");
    run_clv(&backward);

    let without_run = |frame: DataFrame| frame.drop("run_id").unwrap();
    let first = without_run(read_values(&forward));
    let second = without_run(read_values(&backward));
    assert_eq!(first.height(), 2357);
    // Equal bit for bit, rows in the same order.
    assert!(first.equals_missing(&second), "{first}\n{second}");

    // A forced run over unchanged orders changes no row.
    let report = forward.json(&["run", "clv", "--force"]);
    let output = &report[0]["manifest"]["outputs"][0];
    assert_eq!(output["rows_changed"], 0, "{output}");
    assert_eq!(output["rows_added"], 0, "{output}");
    assert_eq!(output["rows_removed"], 0, "{output}");
}
