//! Alerts and pings: how nightshift tells people and outside monitors what
//! happened.
//!
//! Alert channels are declared in `nightshift.toml`: a webhook with a
//! Slack-compatible body, a webhook with a generic JSON body, or a command
//! that receives the alert as JSON on its standard input. Pings are the
//! start, success and failure URLs of a pipeline, for dead-man's-switch
//! services. Any URL or header value written as `env:NAME` is read from the
//! environment variable NAME when it is used, so secrets stay out of files,
//! logs and manifests.
//!
//! Delivery is retried; a delivery that still fails is logged and recorded,
//! and never changes the outcome of the run it reports.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::manifest::Notification;

/// Attempts per delivery.
const ATTEMPTS: u32 = 3;
/// Time allowed for one HTTP request or one command.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The form of an alert channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    /// POSTs `{"text": ...}`, which Slack, Mattermost and Teams workflows
    /// accept.
    Slack,
    /// POSTs the alert as a JSON object.
    Webhook,
    /// Runs a program with the alert as JSON on its standard input.
    Command,
}

/// An alert channel of `nightshift.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AlertChannel {
    pub name: String,
    pub kind: ChannelKind,
    /// The URL of a webhook; `env:NAME` reads it from the environment.
    pub url: Option<String>,
    /// Extra HTTP headers; values may be `env:NAME`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The program and its arguments, for `kind = "command"`.
    #[serde(default)]
    pub command: Vec<String>,
}

impl AlertChannel {
    /// Checks that the channel has what its kind needs.
    pub fn validate(&self) -> Result<(), String> {
        match self.kind {
            ChannelKind::Slack | ChannelKind::Webhook if self.url.is_none() => Err(format!(
                "alert channel `{}` needs a url (or url = \"env:VARIABLE\")",
                self.name
            )),
            ChannelKind::Command if self.command.is_empty() => Err(format!(
                "alert channel `{}` needs command = [\"program\", \"argument\", ...]",
                self.name
            )),
            _ => Ok(()),
        }
    }
}

/// The event an alert reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertEvent {
    /// A run failed after the pipeline was healthy.
    Failure,
    /// The first success after a failure or staleness.
    Recovery,
    /// No successful run within the pipeline's `max_age`.
    Stale,
    /// The pipeline is still failing or stale, a reminder after the set time.
    Reminder,
}

impl AlertEvent {
    pub fn name(self) -> &'static str {
        match self {
            AlertEvent::Failure => "failure",
            AlertEvent::Recovery => "recovery",
            AlertEvent::Stale => "stale",
            AlertEvent::Reminder => "reminder",
        }
    }
}

/// One alert, as sent to every channel.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub event: AlertEvent,
    pub pipeline: String,
    /// The run the alert is about, if any.
    pub run_id: Option<String>,
    /// The pipeline's state: ok, failing or stale.
    pub state: String,
    pub error: Option<String>,
    /// The location of the run's manifest.
    pub manifest: Option<String>,
    pub last_success_at: Option<String>,
    pub at: String,
    /// One line for people.
    pub message: String,
}

impl Alert {
    fn slack_body(&self) -> Value {
        let mut text = format!(":rotating_light: nightshift {}", self.message);
        if self.event == AlertEvent::Recovery {
            text = format!(":white_check_mark: nightshift {}", self.message);
        }
        if let Some(manifest) = &self.manifest {
            text.push_str(&format!("\nmanifest: {manifest}"));
        }
        json!({ "text": text })
    }
}

/// Resolves `env:NAME` values from the environment.
fn resolve(value: &str, what: &str) -> Result<String, String> {
    match value.strip_prefix("env:") {
        Some(name) => std::env::var(name).map_err(|_| {
            format!("{what} comes from the environment variable {name}, which is not set")
        }),
        None => Ok(value.to_string()),
    }
}

/// Sends `alert` to every channel and returns what happened on each.
pub fn send_alert(channels: &[AlertChannel], alert: &Alert) -> Vec<Notification> {
    channels
        .iter()
        .map(|channel| {
            let (attempts, outcome) = match channel.kind {
                ChannelKind::Slack => post_json(channel, &alert.slack_body()),
                ChannelKind::Webhook => match serde_json::to_value(alert) {
                    Ok(body) => post_json(channel, &body),
                    Err(e) => (0, Err(e.to_string())),
                },
                ChannelKind::Command => run_command(channel, alert),
            };
            record(&channel.name, alert.event.name(), attempts, outcome)
        })
        .collect()
}

fn record(channel: &str, event: &str, attempts: u32, outcome: Result<(), String>) -> Notification {
    if let Err(error) = &outcome {
        tracing::warn!(
            channel,
            event,
            attempts,
            "notification not delivered: {error}"
        );
    } else {
        tracing::info!(channel, event, "notification delivered");
    }
    Notification {
        channel: channel.to_string(),
        event: event.to_string(),
        delivered: outcome.is_ok(),
        attempts,
        error: outcome.err(),
    }
}

fn post_json(channel: &AlertChannel, body: &Value) -> (u32, Result<(), String>) {
    let Some(url) = &channel.url else {
        return (0, Err("no url".into()));
    };
    let url = match resolve(url, "the url") {
        Ok(url) => url,
        Err(e) => return (0, Err(e)),
    };
    let mut headers = Vec::new();
    for (name, value) in &channel.headers {
        match resolve(value, &format!("header {name}")) {
            Ok(value) => headers.push((name.clone(), value)),
            Err(e) => return (0, Err(e)),
        }
    }
    post(&url, &headers, body.to_string())
}

/// POSTs a JSON body, retrying on connection errors and on 429 and 5xx
/// answers. Error texts never carry the URL, which may hold a secret.
pub fn post(url: &str, headers: &[(String, String)], body: String) -> (u32, Result<(), String>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return (0, Err(format!("cannot start the HTTP client: {e}"))),
    };
    runtime.block_on(async {
        let client = match reqwest::Client::builder().timeout(TIMEOUT).build() {
            Ok(client) => client,
            Err(e) => {
                return (
                    0,
                    Err(format!("cannot start the HTTP client: {}", e.without_url())),
                )
            }
        };
        let mut last_error = String::new();
        for attempt in 1..=ATTEMPTS {
            let mut request = client
                .post(url)
                .header("content-type", "application/json")
                .body(body.clone());
            for (name, value) in headers {
                request = request.header(name.as_str(), value.as_str());
            }
            match request.send().await {
                Ok(response) if response.status().is_success() => return (attempt, Ok(())),
                Ok(response) => {
                    let status = response.status();
                    last_error = format!("the server answered {status}");
                    if !(status.is_server_error() || status.as_u16() == 429) {
                        return (attempt, Err(last_error));
                    }
                }
                Err(e) => last_error = format!("request failed: {}", e.without_url()),
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(Duration::from_millis(250 * 2u64.pow(attempt - 1))).await;
            }
        }
        (ATTEMPTS, Err(last_error))
    })
}

fn run_command(channel: &AlertChannel, alert: &Alert) -> (u32, Result<(), String>) {
    let body = match serde_json::to_vec(alert) {
        Ok(body) => body,
        Err(e) => return (0, Err(e.to_string())),
    };
    let mut last_error = String::new();
    for attempt in 1..=ATTEMPTS {
        match run_once(&channel.command, &body) {
            Ok(()) => return (attempt, Ok(())),
            Err(e) => last_error = e,
        }
        if attempt < ATTEMPTS {
            std::thread::sleep(Duration::from_millis(250 * 2u64.pow(attempt - 1)));
        }
    }
    (ATTEMPTS, Err(last_error))
}

fn run_once(command: &[String], input: &[u8]) -> Result<(), String> {
    let (program, arguments) = command
        .split_first()
        .ok_or_else(|| "no command given".to_string())?;
    let mut child = Command::new(program)
        .args(arguments)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start `{program}`: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A program that exits without reading its input is not an error
        // as long as it succeeds.
        let _ = stdin.write_all(input);
    }
    let started = std::time::Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                let mut stderr = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                }
                let stderr = stderr.trim();
                return Err(format!(
                    "`{program}` exited with {status}{}",
                    if stderr.is_empty() {
                        String::new()
                    } else {
                        format!(": {stderr}")
                    }
                ));
            }
            Ok(None) if started.elapsed() > TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("`{program}` did not finish within {TIMEOUT:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("cannot wait for `{program}`: {e}")),
        }
    }
}

/// A pipeline's dead-man's-switch URLs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Pings {
    /// Called when a run starts.
    pub start: Option<String>,
    /// Called when a run succeeds or is skipped.
    pub success: Option<String>,
    /// Called when a run fails, with the error in the body.
    pub failure: Option<String>,
}

/// Calls one ping URL with a small JSON body, returning the record of it.
pub fn ping(url: &str, event: &str, body: &Value) -> Notification {
    let (attempts, outcome) = match resolve(url, &format!("the {event} ping url")) {
        Ok(url) => post(&url, &[], body.to_string()),
        Err(e) => (0, Err(e)),
    };
    record("ping", event, attempts, outcome)
}
