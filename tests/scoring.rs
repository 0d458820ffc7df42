//! Scoring with hand-computed scores, list refresh with adds, removes and
//! the size guard, and the `sql` job kind.

mod common;

use common::{stderr, stdout, strings, Project, EVENTS_HEADER};
use nightshift::delta::Table;
use nightshift::warehouse::Warehouse;
use polars::prelude::*;

const CONTACTS: &str = "\
contact_id,email,job_title,country
c1,one@x.com,Director of Sales,US
c2,two@x.com,,FR
c3,three@x.com,,GB
c4,four@x.com,Engineer,US
";

/// As of 2026-11-30T00:00:00Z: c1 opened 30 days before (2 points, one
/// half-life: 1.0), clicked 60 days before (5 points, two half-lives: 1.25)
/// and at the as-of time (5), and once after it (ignored). c3 clicked ten
/// times at the as-of time (50, capped at 20) and unsubscribed 30 days
/// before (-20, halved: -10, never capped).
const EVENTS: &str = "\
e1,c1,one@x.com,open,,,k,2026-10-31T00:00:00Z
e2,c1,one@x.com,click,,,k,2026-10-01T00:00:00Z
e3,c1,one@x.com,click,,,k,2026-11-30T00:00:00Z
e4,c1,one@x.com,click,,,k,2026-12-01T00:00:00Z
e5,c3,three@x.com,unsubscribe,,,k,2026-10-31T00:00:00Z
";

/// c1 asked for a demo 8 days before (25 points, one 7-day period at 50%
/// loss: 12.5) and viewed a page 15 days before (two periods: 0).
const ACTIVITIES: &str = "\
activity_id,contact_id,activity_type,occurred_at
a1,c1,demo_request,2026-11-22T00:00:00Z
a2,c1,page_view,2026-11-15T00:00:00Z
";

const SCORING: &str = r#"kind = "scoring"
[params]
as_of = "2026-11-30T00:00:00Z"
fit_cap = 20
mql_threshold = 35
bands = [{ grade = "A", min = 35 }, { grade = "B", min = 15 }, { grade = "C", min = 0 }]

[params.groups.email]
source = "email_events"
points = { open = 2, click = 5, unsubscribe = -20, hard_bounce = -10 }
decay = { kind = "exponential", half_life_days = 30 }
cap = 20

[params.groups.web]
source = "activities"
points = { page_view = 1, demo_request = 25 }
decay = { kind = "linear", period_days = 7, loss_per_period = 0.5 }

[[params.fit]]
name = "director"
rule = "job_title ILIKE '%director%'"
points = 15

[[params.fit]]
name = "target_country"
rule = "country IN ('US', 'GB')"
points = 10
"#;

fn setup() -> Project {
    let project = Project::new();
    let contacts = project.write("contacts.csv", CONTACTS);
    let events = project.write("events.csv", &format!("{EVENTS_HEADER}{EVENTS}"));
    let clicks: String = (0..10)
        .map(|i| format!("k{i},c3,three@x.com,click,,,k,2026-11-30T00:00:00Z\n"))
        .collect();
    let more = project.write("clicks.csv", &format!("{EVENTS_HEADER}{clicks}"));
    let activities = project.write("activities.csv", ACTIVITIES);
    for (table, file) in [
        ("contacts", &contacts),
        ("email_events", &events),
        ("email_events", &more),
        ("activities", &activities),
    ] {
        let out = project.run(&["ingest", table, file]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    project.write("pipelines/scoring.toml", SCORING);
    project
}

fn read(project: &Project, table: &str) -> DataFrame {
    let warehouse = Warehouse::open(project.warehouse().to_str().unwrap()).unwrap();
    Table::new(&warehouse, table).unwrap().read(None).unwrap()
}

fn score_of(scores: &DataFrame, id: &str, column: &str) -> AnyValue<'static> {
    let row = scores
        .clone()
        .lazy()
        .filter(col("contact_id").eq(lit(id)))
        .collect()
        .unwrap();
    assert_eq!(row.height(), 1, "{id}");
    row.column(column).unwrap().get(0).unwrap().into_static()
}

fn float(value: AnyValue) -> f64 {
    match value {
        AnyValue::Float64(v) => v,
        other => panic!("{other:?}"),
    }
}

#[test]
fn scores_match_hand_computed_values() {
    let project = setup();
    let report = project.json(&["run", "scoring"]);
    assert_eq!(report[0]["manifest"]["status"], "succeeded", "{report}");
    let scores = read(&project, "scores");
    assert_eq!(scores.height(), 4, "every contact, with activity or not");
    let close = |id: &str, column: &str, expected: f64| {
        let actual = float(score_of(&scores, id, column));
        assert!(
            (actual - expected).abs() < 1e-9,
            "{id} {column}: {actual} != {expected}"
        );
    };
    close("c1", "engagement_email", 1.0 + 1.25 + 5.0);
    close("c1", "engagement_web", 12.5);
    close("c1", "engagement_score", 19.75);
    close("c1", "fit_director", 15.0);
    close("c1", "fit_target_country", 10.0);
    close("c1", "fit_score", 20.0);
    close("c1", "score", 39.75);
    close("c2", "score", 0.0);
    close("c3", "engagement_email", 20.0 - 10.0);
    close("c3", "score", 20.0);
    close("c4", "score", 10.0);
    assert_eq!(
        score_of(&scores, "c1", "grade"),
        AnyValue::StringOwned("A".into())
    );
    assert_eq!(
        score_of(&scores, "c3", "grade"),
        AnyValue::StringOwned("B".into())
    );
    assert_eq!(
        score_of(&scores, "c2", "grade"),
        AnyValue::StringOwned("C".into())
    );
    assert_eq!(score_of(&scores, "c1", "mql"), AnyValue::Boolean(true));
    assert_eq!(score_of(&scores, "c3", "mql"), AnyValue::Boolean(false));
    assert_eq!(score_of(&scores, "c1", "previous_score"), AnyValue::Null);
    assert_eq!(report[0]["manifest"]["metrics"]["mql"], 1);

    // New events after the as-of time change nothing: the past score
    // is reproduced exactly, and the change is 0.
    let late = project.write(
        "late.csv",
        &format!("{EVENTS_HEADER}z1,c2,two@x.com,click,,,k,2026-12-02T00:00:00Z\n"),
    );
    assert!(project
        .run(&["ingest", "email_events", &late])
        .status
        .success());
    let report = project.json(&["run", "scoring"]);
    assert_eq!(report[0]["manifest"]["status"], "succeeded");
    let again = read(&project, "scores");
    assert_eq!(float(score_of(&again, "c1", "score")), 39.75);
    assert_eq!(float(score_of(&again, "c1", "previous_score")), 39.75);
    assert_eq!(float(score_of(&again, "c1", "score_change")), 0.0);
    assert_eq!(float(score_of(&again, "c2", "score")), 0.0);

    let out = project.run(&["explain", "score", "c1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("score 39.75 (engagement 19.75 + fit 20.00), grade A"),
        "{text}"
    );
    assert!(text.contains("email") && text.contains("7.25"), "{text}");
    assert!(text.contains("fit is capped at 20"), "{text}");
    let out = project.run(&["explain", "score", "nobody"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("has no score"));
}

#[test]
fn invalid_models_are_named() {
    let project = Project::new();
    let cases = [
        ("[params]\n", "the model is empty"),
        (
            "[[params.fit]]\nname = \"x\"\nrule = \"seniority = 'vp'\"\npoints = 1\n",
            "the columns are: contact_id",
        ),
        (
            "[params.groups.email]\nsource = \"email_events\"\npoints = { open = 1 }\n\
             decay = { kind = \"exponential\", half_life_days = 0 }\n",
            "half_life_days must be positive",
        ),
    ];
    for (text, expected) in cases {
        project.write(
            "pipelines/scoring.toml",
            &format!("kind = \"scoring\"\n{text}"),
        );
        let out = project.run(&["validate"]);
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(stderr(&out).contains(expected), "{text}: {}", stderr(&out));
    }
}

const LISTS: &str = r#"kind = "list_refresh"
[params]
[[params.lists]]
id = "mql"
filter = "mql"

[[params.lists]]
id = "us"
filter = "country = 'US'"
export_csv = "exports/lists/us.csv"

[[params.lists]]
id = "everyone"
filter = "TRUE"
include_suppressed = true
max_change_pct = 100
"#;

/// Returns the rows added, removed and changed that a run manifest records
/// for `table`.
fn row_counts(manifest: &serde_json::Value, table: &str) -> (u64, u64, u64) {
    let outputs = manifest["outputs"].as_array().unwrap();
    let output = outputs.iter().find(|o| o["table"] == table).unwrap();
    let count = |field: &str| output[field].as_u64().unwrap();
    (
        count("rows_added"),
        count("rows_removed"),
        count("rows_changed"),
    )
}

fn members(project: &Project, list: &str) -> Vec<String> {
    read(project, "list_membership")
        .lazy()
        .filter(col("list_id").eq(lit(list)))
        .collect()
        .unwrap()
        .column("contact_id")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .map(|c| c.unwrap().to_string())
        .collect()
}

#[test]
fn lists_add_remove_keep_member_since_and_guard_size() {
    let project = setup();
    assert!(project.run(&["run", "scoring"]).status.success());
    // c4's address hard-bounced: suppressed, so off every list but one.
    let bounce = project.write(
        "bounce.csv",
        &format!("{EVENTS_HEADER}b1,c4,FOUR@x.com,bounce,hard,,k,2026-11-20T00:00:00Z\n"),
    );
    assert!(project
        .run(&["ingest", "email_events", &bounce])
        .status
        .success());
    assert!(project.run(&["run", "suppression"]).status.success());
    project.write("pipelines/lists.toml", LISTS);
    let report = project.json(&["run", "lists"]);
    let manifest = &report[0]["manifest"];
    assert_eq!(manifest["status"], "succeeded", "{manifest}");
    assert_eq!(members(&project, "mql"), vec!["c1"]);
    assert_eq!(members(&project, "us"), vec!["c1"], "c4 is suppressed");
    assert_eq!(members(&project, "everyone"), vec!["c1", "c2", "c3", "c4"]);
    assert_eq!(manifest["metrics"]["lists"]["us"]["members"], 1);
    let first_members = read(&project, "list_membership").height() as u64;
    let csv = std::fs::read_to_string(project.warehouse().join("exports/lists/us.csv")).unwrap();
    assert!(csv.contains("c1,one@x.com"), "{csv}");
    let since = read(&project, "list_membership")
        .lazy()
        .filter(
            col("contact_id")
                .eq(lit("c1"))
                .and(col("list_id").eq(lit("us"))),
        )
        .collect()
        .unwrap()
        .column("member_since")
        .unwrap()
        .get(0)
        .unwrap()
        .into_static();

    // c3 moves to the US and c2 too: the us list grows from 1 to 3 (200%)
    // and the guard stops the run.
    let moved = project.write("moved.csv", "contact_id,country\nc3,US\nc2,US\n");
    let out = project.run(&["ingest", "contacts", &moved, "--mode", "upsert"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = project.run(&["run", "lists"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(
            "list `us` would change from 1 to 3 members (+200.0%), more than max_change_pct 50%"
        ),
        "{}",
        stderr(&out)
    );
    assert_eq!(members(&project, "us"), vec!["c1"], "nothing committed");

    // With a wider guard the refresh goes through: adds, and c1 keeps its
    // member_since.
    project.write(
        "pipelines/lists.toml",
        &LISTS.replace(
            "export_csv = \"exports/lists/us.csv\"",
            "max_change_pct = 300",
        ),
    );
    let report = project.json(&["run", "lists"]);
    assert_eq!(report[0]["manifest"]["metrics"]["lists"]["us"]["added"], 2);
    let manifest = &report[0]["manifest"];
    assert_eq!(row_counts(manifest, "list_membership"), (2, 0, 0));
    assert_eq!(
        row_counts(manifest, "list_changes"),
        (2, first_members, 0),
        "the first refresh's changes are all replaced"
    );
    assert_eq!(members(&project, "us"), vec!["c1", "c2", "c3"]);
    let again = read(&project, "list_membership")
        .lazy()
        .filter(
            col("contact_id")
                .eq(lit("c1"))
                .and(col("list_id").eq(lit("us"))),
        )
        .collect()
        .unwrap()
        .column("member_since")
        .unwrap()
        .get(0)
        .unwrap()
        .into_static();
    assert_eq!(since, again);
    let changes = read(&project, "list_changes");
    assert_eq!(changes.height(), 2);

    // Removes: c2 leaves the US.
    let back = project.write("back.csv", "contact_id,country\nc2,FR\n");
    assert!(project
        .run(&["ingest", "contacts", &back, "--mode", "upsert"])
        .status
        .success());
    let report = project.json(&["run", "lists"]);
    assert_eq!(
        report[0]["manifest"]["metrics"]["lists"]["us"]["removed"],
        1
    );
    let manifest = &report[0]["manifest"];
    assert_eq!(row_counts(manifest, "list_membership"), (0, 1, 0));
    assert_eq!(row_counts(manifest, "list_changes"), (1, 2, 0));
    let changes = read(&project, "list_changes");
    assert_eq!(
        changes.column("change").unwrap().get(0).unwrap(),
        AnyValue::String("remove")
    );

    // A filter with an unknown column fails validation before any run.
    project.write(
        "pipelines/lists.toml",
        "kind = \"list_refresh\"\n[[params.lists]]\nid = \"vip\"\nfilter = \"lifetime_spend > 100\"\n",
    );
    let out = project.run(&["validate"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("list `vip`") && err.contains("the columns are: contact_id"),
        "{err}"
    );
}

#[test]
fn sql_pipelines_run_with_pins_gates_and_clear_errors() {
    let project = setup();
    let query = "kind = \"sql\"\n[inputs]\ncontacts = \"contacts\"\nevents = \"email_events\"\n\
                 [outputs]\nclickers = \"clickers\"\n[params.queries]\nclickers = \"\"\"\n\
                 SELECT c.contact_id, c.email, count(*) AS clicks FROM contacts c \
                 JOIN events e ON e.contact_id = c.contact_id WHERE e.event_type = 'click' \
                 GROUP BY c.contact_id, c.email ORDER BY c.contact_id\n\"\"\"\n\
                 [params.keys]\nclickers = \"contact_id\"\n";
    project.write("pipelines/report.toml", query);
    let report = project.json(&["run", "report"]);
    let manifest = &report[0]["manifest"];
    assert_eq!(manifest["status"], "succeeded", "{manifest}");
    assert_eq!(manifest["inputs"].as_array().unwrap().len(), 2);
    let clickers = read(&project, "clickers");
    assert_eq!(strings(&clickers, "contact_id"), vec!["c1", "c3"]);
    assert_eq!(
        clickers
            .column("clicks")
            .unwrap()
            .get(1)
            .unwrap()
            .extract::<i64>(),
        Some(10)
    );

    // A dry run commits nothing; a gate stops a commit.
    project.write(
        "pipelines/report.toml",
        &format!("{query}[[gates]]\noutput = \"clickers\"\nexpression = \"clicks < 5\"\n"),
    );
    let out = project.run(&["run", "report", "--force"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("gate expression"), "{}", stderr(&out));

    // A query error names the pipeline and what it could not find.
    project.write(
        "pipelines/report.toml",
        &query.replace("e.event_type", "e.kind_of_event"),
    );
    let out = project.run(&["run", "report"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("pipeline `report`, output `clickers`"),
        "{err}"
    );
    assert!(err.contains("kind_of_event"), "{err}");
    assert!(err.contains("events (event_id"), "{err}");
    project.write(
        "pipelines/report.toml",
        &query.replace("JOIN events", "JOIN evnts"),
    );
    let out = project.run(&["run", "report"]);
    assert!(stderr(&out).contains("evnts"), "{}", stderr(&out));

    // Every output needs a query.
    project.write(
        "pipelines/report.toml",
        "kind = \"sql\"\n[outputs]\na = \"t_a\"\nb = \"t_b\"\n[params.queries]\na = \"SELECT 1 AS x\"\n",
    );
    let out = project.run(&["validate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("output `b` has no query"),
        "{}",
        stderr(&out)
    );
}
