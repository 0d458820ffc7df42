//! The `enrichment` job kind against an HTTP server on 127.0.0.1 that the
//! tests start: slow answers, 429 with and without Retry-After, 500s,
//! malformed JSON, empty bodies, a required key header; and a vendor file.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{stderr, Project, Received, Reply, Server};
use nightshift::delta::Table;
use nightshift::warehouse::Warehouse;
use polars::prelude::*;
use serde_json::Value;

const KEY: &str = "k3y-that-must-stay-secret";

const CONTACTS: &str = "\
contact_id,email,company,company_domain,country
c01,ann@ok1.com,,,
c02,bob@ok1.com,,,
c03,cy@gmail.com,,,
c04,dee@mail.example,Own Name Ltd,https://www.OK2.com/about,DE
c05,eve@gone.com,,,
c06,fay@flaky.com,,,
c07,gus@throttled.com,,,
c08,hal@throttled2.com,,,
c09,ida@slow.com,,,
c10,jo@broken.com,,,
c11,kai@empty.com,,,
c12,lu@ok3.com,,,
c13,,,,
";

/// Answers like a firmographics API: the domain is the last path segment.
fn api() -> (Server, Arc<BTreeMap<String, AtomicUsize>>) {
    let calls: Arc<BTreeMap<String, AtomicUsize>> = Arc::new(
        [
            "ok1.com",
            "ok2.com",
            "ok3.com",
            "gone.com",
            "flaky.com",
            "throttled.com",
            "throttled2.com",
            "slow.com",
            "broken.com",
            "empty.com",
        ]
        .iter()
        .map(|d| (d.to_string(), AtomicUsize::new(0)))
        .collect(),
    );
    let counts = calls.clone();
    let server = Server::start(move |request: &Received| {
        if request.header("x-api-key") != Some(KEY) {
            return Reply::json(401, r#"{"error": "bad key"}"#);
        }
        let domain = request
            .path
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let n = counts
            .get(&domain)
            .map(|c| c.fetch_add(1, Ordering::SeqCst))
            .unwrap_or(0);
        let found = |employees: u64| {
            Reply::json(
                200,
                &format!(
                    r#"{{"company": {{"name": "{domain} Inc", "industry": "Software"}},
                        "metrics": {{"employees": {employees}}}, "geo": {{"country": "US"}}}}"#
                ),
            )
        };
        match domain.as_str() {
            "gone.com" => Reply::json(404, r#"{"error": "unknown"}"#),
            "flaky.com" if n == 0 => Reply::json(500, "oops"),
            "throttled.com" if n == 0 => {
                let mut reply = Reply::json(429, "");
                reply.headers.push(("retry-after".into(), "1".into()));
                reply
            }
            "throttled2.com" if n < 2 => Reply::json(429, ""),
            "slow.com" => {
                let mut reply = found(10);
                reply.delay = Duration::from_millis(1500);
                reply
            }
            "broken.com" => Reply::json(200, r#"{"company": {"name": "#),
            "empty.com" => Reply::json(200, ""),
            _ => found(120 + n as u64),
        }
    });
    (server, calls)
}

fn pipeline(project: &Project, server: &Server, extra: &str) {
    project.write(
        "pipelines/enrich.toml",
        &format!(
            "kind = \"enrichment\"\n[params]\nprovider = \"testapi\"\n{extra}\n\
             [params.http]\nurl = \"{}/v1/companies/{{domain}}\"\n\
             api_key_env = \"TEST_ENRICH_KEY\"\napi_key_header = \"X-Api-Key\"\n\
             concurrency = 4\nrequests_per_second = 200\nmax_retries = 3\n\
             timeout_seconds = 0.5\nbackoff_seconds = 0.05\n\
             [params.http.fields]\ncompany_name = \"/company/name\"\n\
             industry = \"/company/industry\"\nemployee_count = \"/metrics/employees\"\n\
             country = \"/geo/country\"\n",
            server.url
        ),
    );
}

fn setup() -> Project {
    let project = Project::new();
    let file = project.write("contacts.csv", CONTACTS);
    let out = project.run(&["ingest", "contacts", &file]);
    assert!(out.status.success(), "{}", stderr(&out));
    project
}

fn run(project: &Project, args: &[&str]) -> std::process::Output {
    project.run_with_env(args, &[("TEST_ENRICH_KEY", KEY)])
}

fn read(project: &Project, table: &str) -> DataFrame {
    let warehouse = Warehouse::open(project.warehouse().to_str().unwrap()).unwrap();
    Table::new(&warehouse, table).unwrap().read(None).unwrap()
}

fn statuses(project: &Project) -> BTreeMap<String, String> {
    let cache = read(project, "firmographics");
    let domains = cache.column("domain").unwrap().str().unwrap().clone();
    let status = cache.column("status").unwrap().str().unwrap().clone();
    domains
        .iter()
        .zip(status.iter())
        .map(|(d, s)| (d.unwrap().to_string(), s.unwrap().to_string()))
        .collect()
}

fn last_manifest(project: &Project) -> Value {
    let runs = project.json(&["runs", "enrich"]);
    let run_id = runs[0]["run_id"].as_str().unwrap().to_string();
    let path = project
        .warehouse()
        .join(format!("runs/enrich/{run_id}.json"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn every_domain_ends_found_not_found_or_error() {
    let project = setup();
    let (server, calls) = api();
    pipeline(&project, &server, "max_failure_ratio = 0.5");
    let out = run(&project, &["-vv", "run", "enrich"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains(KEY), "the key must not be logged");

    let expected: BTreeMap<String, String> = [
        ("ok1.com", "found"),
        ("ok2.com", "found"),
        ("ok3.com", "found"),
        ("gone.com", "not_found"),
        ("flaky.com", "found"),
        ("throttled.com", "found"),
        ("throttled2.com", "found"),
        ("slow.com", "error"),
        ("broken.com", "error"),
        ("empty.com", "error"),
    ]
    .iter()
    .map(|(d, s)| (d.to_string(), s.to_string()))
    .collect();
    assert_eq!(
        statuses(&project),
        expected,
        "gmail.com is free mail, not a company"
    );

    // One request per domain however many contacts share it; retries as
    // the answers asked.
    let count = |d: &str| calls[d].load(Ordering::SeqCst);
    assert_eq!(count("ok1.com"), 1);
    assert_eq!(count("gone.com"), 1);
    assert_eq!(count("flaky.com"), 2);
    assert_eq!(count("throttled.com"), 2);
    assert_eq!(count("throttled2.com"), 3);
    assert_eq!(
        count("slow.com"),
        4,
        "a timeout is retried up to max_retries"
    );
    assert_eq!(count("broken.com"), 1, "malformed JSON is not retried");
    // Retry-After: 1 was honoured.
    let throttled: Vec<_> = server.received("/v1/companies/throttled.com");
    assert_eq!(throttled.len(), 2);
    let waited = throttled[1].at - throttled[0].at;
    assert!(waited >= Duration::from_millis(950), "{waited:?}");

    let manifest = last_manifest(&project);
    assert!(!manifest.to_string().contains(KEY));
    let metrics = &manifest["metrics"];
    assert_eq!(metrics["domains"], 10);
    assert_eq!(metrics["domains_requested"], 10);
    assert_eq!(metrics["domains_found"], 6);
    assert_eq!(metrics["domains_not_found"], 1);
    assert_eq!(metrics["domains_error"], 3);
    assert_eq!(metrics["http"]["throttled"], 3);

    let cache = read(&project, "firmographics");
    let errors = cache
        .clone()
        .lazy()
        .filter(col("status").eq(lit("error")))
        .select([col("domain"), col("error")])
        .sort(["domain"], Default::default())
        .collect()
        .unwrap();
    let messages: Vec<String> = errors
        .column("error")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .map(|m| m.unwrap().to_string())
        .collect();
    assert!(messages[0].contains("not JSON"), "{messages:?}");
    assert!(messages[1].contains("empty body"), "{messages:?}");
    assert!(messages[2].contains("timeout_seconds"), "{messages:?}");

    // Contacts: fill empty fields only; sources recorded.
    let enriched = read(&project, "contacts_enriched");
    assert_eq!(enriched.height(), 13);
    let c04 = enriched
        .clone()
        .lazy()
        .filter(col("contact_id").eq(lit("c04")))
        .collect()
        .unwrap();
    let get =
        |frame: &DataFrame, name: &str| frame.column(name).unwrap().get(0).unwrap().into_static();
    assert_eq!(
        get(&c04, "domain"),
        AnyValue::String("ok2.com").into_static()
    );
    assert_eq!(
        get(&c04, "company_name"),
        AnyValue::String("Own Name Ltd").into_static()
    );
    assert_eq!(
        get(&c04, "company_name_source"),
        AnyValue::String("contacts").into_static()
    );
    assert_eq!(
        get(&c04, "industry"),
        AnyValue::String("Software").into_static()
    );
    assert_eq!(
        get(&c04, "industry_source"),
        AnyValue::String("testapi").into_static()
    );
    assert_eq!(get(&c04, "country"), AnyValue::String("DE").into_static());
    assert_eq!(get(&c04, "employee_count"), AnyValue::Int64(120));
}

#[test]
fn failed_requests_fail_the_run_after_keeping_the_answers() {
    let project = setup();
    let (server, calls) = api();
    pipeline(&project, &server, "");
    let out = run(&project, &["run", "enrich"]);
    assert_eq!(out.status.code(), Some(1), "3 of 10 failed, over 5%");
    assert!(
        stderr(&out).contains(
            "3 of 10 enrichment requests failed (30.0%), more than max_failure_ratio 5.0%"
        ),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("the results received were committed"));
    let manifest = last_manifest(&project);
    assert_eq!(manifest["status"], "failed");
    assert_eq!(statuses(&project).len(), 10, "every answer was kept");

    // The next run asks only for the failed domains: the rest are fresh.
    let before: usize = calls.values().map(|c| c.load(Ordering::SeqCst)).sum();
    let out = run(&project, &["run", "enrich", "--force"]);
    assert_eq!(out.status.code(), Some(1));
    let after: usize = calls.values().map(|c| c.load(Ordering::SeqCst)).sum();
    let requested = last_manifest(&project)["metrics"]["domains_requested"].clone();
    assert_eq!(requested, 3);
    assert_eq!(calls["ok1.com"].load(Ordering::SeqCst), 1);
    assert_eq!(
        after - before,
        4 + 1 + 1,
        "slow.com retried, the other two once"
    );
}

#[test]
fn the_budget_defers_the_rest_to_the_next_run() {
    let project = setup();
    let (server, _) = api();
    pipeline(&project, &server, "max_failure_ratio = 1.0");
    // Three requests per run, retries included.
    let text = std::fs::read_to_string(project.path().join("pipelines/enrich.toml")).unwrap();
    project.write(
        "pipelines/enrich.toml",
        &text.replace("max_retries = 3\n", "max_retries = 3\nrequest_budget = 3\n"),
    );
    let out = run(&project, &["run", "enrich"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let metrics = last_manifest(&project)["metrics"].clone();
    assert_eq!(metrics["http"]["requests"], 3);
    let pending = statuses(&project)
        .values()
        .filter(|s| s.as_str() == "pending")
        .count();
    assert!(pending >= 7, "{:?}", statuses(&project));
    assert_eq!(
        statuses(&project).len(),
        10,
        "deferred domains are kept as pending"
    );
    for _ in 0..12 {
        let out = run(&project, &["run", "enrich", "--force"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let done = statuses(&project);
    assert!(done.values().all(|s| s != "pending"), "{done:?}");
}

#[test]
fn overwrite_list_and_changes_between_runs() {
    let project = setup();
    let (server, _) = api();
    pipeline(
        &project,
        &server,
        "max_failure_ratio = 1.0\nttl_days = 0\noverwrite = [\"country\"]",
    );
    let out = run(&project, &["run", "enrich"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let enriched = read(&project, "contacts_enriched");
    let c04 = enriched
        .lazy()
        .filter(col("contact_id").eq(lit("c04")))
        .collect()
        .unwrap();
    assert_eq!(
        c04.column("country").unwrap().get(0).unwrap(),
        AnyValue::String("US")
    );
    assert_eq!(
        c04.column("country_source").unwrap().get(0).unwrap(),
        AnyValue::String("testapi")
    );

    // With a time to live of 0 every domain is asked again; the employee
    // counts move by one.
    let out = run(&project, &["run", "enrich", "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let changes = read(&project, "firmographic_changes");
    let ok1 = changes
        .lazy()
        .filter(col("domain").eq(lit("ok1.com")))
        .collect()
        .unwrap();
    assert_eq!(ok1.height(), 1, "{ok1}");
    assert_eq!(
        ok1.column("field").unwrap().get(0).unwrap(),
        AnyValue::String("employee_count")
    );
    assert_eq!(
        ok1.column("old_value").unwrap().get(0).unwrap(),
        AnyValue::String("120")
    );
    assert_eq!(
        ok1.column("new_value").unwrap().get(0).unwrap(),
        AnyValue::String("121")
    );
}

#[test]
fn a_vendor_file_answers_by_domain() {
    let project = setup();
    let vendor = project.write(
        "vendor.csv",
        "Domain,Name,Employees\nOK1.com,Ok One,50\nwww.ok3.com,Ok Three,7\n",
    );
    project.write(
        "pipelines/enrich.toml",
        &format!(
            "kind = \"enrichment\"\n[params]\nprovider = \"vendor-2026-q4\"\n\
             [params.file]\npath = \"{vendor}\"\ndomain_column = \"Domain\"\n\
             fields = {{ company_name = \"Name\", employee_count = \"Employees\" }}\n"
        ),
    );
    let out = project.run(&["run", "enrich"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = statuses(&project);
    assert_eq!(status["ok1.com"], "found");
    assert_eq!(status["ok3.com"], "found");
    assert_eq!(status["gone.com"], "not_found");
    let cache = read(&project, "firmographics")
        .lazy()
        .filter(col("domain").eq(lit("ok3.com")))
        .collect()
        .unwrap();
    assert_eq!(
        cache.column("employee_count").unwrap().get(0).unwrap(),
        AnyValue::Int64(7)
    );
    assert_eq!(
        cache.column("provider").unwrap().get(0).unwrap(),
        AnyValue::String("vendor-2026-q4")
    );
}

#[test]
fn missing_key_and_bad_settings_are_named() {
    let project = setup();
    let (server, calls) = api();
    pipeline(&project, &server, "");
    let out = project.run(&["run", "enrich"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("TEST_ENRICH_KEY, which is not set"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        calls
            .values()
            .map(|c| c.load(Ordering::SeqCst))
            .sum::<usize>(),
        0
    );

    let out = run(&project, &["run", "enrich", "--dry-run", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report[0]["manifest"]["metrics"]["domains_to_request"], 10);
    assert_eq!(
        calls
            .values()
            .map(|c| c.load(Ordering::SeqCst))
            .sum::<usize>(),
        0,
        "a dry run requests nothing"
    );

    let cases = [
        ("[params]\n", "no provider"),
        (
            "[params.http]\nurl = \"http://127.0.0.1/companies\"\nfields = { industry = \"/i\" }\n",
            "no {domain} placeholder",
        ),
        (
            "[params.http]\nurl = \"http://127.0.0.1/{domain}\"\nfields = { headcount = \"/h\" }\n",
            "unknown field `headcount`",
        ),
        (
            "[params.http]\nurl = \"http://127.0.0.1/{domain}\"\nfields = { industry = \"i\" }\n",
            "not a JSON pointer",
        ),
    ];
    for (text, expected) in cases {
        project.write(
            "pipelines/enrich.toml",
            &format!("kind = \"enrichment\"\n{text}"),
        );
        let out = project.run(&["validate"]);
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(stderr(&out).contains(expected), "{text}: {}", stderr(&out));
    }
}
