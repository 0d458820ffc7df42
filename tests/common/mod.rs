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
