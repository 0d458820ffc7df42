//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A temporary project folder with a local warehouse.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    /// Creates a project with nightshift.toml and the standard pipelines.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let project = Self { dir };
        let out = project.run(&["init"]);
        assert!(out.status.success(), "init failed: {}", stderr(&out));
        project
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn warehouse(&self) -> PathBuf {
        self.path().join("warehouse")
    }

    /// Writes `text` to `name` in the project folder and returns its path.
    pub fn write(&self, name: &str, text: &str) -> String {
        let path = self.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    /// Runs the binary in the project folder.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with_env(args, &[])
    }

    pub fn run_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_nightshift"));
        command
            .args(args)
            .current_dir(self.path())
            .env_remove("NIGHTSHIFT_WAREHOUSE");
        for (key, value) in env {
            command.env(key, value);
        }
        command.output().unwrap()
    }

    /// Runs the binary with `--json`, expecting success, and parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.run(&all);
        assert!(
            out.status.success(),
            "nightshift {args:?} failed with {:?}:\n{}",
            out.status.code(),
            stderr(&out)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "invalid JSON from {args:?}: {e}\n{}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

/// Returns a text column's values, with an empty string for each null.
pub fn strings(frame: &polars::prelude::DataFrame, name: &str) -> Vec<String> {
    frame
        .column(name)
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .map(|value| value.unwrap_or_default().to_string())
        .collect()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Returns the S3 test endpoint, or `None` (after saying so) when the S3
/// test server is not running. With NIGHTSHIFT_REQUIRE_S3=1, as the test
/// command sets it, a missing server fails the test instead.
pub fn s3_endpoint() -> Option<String> {
    match std::env::var("NIGHTSHIFT_TEST_S3_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => Some(endpoint),
        _ => {
            if std::env::var("NIGHTSHIFT_REQUIRE_S3").as_deref() == Ok("1") {
                panic!("NIGHTSHIFT_TEST_S3_ENDPOINT is not set; scripts/test starts the S3 test server");
            }
            eprintln!(
                "skipped: NIGHTSHIFT_TEST_S3_ENDPOINT is not set; run scripts/test for S3 tests"
            );
            None
        }
    }
}

/// Returns a fresh S3 warehouse URL in the test bucket.
pub fn s3_warehouse(test: &str) -> String {
    format!("s3://nightshift-test/{test}-{}", uuid::Uuid::now_v7())
}

pub const EVENTS_HEADER: &str =
    "event_id,contact_id,email,event_type,bounce_type,reason,campaign_id,occurred_at\n";

/// One request the test receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// When the request arrived.
    pub at: std::time::Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body of {} is not JSON: {e}: {}", self.path, self.body))
    }
}

/// An HTTP server on 127.0.0.1 that records every request and answers
/// with the next status of `statuses` (200 once they run out).
pub struct Receiver {
    pub url: String,
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
}

impl Receiver {
    pub fn start(statuses: Vec<u16>) -> Self {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = requests.clone();
        let statuses = std::sync::Arc::new(std::sync::Mutex::new(statuses));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or_default().to_string();
                let path = parts.next().unwrap_or_default().to_string();
                let mut headers = Vec::new();
                let mut length = 0usize;
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) == 0 {
                        break;
                    }
                    let header = header.trim_end();
                    if header.is_empty() {
                        break;
                    }
                    if let Some((name, value)) = header.split_once(':') {
                        if name.eq_ignore_ascii_case("content-length") {
                            length = value.trim().parse().unwrap_or(0);
                        }
                        headers.push((name.trim().to_string(), value.trim().to_string()));
                    }
                }
                let mut body = vec![0u8; length];
                let _ = reader.read_exact(&mut body);
                seen.lock().unwrap().push(Received {
                    method,
                    path,
                    headers,
                    body: String::from_utf8_lossy(&body).into_owned(),
                    at: std::time::Instant::now(),
                });
                let status = {
                    let mut statuses = statuses.lock().unwrap();
                    if statuses.is_empty() {
                        200
                    } else {
                        statuses.remove(0)
                    }
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                );
            }
        });
        Self { url, requests }
    }

    /// The requests so far whose path starts with `prefix`.
    pub fn received(&self, prefix: &str) -> Vec<Received> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path.starts_with(prefix))
            .cloned()
            .collect()
    }
}

/// An answer of [`Server`].
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Waits this long before answering.
    pub delay: std::time::Duration,
}

impl Reply {
    pub fn json(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into(),
            delay: std::time::Duration::ZERO,
        }
    }
}

type Handler = dyn Fn(&Received) -> Reply + Send + Sync;

/// An HTTP server on 127.0.0.1 answering each request, one thread per
/// connection, with what `handler` returns; it records every request.
pub struct Server {
    pub url: String,
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
}

impl Server {
    pub fn start(handler: impl Fn(&Received) -> Reply + Send + Sync + 'static) -> Self {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = requests.clone();
        let handler: std::sync::Arc<Handler> = std::sync::Arc::new(handler);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let seen = seen.clone();
                let handler = handler.clone();
                std::thread::spawn(move || {
                    let mut writer = stream.try_clone().unwrap();
                    let mut reader = BufReader::new(stream);
                    // Keep-alive: serve requests until the client closes.
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let mut parts = line.split_whitespace();
                        let method = parts.next().unwrap_or_default().to_string();
                        let path = parts.next().unwrap_or_default().to_string();
                        let mut headers = Vec::new();
                        let mut length = 0usize;
                        loop {
                            let mut header = String::new();
                            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                                return;
                            }
                            let header = header.trim_end();
                            if header.is_empty() {
                                break;
                            }
                            if let Some((name, value)) = header.split_once(':') {
                                if name.eq_ignore_ascii_case("content-length") {
                                    length = value.trim().parse().unwrap_or(0);
                                }
                                headers.push((name.trim().to_string(), value.trim().to_string()));
                            }
                        }
                        let mut body = vec![0u8; length];
                        if reader.read_exact(&mut body).is_err() {
                            return;
                        }
                        let request = Received {
                            method,
                            path,
                            headers,
                            body: String::from_utf8_lossy(&body).into_owned(),
                            at: std::time::Instant::now(),
                        };
                        seen.lock().unwrap().push(request.clone());
                        let reply = handler(&request);
                        std::thread::sleep(reply.delay);
                        let mut text = format!(
                            "HTTP/1.1 {} X\r\ncontent-length: {}\r\n",
                            reply.status,
                            reply.body.len()
                        );
                        for (name, value) in &reply.headers {
                            text.push_str(&format!("{name}: {value}\r\n"));
                        }
                        text.push_str("\r\n");
                        text.push_str(&reply.body);
                        if writer.write_all(text.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { url, requests }
    }

    /// The requests so far whose path starts with `prefix`.
    pub fn received(&self, prefix: &str) -> Vec<Received> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path.starts_with(prefix))
            .cloned()
            .collect()
    }
}
