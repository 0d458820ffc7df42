//! List hygiene with hand-built event histories and known answers: soft
//! bounce streaks, blocks, the mass-bounce guard, address rules, manual
//! suppressions, sendable contacts, the quarterly review and `explain`.

mod common;

use common::{stderr, stdout, strings, Project, EVENTS_HEADER};
use nightshift::delta::Table;
use nightshift::warehouse::Warehouse;
use polars::prelude::*;
use serde_json::Value;

/// An event row on 2026-11-01 plus `hour` hours.
fn ev(id: &str, email: &str, kind: &str, bounce: &str, hour: u32) -> String {
    let day = 1 + hour / 24;
    let hour = hour % 24;
    format!("{id},,{email},{kind},{bounce},,k1,2026-11-{day:02}T{hour:02}:00:00Z\n")
}

fn soft(prefix: &str, email: &str, from: u32, n: u32) -> String {
    (0..n)
        .map(|i| ev(&format!("{prefix}{i}"), email, "bounce", "soft", from + i))
        .collect()
}

fn ingest_events(project: &Project, name: &str, rows: &str) {
    let file = project.write(name, &format!("{EVENTS_HEADER}{rows}"));
    let out = project.run(&["ingest", "email_events", &file]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn run(project: &Project, args: &[&str]) -> Value {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    let report = project.json(&all);
    report[0]["manifest"].clone()
}

fn read(project: &Project, table: &str) -> DataFrame {
    let warehouse = Warehouse::open(project.warehouse().to_str().unwrap()).unwrap();
    Table::new(&warehouse, table).unwrap().read(None).unwrap()
}

fn keys(frame: &DataFrame, filter: Expr) -> Vec<String> {
    frame
        .clone()
        .lazy()
        .filter(filter)
        .collect()
        .unwrap()
        .column("email_normalized")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .map(|k| k.unwrap().to_string())
        .collect()
}

fn active(project: &Project) -> Vec<String> {
    keys(
        &read(project, "suppression_list"),
        col("expired_at").is_null(),
    )
}

fn field(frame: &DataFrame, key: &str, column: &str) -> AnyValue<'static> {
    let row = frame
        .clone()
        .lazy()
        .filter(col("email_normalized").eq(lit(key)))
        .collect()
        .unwrap();
    assert_eq!(row.height(), 1, "one row for {key}");
    row.column(column).unwrap().get(0).unwrap().into_static()
}

fn event_ids(frame: &DataFrame, key: &str) -> Vec<String> {
    match field(frame, key, "event_ids") {
        AnyValue::List(series) => series
            .str()
            .unwrap()
            .iter()
            .map(|v| v.unwrap().to_string())
            .collect(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn soft_bounce_streaks_reset_and_engaged_limits() {
    let project = Project::new();
    let mut rows = String::new();
    // s1: 6 soft, a delivery, 6 soft: no streak of 7.
    rows += &soft("s1a", "s1@x.com", 0, 6);
    rows += &ev("s1d", "s1@x.com", "delivered", "", 10);
    rows += &soft("s1b", "s1@x.com", 20, 6);
    // s2: opened once, then 7 soft: under the engaged limit of 15.
    rows += &ev("s2o", "s2@x.com", "open", "", 0);
    rows += &soft("s2a", "s2@x.com", 5, 7);
    // s3: 7 soft: suppressed.
    rows += &soft("s3a", "s3@x.com", 0, 7);
    // b1: 9 blocks; b2: 10 blocks.
    rows += &(0..9)
        .map(|i| ev(&format!("b1{i}"), "b1@x.com", "bounce", "block", i))
        .collect::<String>();
    rows += &(0..10)
        .map(|i| ev(&format!("b2{i}"), "b2@x.com", "bounce", "block", i))
        .collect::<String>();
    ingest_events(&project, "night1.csv", &rows);
    let manifest = run(&project, &["suppression"]);
    assert_eq!(manifest["status"], "succeeded");
    assert_eq!(active(&project), vec!["b2@x.com", "s3@x.com"]);
    let list = read(&project, "suppression_list");
    assert_eq!(
        field(&list, "s3@x.com", "reason"),
        AnyValue::StringOwned("soft_bounce_limit".into())
    );
    assert_eq!(
        field(&list, "s3@x.com", "rule"),
        AnyValue::StringOwned(
            "soft_bounce_limit: 7 consecutive soft bounces with no delivery, open or click since (limit 7)".into()
        )
    );
    assert_eq!(
        event_ids(&list, "s3@x.com"),
        (0..7).map(|i| format!("s3a{i}")).collect::<Vec<_>>()
    );
    assert_eq!(
        field(&list, "b2@x.com", "reason"),
        AnyValue::StringOwned("block_limit".into())
    );
    // The seventh soft bounce is the moment of suppression (06:00).
    let first = field(&list, "s3@x.com", "first_suppressed_at");
    assert_eq!(first.to_string(), "2026-11-01 06:00:00 UTC");

    // Night two: one more soft bounce for s1 makes 7 since the delivery;
    // s2 reaches 15.
    let mut rows = soft("s1c", "s1@x.com", 30, 1);
    rows += &soft("s2b", "s2@x.com", 20, 8);
    ingest_events(&project, "night2.csv", &rows);
    run(&project, &["suppression"]);
    assert_eq!(
        active(&project),
        vec!["b2@x.com", "s1@x.com", "s2@x.com", "s3@x.com"]
    );
    let list = read(&project, "suppression_list");
    let rule = field(&list, "s2@x.com", "rule").to_string();
    assert!(
        rule.contains("15 consecutive") && rule.contains("engaged before"),
        "{rule}"
    );
    // Blocks are never hard bounces.
    assert!(keys(&list, col("reason").eq(lit("hard_bounce"))).is_empty());
}

#[test]
fn window_limits_soft_bounces_not_blocks() {
    let project = Project::new();
    project.write(
        "pipelines/suppression.toml",
        "kind = \"suppression\"\n[params]\nsoft_bounce_window_days = 30\n",
    );
    // The window ends at the run's start, so the events are placed
    // relative to the clock.
    let now = chrono::Utc::now();

    let at = |id: String, email: &str, bounce: &str, days_ago: i64, hour: i64| {
        let time = now - chrono::Duration::days(days_ago) + chrono::Duration::hours(hour);
        format!(
            "{id},,{email},bounce,{bounce},,k1,{}\n",
            time.format("%Y-%m-%dT%H:%M:%SZ")
        )
    };

    let mut rows = String::new();
    for i in 0..7 {
        // recent@: 7 soft bounces in the window.
        rows += &at(format!("r{i}"), "recent@x.com", "soft", 5, i);
        // old@: 7 soft bounces before the window.
        rows += &at(format!("o{i}"), "old@x.com", "soft", 60, i);
    }
    for i in 0..4 {
        // split@: 4 soft bounces before the window and 3 in it.
        rows += &at(format!("s{i}"), "split@x.com", "soft", 60, i);
    }
    for i in 0..3 {
        rows += &at(format!("t{i}"), "split@x.com", "soft", 5, i);
    }
    for i in 0..10 {
        // blocked@: 10 blocks before the window; blocks have no window.
        rows += &at(format!("b{i}"), "blocked@x.com", "block", 60, i);
    }

    ingest_events(&project, "night1.csv", &rows);
    let manifest = run(&project, &["suppression"]);
    assert_eq!(manifest["status"], "succeeded");
    assert_eq!(active(&project), vec!["blocked@x.com", "recent@x.com"]);
    let list = read(&project, "suppression_list");
    assert_eq!(
        event_ids(&list, "recent@x.com"),
        (0..7).map(|i| format!("r{i}")).collect::<Vec<_>>()
    );
}

#[test]
fn late_events_count_by_time_not_arrival() {
    let project = Project::new();
    ingest_events(&project, "night1.csv", &soft("a", "late@x.com", 0, 4));
    run(&project, &["suppression"]);
    // Night two: 3 more soft bounces and a delivery that happened between
    // the second and third of the first night.
    let mut rows = soft("b", "late@x.com", 10, 3);
    rows += &ev("d", "late@x.com", "delivered", "", 1);
    ingest_events(&project, "night2.csv", &rows);
    run(&project, &["suppression"]);
    assert!(
        active(&project).is_empty(),
        "only 5 soft bounces follow the delivery"
    );
    ingest_events(&project, "night3.csv", &soft("c", "late@x.com", 20, 2));
    run(&project, &["suppression"]);
    assert_eq!(active(&project), vec!["late@x.com"]);
}

#[test]
fn reruns_are_idempotent() {
    let project = Project::new();
    let mut rows = soft("s", "s@x.com", 0, 7);
    rows += &ev("h", "h@x.com", "bounce", "hard", 0);
    ingest_events(&project, "night1.csv", &rows);
    run(&project, &["suppression"]);
    let before = read(&project, "suppression_list");
    for _ in 0..2 {
        let manifest = run(&project, &["suppression", "--force"]);
        assert_eq!(manifest["status"], "succeeded");
        let list = manifest["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["role"] == "list")
            .unwrap()
            .clone();
        assert_eq!(list["version"], Value::Null, "nothing new to commit");
    }
    assert!(read(&project, "suppression_list").equals_missing(&before));
}

#[test]
fn mass_bounce_guard_holds_a_dominant_domain() {
    let project = Project::new();
    let mut rows = String::new();
    for i in 0..30 {
        rows += &ev(
            &format!("m{i}"),
            &format!("user{i}@bigisp.com"),
            "bounce",
            "hard",
            0,
        );
    }
    for i in 0..5 {
        rows += &ev(
            &format!("o{i}"),
            &format!("user{i}@other{i}.com"),
            "bounce",
            "hard",
            0,
        );
    }
    ingest_events(&project, "night1.csv", &rows);
    let manifest = run(&project, &["suppression"]);
    assert_eq!(
        manifest["metrics"]["held_for_review"][0]["domain"],
        "bigisp.com"
    );
    assert_eq!(
        manifest["metrics"]["held_for_review"][0]["hard_bounces"],
        30
    );
    assert_eq!(active(&project).len(), 5);
    let held = read(&project, "suppression_held");
    assert_eq!(held.height(), 30);
    let reason = field(&held, "user0@bigisp.com", "held_reason").to_string();
    assert!(reason.contains("bigisp.com produced 30 of 35"), "{reason}");
    let out = project.run(&["explain", "suppression", "USER0@bigisp.com"]);
    assert!(stdout(&out).contains("held for review"), "{}", stdout(&out));

    // A person looked: release the domain; the next run applies them.
    project.write(
        "pipelines/suppression.toml",
        "kind = \"suppression\"\n[params]\nrelease_held_domains = [\"bigisp.com\"]\n",
    );
    let manifest = run(&project, &["suppression"]);
    assert_eq!(manifest["metrics"]["held_released"], 30);
    assert_eq!(active(&project).len(), 35);
    assert_eq!(read(&project, "suppression_held").height(), 0);
}

#[test]
fn sendable_contacts_sorted_from_unsorted_input() {
    let project = Project::new();
    ingest_events(
        &project,
        "night1.csv",
        &ev("h1", "gone@x.com", "bounce", "hard", 0),
    );
    let contacts = project.write(
        "contacts.csv",
        "contact_id,email\nc9,nine@x.com\nc2,GONE@x.com\nc5,five@x.com\nc1,one@x.com\n",
    );
    let out = project.run(&["ingest", "contacts", &contacts]);
    assert!(out.status.success(), "{}", stderr(&out));
    let manifest = run(&project, &["suppression"]);
    assert_eq!(manifest["metrics"]["sendable_contacts"], 3);
    let sendable = read(&project, "sendable_contacts");
    assert_eq!(strings(&sendable, "contact_id"), vec!["c1", "c5", "c9"]);
}

#[test]
fn address_rules_manual_entries_and_sendable_contacts() {
    let project = Project::new();
    ingest_events(
        &project,
        "night1.csv",
        &ev("h1", "gone@x.com", "bounce", "hard", 0),
    );
    let contacts = project.write(
        "contacts.csv",
        "contact_id,email\n\
         c1,ok@x.com\n\
         c2,Gone@X.com\n\
         c3,not an address\n\
         c4,info@x.com\n\
         c5,\n\
         c6,Jo.Doe+news@googlemail.com\n",
    );
    let out = project.run(&["ingest", "contacts", &contacts]);
    assert!(out.status.success(), "{}", stderr(&out));
    project.write(
        "pipelines/suppression.toml",
        "kind = \"suppression\"\n[params]\nrole_addresses = true\n\
         sendable_export = \"exports/sendable.parquet\"\n\
         [params.normalization]\ngooglemail = true\ngmail_dots = true\nplus_tags = true\n",
    );
    let manifest = run(&project, &["suppression"]);
    assert_eq!(
        manifest["metrics"]["normalization"]["policy"],
        "nightshift-email"
    );
    assert_eq!(manifest["metrics"]["normalization"]["plus_tags"], true);
    assert_eq!(
        active(&project),
        vec!["gone@x.com", "info@x.com", "not an address"]
    );
    let list = read(&project, "suppression_list");
    assert_eq!(
        field(&list, "info@x.com", "reason"),
        AnyValue::StringOwned("role_address".into())
    );
    assert_eq!(
        field(&list, "not an address", "reason"),
        AnyValue::StringOwned("invalid_address".into())
    );
    let sendable = read(&project, "sendable_contacts");
    assert_eq!(strings(&sendable, "contact_id"), vec!["c1", "c6"]);
    assert_eq!(
        sendable.column("email").unwrap().str().unwrap().get(1),
        Some("Jo.Doe+news@googlemail.com"),
        "the stored address is never rewritten"
    );
    assert_eq!(
        sendable
            .column("email_normalized")
            .unwrap()
            .str()
            .unwrap()
            .get(1),
        Some("jodoe@gmail.com")
    );
    let sendable_record = manifest["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["role"] == "sendable")
        .unwrap()
        .clone();
    assert_eq!(sendable_record["rows"], 2);
    assert!(project
        .warehouse()
        .join("exports/sendable.parquet")
        .exists());

    // Address changes: c1 moves to the bounced address, c2 away from it.
    let moved = project.write(
        "moved.csv",
        "contact_id,email\nc1,gone@x.com\nc2,new@x.com\n",
    );
    let out = project.run(&["ingest", "contacts", &moved, "--mode", "upsert"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let manifest = run(&project, &["suppression"]);
    let sendable = read(&project, "sendable_contacts");
    assert_eq!(strings(&sendable, "contact_id"), vec!["c2", "c6"]);
    let record = manifest["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["role"] == "sendable")
        .unwrap()
        .clone();
    assert_eq!(record["rows_added"], 1);
    assert_eq!(record["rows_removed"], 1);

    // Manual suppression and removal, each a table version.
    let manual = project.write(
        "manual.csv",
        "email,action,reason,requested_by,requested_at\n\
         new@x.com,suppress,asked by phone,ops,2026-11-20T09:00:00Z\n\
         gone@x.com,remove,mailbox works again,ops,2026-11-20T09:00:00Z\n",
    );
    let out = project.run(&["ingest", "suppression_manual", &manual, "--mode", "upsert"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let manifest = run(&project, &["suppression"]);
    assert_eq!(manifest["metrics"]["addresses_removed"], 1);
    assert_eq!(
        active(&project),
        vec!["info@x.com", "new@x.com", "not an address"]
    );
    let changes = read(&project, "suppression_changes");
    assert_eq!(
        field(&changes, "gone@x.com", "change_reason"),
        AnyValue::StringOwned("manual removal: mailbox works again".into())
    );
    assert_eq!(
        field(&changes, "new@x.com", "reason"),
        AnyValue::StringOwned("manual".into())
    );
    // The removal holds on a full re-read of old events.
    let manifest = run(&project, &["suppression", "--force"]);
    assert_eq!(manifest["status"], "succeeded");
    assert!(!active(&project).contains(&"gone@x.com".to_string()));
    let history = project.json(&["history", "suppression_manual"]);
    assert_eq!(history.as_array().unwrap().len(), 1);
}

#[test]
fn review_expires_at_the_boundary_and_flags_engagement() {
    let project = Project::new();
    let mut rows = String::new();
    rows += &ev("h1", "hard@x.com", "bounce", "hard", 0); // 2026-11-01 00:00
    rows += &ev("c1", "complaint@x.com", "complaint", "", 0);
    rows += &soft("s", "soft@x.com", 0, 7); // last soft bounce 06:00
    rows += &ev("u1", "back@x.com", "unsubscribe", "", 0);
    rows += &ev("o1", "back@x.com", "open", "", 48);
    ingest_events(&project, "night1.csv", &rows);
    run(&project, &["suppression"]);
    let review = |as_of: &str| {
        project.write(
            "pipelines/review.toml",
            &format!("kind = \"suppression_review\"\n[params]\nas_of = \"{as_of}\"\n"),
        );
        let out = project.run(&["run", "review", "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        report[0]["manifest"].clone()
    };
    // 90 days after 2026-11-01T06:00 is 2027-01-30T06:00; one second
    // before, nothing expires.
    let manifest = review("2027-01-30T05:59:59Z");
    assert_eq!(manifest["metrics"]["expired"], 0);
    assert_eq!(manifest["metrics"]["flagged"], 1);
    let flagged = read(&project, "suppression_flagged");
    assert_eq!(keys(&flagged, lit(true)), vec!["back@x.com"]);
    let manifest = review("2027-01-30T06:00:00Z");
    assert_eq!(manifest["metrics"]["expired"], 1);
    assert_eq!(
        manifest["metrics"]["expired_by_reason"]["soft_bounce_limit"],
        1
    );
    assert_eq!(
        active(&project),
        vec!["back@x.com", "complaint@x.com", "hard@x.com"]
    );
    let list = read(&project, "suppression_list");
    assert_eq!(
        field(&list, "soft@x.com", "expired_at").to_string(),
        "2027-01-30 06:00:00 UTC"
    );
    assert_eq!(
        field(&list, "hard@x.com", "expires_at").to_string(),
        "2027-11-01 00:00:00 UTC"
    );
    assert_eq!(
        field(&list, "complaint@x.com", "expires_at"),
        AnyValue::Null
    );
    let report = read(&project, "suppression_report");
    let reasons = report
        .lazy()
        .filter(col("dimension").eq(lit("reason")))
        .collect()
        .unwrap();
    assert_eq!(reasons.height(), 3);

    // A dry run shows what would expire and commits nothing.
    project.write(
        "pipelines/review.toml",
        "kind = \"suppression_review\"\n[params]\nas_of = \"2028-01-01T00:00:00Z\"\n",
    );
    let out = project.run(&["run", "review", "--dry-run", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report[0]["manifest"]["metrics"]["expired"], 1, "hard@x.com");
    assert_eq!(active(&project).len(), 3);

    // The suppression job keeps expired rows out, even reading every
    // event again; a new soft streak after expiry suppresses again.
    let manifest = run(&project, &["suppression", "--force"]);
    assert_eq!(manifest["status"], "succeeded");
    assert!(!active(&project).contains(&"soft@x.com".to_string()));
    project.write(
        "later.csv",
        &format!(
            "{EVENTS_HEADER}{}",
            (0..7)
                .map(|i| format!(
                    "n{i},,soft@x.com,bounce,soft,,k2,2027-02-0{}T00:00:00Z\n",
                    i + 1
                ))
                .collect::<String>()
        ),
    );
    let later = project.path().join("later.csv");
    let out = project.run(&["ingest", "email_events", later.to_str().unwrap()]);
    assert!(out.status.success());
    let manifest = run(&project, &["suppression"]);
    assert_eq!(manifest["metrics"]["addresses_reactivated"], 1);
    assert!(active(&project).contains(&"soft@x.com".to_string()));

    // Consent reasons cannot be given a time to live.
    project.write(
        "pipelines/review.toml",
        "kind = \"suppression_review\"\n[params.ttl_days]\nunsubscribe = 30\n",
    );
    let out = project.run(&["validate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("never expire"), "{}", stderr(&out));
}

#[test]
fn explain_names_the_rule_and_events() {
    let project = Project::new();
    let mut rows = ev("h1", " Gone@X.com ", "bounce", "hard", 0);
    rows += &ev("h2", "gone@x.com", "bounce", "hard", 30);
    ingest_events(&project, "night1.csv", &rows);
    run(&project, &["suppression"]);
    let out = project.run(&["explain", "suppression", "GONE@x.com"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("gone@x.com is suppressed"), "{text}");
    assert!(
        text.contains("hard_bounce: a hard bounce suppresses on its first occurrence"),
        "{text}"
    );
    assert!(text.contains("h1"), "{text}");
    let json = project.json(&["explain", "suppression", "gone@x.com"]);
    assert_eq!(json["state"], "active");
    assert_eq!(json["events"][0]["event_id"], "h1");
    assert_eq!(json["entry"]["event_count"], "2");
    let out = project.run(&["explain", "suppression", "nobody@x.com"]);
    assert!(stdout(&out).contains("not on the suppression list"));
}
