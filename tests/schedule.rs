//! Schedules, dependencies, alerts, pings, staleness, metrics and gates,
//! through the binary, with a simulated clock (`--now`) and an HTTP
//! receiver on 127.0.0.1.

mod common;

use common::{stderr, stdout, Project, Receiver, EVENTS_HEADER};
use serde_json::Value;

const EVENTS: &str = "\
e1,c1,a@x.com,bounce,hard,550 user unknown,k1,2026-11-01T10:00:00Z
e2,c2,b@x.com,complaint,,,k1,2026-11-02T09:00:00Z
e3,c3,c@x.com,unsubscribe,,,k1,2026-11-02T08:00:00Z
";

const MORE_EVENTS: &str = "\
e4,c4,d@x.com,bounce,hard,550 user unknown,k2,2026-11-03T10:00:00Z
e5,c5,e@x.com,bounce,hard,550 user unknown,k2,2026-11-03T10:00:00Z
e6,c6,f@x.com,unsubscribe,,,k2,2026-11-03T10:00:00Z
e7,c7,g@x.com,unsubscribe,,,k2,2026-11-03T10:00:00Z
";

fn ingest(project: &Project, name: &str, rows: &str) {
    let file = project.write(name, &format!("{EVENTS_HEADER}{rows}"));
    let out = project.run(&["ingest", "email_events", &file]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn runs(project: &Project, pipeline: &str) -> Vec<Value> {
    project
        .json(&["runs", pipeline])
        .as_array()
        .unwrap()
        .clone()
}

fn manifest(project: &Project, pipeline: &str, run_id: &str) -> Value {
    let path = project
        .warehouse()
        .join(format!("runs/{pipeline}/{run_id}.json"));
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn config_with_alerts(project: &Project, receiver: &Receiver, extra: &str) {
    let log = project.path().join("alerts.jsonl");
    project.write(
        "nightshift.toml",
        &format!(
            "warehouse = \"file://./warehouse\"\npipelines = \"pipelines\"\n\
             metrics_file = \"metrics/nightshift.prom\"\n{extra}\n\
             [[alerts]]\nname = \"chat\"\nkind = \"slack\"\nurl = \"{0}/slack\"\n\n\
             [[alerts]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"env:TEST_HOOK_URL\"\n\
             headers = {{ Authorization = \"env:TEST_HOOK_TOKEN\" }}\n\n\
             [[alerts]]\nname = \"log\"\nkind = \"command\"\n\
             command = [\"sh\", \"-c\", \"cat >> '{1}'; echo >> '{1}'\"]\n",
            receiver.url,
            log.display()
        ),
    );
}

fn hook_env(receiver: &Receiver) -> Vec<(&'static str, String)> {
    vec![
        ("TEST_HOOK_URL", format!("{}/hook", receiver.url)),
        ("TEST_HOOK_TOKEN", "Bearer s3cr3t-token".to_string()),
    ]
}

fn run_env(
    project: &Project,
    args: &[&str],
    env: &[(&'static str, String)],
) -> std::process::Output {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    project.run_with_env(args, &env)
}

fn command_log(project: &Project) -> Vec<Value> {
    std::fs::read_to_string(project.path().join("alerts.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn failure_then_recovery_alerts_once_per_change() {
    let project = Project::new();
    let receiver = Receiver::start(vec![]);
    config_with_alerts(&project, &receiver, "");
    let env = hook_env(&receiver);

    // No email_events table yet: the run fails.
    let out = run_env(&project, &["run", "suppression"], &env);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let first = &runs(&project, "suppression")[0];
    assert_eq!(first["status"], "failed");
    let run_id = first["run_id"].as_str().unwrap();

    let hooks = receiver.received("/hook");
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    let body = hooks[0].json();
    assert_eq!(body["event"], "failure");
    assert_eq!(body["pipeline"], "suppression");
    assert_eq!(body["run_id"], run_id);
    assert!(
        body["error"].as_str().unwrap().contains("email_events"),
        "{body}"
    );
    assert!(body["manifest"]
        .as_str()
        .unwrap()
        .ends_with(&format!("runs/suppression/{run_id}.json")));
    assert_eq!(
        hooks[0].header("authorization"),
        Some("Bearer s3cr3t-token")
    );
    let slack = receiver.received("/slack");
    assert_eq!(slack.len(), 1);
    let text = slack[0].json()["text"].as_str().unwrap().to_string();
    assert!(
        text.contains("suppression") && text.contains("failing"),
        "{text}"
    );
    let logged = command_log(&project);
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0]["event"], "failure");

    // The manifest records each delivery and never the secret.
    let recorded = manifest(&project, "suppression", run_id);
    let notifications = recorded["notifications"].as_array().unwrap();
    assert_eq!(notifications.len(), 3, "{notifications:?}");
    assert!(notifications.iter().all(|n| n["delivered"] == true));
    assert!(!recorded.to_string().contains("s3cr3t"));

    // A second failure is the same state: no new alert.
    let out = run_env(&project, &["run", "suppression"], &env);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(receiver.received("/hook").len(), 1);
    assert_eq!(command_log(&project).len(), 1);

    // The first success after the failures: one recovery alert.
    ingest(&project, "events.csv", EVENTS);
    let out = run_env(&project, &["run", "suppression"], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    let hooks = receiver.received("/hook");
    assert_eq!(hooks.len(), 2);
    assert_eq!(hooks[1].json()["event"], "recovery");
    assert_eq!(receiver.received("/slack").len(), 2);

    // The metrics file follows the runs: 3 rows in the list and 3 in the
    // changes.
    let metrics = std::fs::read_to_string(project.path().join("metrics/nightshift.prom")).unwrap();
    assert!(
        metrics.contains("nightshift_pipeline_status{pipeline=\"suppression\",status=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("nightshift_rows_written{pipeline=\"suppression\"} 6"),
        "{metrics}"
    );

    // Success again: nothing to say.
    let out = run_env(&project, &["run", "suppression", "--force"], &env);
    assert!(out.status.success());
    assert_eq!(receiver.received("/hook").len(), 2);
}

#[test]
fn undeliverable_alert_keeps_the_run_outcome() {
    let project = Project::new();
    // Port 9 on 127.0.0.1 (discard) is closed here; the server answering
    // 500 three times is the other failure.
    let receiver = Receiver::start(vec![500, 500, 500]);
    project.write(
        "nightshift.toml",
        &format!(
            "warehouse = \"file://./warehouse\"\n\
             [[alerts]]\nname = \"down\"\nkind = \"webhook\"\nurl = \"{}/hook\"\n\
             [[alerts]]\nname = \"unset\"\nkind = \"webhook\"\nurl = \"env:NIGHTSHIFT_TEST_UNSET_URL\"\n",
            receiver.url
        ),
    );
    let out = project.run(&["run", "suppression"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("input table `email_events`"),
        "{}",
        stderr(&out)
    );
    let run = &runs(&project, "suppression")[0];
    let recorded = manifest(&project, "suppression", run["run_id"].as_str().unwrap());
    assert!(recorded["error"].as_str().unwrap().contains("email_events"));
    let notifications = recorded["notifications"].as_array().unwrap();
    let down = notifications
        .iter()
        .find(|n| n["channel"] == "down")
        .unwrap();
    assert_eq!(down["delivered"], false);
    assert_eq!(down["attempts"], 3);
    assert!(down["error"].as_str().unwrap().contains("500"), "{down}");
    assert_eq!(receiver.received("/hook").len(), 3, "retried three times");
    let unset = notifications
        .iter()
        .find(|n| n["channel"] == "unset")
        .unwrap();
    assert_eq!(unset["delivered"], false);
    assert!(unset["error"]
        .as_str()
        .unwrap()
        .contains("NIGHTSHIFT_TEST_UNSET_URL"));

    // A success whose recovery alert cannot be delivered still succeeds.
    ingest(&project, "events.csv", EVENTS);
    let out = project.run(&["run", "suppression"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn status_reports_failing_stale_and_ok_through_its_exit_code() {
    let project = Project::new();
    let receiver = Receiver::start(vec![]);
    config_with_alerts(&project, &receiver, "alert_reminder_hours = 12");
    let env = hook_env(&receiver);

    // Never run, with max_age = 26h: stale.
    let out = run_env(&project, &["status"], &env);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("STALE"), "{}", stdout(&out));

    ingest(&project, "events.csv", EVENTS);
    let out = run_env(&project, &["run", "suppression"], &env);
    assert!(out.status.success());
    let out = run_env(&project, &["status", "--json"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status[0]["health"], "OK");
    assert_eq!(status[0]["schedule"], "0 2 * * *");
    assert!(status[0]["next_due_at"]
        .as_str()
        .unwrap()
        .contains("T02:00:00"));

    // Two days later with no run: stale, alerted once.
    let later = (chrono::Utc::now() + chrono::Duration::hours(50)).to_rfc3339();
    let before = receiver.received("/hook").len();
    let out = run_env(&project, &["status", "--now", &later], &env);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("STALE"));
    let hooks = receiver.received("/hook");
    assert_eq!(hooks.len(), before + 1);
    assert_eq!(hooks.last().unwrap().json()["event"], "stale");
    let out = run_env(&project, &["status", "--now", &later], &env);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        receiver.received("/hook").len(),
        before + 1,
        "once per change"
    );
    // After the reminder time, one reminder.
    let much_later = (chrono::Utc::now() + chrono::Duration::hours(63)).to_rfc3339();
    let out = run_env(&project, &["status", "--now", &much_later], &env);
    assert_eq!(out.status.code(), Some(1));
    let hooks = receiver.received("/hook");
    assert_eq!(hooks.len(), before + 2);
    assert_eq!(hooks.last().unwrap().json()["event"], "reminder");

    // A failing run: FAILING.
    project.write(
        "pipelines/suppression.toml",
        "kind = \"suppression\"\nschedule = \"0 2 * * *\"\nmax_age = \"26h\"\n\
         [params]\nexport_csv = \"exports/list.csv\"\n\
         [[gates]]\noutput = \"list\"\nmin_rows = 1000\n",
    );
    let out = run_env(&project, &["run", "suppression"], &env);
    assert_eq!(out.status.code(), Some(1));
    let out = run_env(&project, &["status", "--json"], &env);
    assert_eq!(out.status.code(), Some(1));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status[0]["health"], "FAILING");
    assert!(status[0]["reason"].as_str().unwrap().contains("min_rows"));

    let out = project.run(&["metrics"]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains("# TYPE nightshift_last_success_timestamp_seconds gauge"));
    assert!(
        text.contains("nightshift_pipeline_status{pipeline=\"suppression\",status=\"failing\"} 1")
    );
    assert!(text.contains("nightshift_last_run_duration_seconds{pipeline=\"suppression\"}"));
}

fn write_chain(project: &Project, upstream_gate: &str) {
    project.write(
        "pipelines/suppression.toml",
        &format!(
            "kind = \"suppression\"\nschedule = \"30 2 * * *\"\ntime_zone = \"Europe/Berlin\"\n\
             {upstream_gate}"
        ),
    );
    project.write(
        "pipelines/downstream.toml",
        "kind = \"suppression\"\nafter = [\"suppression\"]\n\
         [outputs]\nlist = \"downstream_list\"\nchanges = \"downstream_changes\"\n\
         pending_review = \"downstream_held\"\nsendable = \"downstream_sendable\"\n",
    );
}

#[test]
fn due_runs_catch_up_and_respect_dependencies() {
    let project = Project::new();
    ingest(&project, "events.csv", EVENTS);
    write_chain(&project, "");

    // 02:30 in Berlin is 01:30 UTC in winter.
    let report = project.json(&["run", "--due", "--now", "2026-12-01T01:31:00Z"]);
    let report = report.as_array().unwrap();
    assert_eq!(report.len(), 2, "{report:?}");
    assert_eq!(report[0]["pipeline"], "suppression");
    assert_eq!(
        report[0]["manifest"]["scheduled_for"],
        "2026-12-01T01:30:00Z"
    );
    assert_eq!(report[0]["manifest"]["trigger"], "schedule");
    assert_eq!(
        report[1]["pipeline"], "downstream",
        "runs after its upstream"
    );
    assert_eq!(report[1]["manifest"]["status"], "succeeded");

    // Nothing is due again the same night.
    let out = project.run(&["run", "--due", "--now", "2026-12-01T09:00:00Z"]);
    assert!(out.status.success());
    assert!(
        stdout(&out).contains("no pipeline is due"),
        "{}",
        stdout(&out)
    );

    // A week missed: one catch-up run covering seven windows.
    ingest(&project, "more.csv", MORE_EVENTS);
    let report = project.json(&["run", "--due", "--now", "2026-12-08T06:00:00Z"]);
    let upstream = &report[0]["manifest"];
    assert_eq!(upstream["trigger"], "catch_up");
    assert_eq!(upstream["windows"], 7);
    assert_eq!(upstream["scheduled_for"], "2026-12-08T01:30:00Z");
    assert_eq!(runs(&project, "suppression").len(), 2, "one run, not seven");

    // The upstream fails: its dependent is held back with the reason.
    write_chain(&project, "[[gates]]\noutput = \"list\"\nmin_rows = 1000\n");
    ingest(
        &project,
        "late.csv",
        "e8,c8,h@x.com,unsubscribe,,,k3,2026-12-08T10:00:00Z\n",
    );
    let out = project.run(&["run", "--due", "--now", "2026-12-09T01:45:00Z"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("pipeline suppression failed"), "{err}");
    assert!(
        err.contains("pipeline downstream not run: upstream pipeline `suppression` failed"),
        "{err}"
    );
    let held = &runs(&project, "downstream")[0];
    assert_eq!(held["status"], "skipped");
    let held = manifest(&project, "downstream", held["run_id"].as_str().unwrap());
    assert_eq!(held["blocked_by"], "suppression");

    // A cycle is refused before anything runs.
    project.write(
        "pipelines/suppression.toml",
        "kind = \"suppression\"\nafter = [\"downstream\"]\n",
    );
    let out = project.run(&["run", "--due"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cycle"), "{}", stderr(&out));
    project.write(
        "pipelines/suppression.toml",
        "kind = \"suppression\"\nafter = [\"nosuch\"]\n",
    );
    let out = project.run(&["validate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("runs after `nosuch`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn pings_mark_start_success_and_failure() {
    let project = Project::new();
    let receiver = Receiver::start(vec![]);
    project.write(
        "pipelines/suppression.toml",
        &format!(
            "kind = \"suppression\"\n[pings]\nstart = \"{0}/start\"\nsuccess = \"{0}/ok\"\n\
             failure = \"{0}/fail\"\n",
            receiver.url
        ),
    );
    let out = project.run(&["run", "suppression"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(receiver.received("/start").len(), 1);
    let fail = receiver.received("/fail");
    assert_eq!(fail.len(), 1);
    assert!(fail[0].json()["error"]
        .as_str()
        .unwrap()
        .contains("email_events"));
    assert!(receiver.received("/ok").is_empty());

    ingest(&project, "events.csv", EVENTS);
    let out = project.run(&["run", "suppression"]);
    assert!(out.status.success());
    assert_eq!(receiver.received("/start").len(), 2);
    assert_eq!(receiver.received("/ok").len(), 1);
    assert_eq!(receiver.received("/ok")[0].json()["status"], "succeeded");
}

#[test]
fn each_gate_stops_the_commit() {
    let project = Project::new();
    ingest(&project, "events.csv", EVENTS);
    let cases = [
        ("min_rows = 10", "min_rows", "at least 10 rows", "3 rows"),
        (
            "not_null = [\"expires_at\"]",
            "not_null",
            "no null in `expires_at`",
            "3 null values",
        ),
        (
            "unique = [\"source\"]",
            "unique",
            "unique (source)",
            "2 duplicate rows",
        ),
        (
            "expression = \"event_count >= 2\"",
            "expression",
            "`event_count >= 2` on every row",
            "3 rows where it does not hold",
        ),
    ];
    for (rule, check, expected, actual) in cases {
        project.write(
            "pipelines/gated.toml",
            &format!(
                "kind = \"suppression\"\n[outputs]\nlist = \"gated_list\"\nchanges = \"gated_changes\"\n\
                 pending_review = \"gated_held\"\nsendable = \"gated_sendable\"\n\
                 [[gates]]\noutput = \"list\"\n{rule}\n"
            ),
        );
        let out = project.run(&["run", "gated"]);
        assert_eq!(out.status.code(), Some(1), "{rule}");
        assert!(
            stderr(&out).contains("nothing was committed"),
            "{}",
            stderr(&out)
        );
        let run = &runs(&project, "gated")[0];
        let recorded = manifest(&project, "gated", run["run_id"].as_str().unwrap());
        let failure = &recorded["gate_failures"][0];
        assert_eq!(failure["check"], check, "{recorded}");
        assert_eq!(failure["expected"], expected, "{failure}");
        assert!(
            failure["actual"].as_str().unwrap().starts_with(actual),
            "{failure}"
        );
        assert!(
            !project.warehouse().join("tables/gated_list").exists(),
            "{rule}: nothing committed"
        );
    }

    // A gate on a column the output lacks is a mistake in the file: exit 2.
    project.write(
        "pipelines/gated.toml",
        "kind = \"suppression\"\n[outputs]\nlist = \"gated_list\"\nchanges = \"gated_changes\"\n\
         pending_review = \"gated_held\"\nsendable = \"gated_sendable\"\n\
         [[gates]]\noutput = \"list\"\nexpression = \"clickz >= 1\"\n",
    );
    let out = project.run(&["run", "gated"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("gate on output `list`: expression `clickz >= 1` cannot be evaluated"),
        "{err}"
    );
    assert!(!err.contains("Resolved plan"), "{err}");

    // The change gate needs a previous version.
    project.write(
        "pipelines/gated.toml",
        "kind = \"suppression\"\n[outputs]\nlist = \"gated_list\"\nchanges = \"gated_changes\"\n\
                 pending_review = \"gated_held\"\nsendable = \"gated_sendable\"\n\
         [[gates]]\noutput = \"list\"\nmax_change_pct = 50\n",
    );
    assert!(project.run(&["run", "gated"]).status.success());
    ingest(&project, "more.csv", MORE_EVENTS);
    let out = project.run(&["run", "gated"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("gate max_change_pct on output `list` failed: expected a change of at most 50%, got 3 to 7 rows (+133.3%)"),
        "{}",
        stderr(&out)
    );
    let history = project.json(&["history", "gated_list"]);
    assert_eq!(history.as_array().unwrap().len(), 1, "still one version");

    // A person who has looked can commit anyway; the manifest says so.
    let report = project.json(&["run", "gated", "--skip-gates"]);
    assert_eq!(report[0]["manifest"]["status"], "succeeded");
    assert_eq!(report[0]["manifest"]["gates_skipped"], true);
    assert_eq!(report[0]["manifest"]["outputs"][1]["rows"], 7);
}

#[test]
fn invalid_schedules_and_gates_are_named() {
    let project = Project::new();
    let cases = [
        ("schedule = \"61 2 * * *\"", "minute field `61`"),
        (
            "schedule = \"0 2 * * *\"\ntime_zone = \"Berlin\"",
            "Europe/Berlin",
        ),
        ("time_zone = \"UTC\"", "schedule is not"),
        ("max_age = \"26 hours\"", "unknown unit"),
        (
            "[[gates]]\noutput = \"list\"\nexpression = \"a >>> b\"",
            "invalid expression",
        ),
    ];
    for (text, expected) in cases {
        project.write(
            "pipelines/suppression.toml",
            &format!("kind = \"suppression\"\n{text}\n"),
        );
        let out = project.run(&["validate"]);
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(stderr(&out).contains(expected), "{text}: {}", stderr(&out));
    }
}

#[cfg(unix)]
#[test]
fn scheduler_runs_due_pipelines_and_stops_on_sigterm() {
    let project = Project::new();
    ingest(&project, "events.csv", EVENTS);
    // Never run by schedule: due at once.
    project.write(
        "pipelines/suppression.toml",
        "kind = \"suppression\"\nschedule = \"0 2 * * *\"\n",
    );
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_nightshift"))
        .args(["-v", "schedule", "--check-every", "1"])
        .current_dir(project.path())
        .env_remove("NIGHTSHIFT_WAREHOUSE")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let dir = project.warehouse().join("runs/suppression");
        let done = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        if done >= 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no run within 60 s");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // SAFETY: sends a signal to the child this test started.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let log = stderr(&out);
    assert!(log.contains("scheduler started"), "{log}");
    assert!(log.contains("run finished"), "{log}");
    assert!(log.contains("scheduler stopped"), "{log}");
    let run = &runs(&project, "suppression")[0];
    assert_eq!(run["status"], "succeeded");
}
