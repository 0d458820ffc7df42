//! Monitoring: each pipeline's health (OK, FAILING or STALE), alerts on
//! changes of health, and metrics in the Prometheus text format.
//!
//! Health comes from the run manifests alone. A pipeline is FAILING when
//! its latest run that did something failed, and STALE when it has a
//! `max_age` and no successful run within it. A run skipped because its
//! inputs were unchanged counts as a success: the outputs are current. A
//! run held back by a failed upstream pipeline counts as neither.
//!
//! The last health that was alerted on is kept at
//! `<warehouse>/alerts/<pipeline>.json`, so that alerts go out once per
//! change, with a reminder after `alert_reminder_hours`.

use bytes::Bytes;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::Config;
use crate::error::Result;
use crate::manifest::{self, Manifest, Notification, Status};
use crate::notify::{self, Alert, AlertEvent};
use crate::pipeline::Pipeline;
use crate::warehouse::Warehouse;

/// A pipeline's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Health {
    Ok,
    Failing,
    Stale,
}

impl Health {
    pub fn name(self) -> &'static str {
        match self {
            Health::Ok => "OK",
            Health::Failing => "FAILING",
            Health::Stale => "STALE",
        }
    }
}

/// The latest run, as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub run_id: String,
    pub status: Status,
    pub started_at: DateTime<Utc>,
    pub elapsed_seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped_reason: Option<String>,
}

/// A pipeline's status.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineStatus {
    pub pipeline: String,
    pub kind: String,
    pub schedule: Option<String>,
    pub time_zone: Option<String>,
    pub max_age_seconds: Option<i64>,
    pub last_run: Option<RunSummary>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub next_due_at: Option<DateTime<Utc>>,
    pub health: Health,
    pub failing: bool,
    pub stale: bool,
    /// Why the pipeline is not OK.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Rows of the outputs the latest successful run committed.
    pub rows_written: u64,
}

/// Returns true when a manifest records a run that did its work: it
/// succeeded, or was skipped because nothing had changed.
fn is_success(m: &Manifest) -> bool {
    m.status == Status::Succeeded || (m.status == Status::Skipped && m.blocked_by.is_none())
}

/// The time the newest scheduled run served, the schedule's reference
/// point for what is due.
pub fn last_scheduled(manifests: &[Manifest]) -> Option<DateTime<Utc>> {
    manifests.iter().filter_map(|m| m.scheduled_for).max()
}

/// Computes the status of `pipeline` from its manifests at `now`.
pub fn status_of(
    pipeline: &Pipeline,
    manifests: &[Manifest],
    now: DateTime<Utc>,
) -> PipelineStatus {
    let last_run = manifests
        .iter()
        .max_by_key(|m| (m.started_at, m.run_id.clone()));
    let last_effective = manifests
        .iter()
        .filter(|m| !(m.status == Status::Skipped))
        .max_by_key(|m| (m.started_at, m.run_id.clone()));
    let last_success = manifests
        .iter()
        .filter(|m| is_success(m))
        .max_by_key(|m| m.ended_at);
    let failing = last_effective.is_some_and(|m| m.status == Status::Failed)
        && last_success.is_none_or(|s| last_effective.is_some_and(|f| f.started_at > s.started_at));
    let stale = match (pipeline.max_age, last_success) {
        (Some(max_age), Some(success)) => now - success.ended_at > max_age,
        (Some(_), None) => true,
        (None, _) => false,
    };
    let health = if failing {
        Health::Failing
    } else if stale {
        Health::Stale
    } else {
        Health::Ok
    };
    let reason = if failing {
        last_effective.map(|m| {
            format!(
                "run {} failed: {}",
                m.run_id,
                m.error.as_deref().unwrap_or("no error recorded")
            )
        })
    } else if stale {
        Some(match last_success {
            Some(success) => format!(
                "no successful run since {}, longer than max_age",
                success.ended_at.format("%Y-%m-%d %H:%M UTC")
            ),
            None => "no successful run yet, and max_age is set".to_string(),
        })
    } else {
        None
    };
    let next_due_at = pipeline.schedule.as_ref().and_then(|schedule| {
        // A pipeline never run by schedule is due at its latest scheduled
        // time, as `run --due` sees it.
        let since = last_scheduled(manifests)
            .unwrap_or(now - Duration::days(crate::schedule::FIRST_RUN_LOOKBACK_DAYS));
        match schedule.latest_between(since, now) {
            Some(due) => Some(due),
            None => schedule.next_after(now),
        }
    });
    let rows_written = last_success
        .map(|m| {
            m.outputs
                .iter()
                .filter(|o| o.version.is_some())
                .filter_map(|o| o.rows)
                .sum()
        })
        .unwrap_or(0);
    PipelineStatus {
        pipeline: pipeline.name.clone(),
        kind: pipeline.kind.name.to_string(),
        schedule: pipeline
            .schedule
            .as_ref()
            .map(|s| s.expression().to_string()),
        time_zone: pipeline
            .schedule
            .as_ref()
            .map(|s| s.time_zone().to_string()),
        max_age_seconds: pipeline.max_age.map(|d| d.num_seconds()),
        last_run: last_run.map(|m| RunSummary {
            run_id: m.run_id.clone(),
            status: m.status,
            started_at: m.started_at,
            elapsed_seconds: m.elapsed_seconds,
            error: m.error.clone(),
            skipped_reason: m.skipped_reason.clone(),
        }),
        last_success_at: last_success.map(|m| m.ended_at),
        next_due_at,
        health,
        failing,
        stale,
        reason,
        rows_written,
    }
}

/// Reads the manifests of every pipeline and computes their status.
pub fn statuses(
    warehouse: &Warehouse,
    pipelines: &[Pipeline],
    now: DateTime<Utc>,
) -> Result<Vec<(PipelineStatus, Option<f64>)>> {
    let mut out = Vec::new();
    for pipeline in pipelines {
        let manifests = manifest::list(warehouse, &pipeline.name)?;
        let duration = manifests
            .iter()
            .max_by_key(|m| m.started_at)
            .map(|m| m.elapsed_seconds);
        out.push((status_of(pipeline, &manifests, now), duration));
    }
    Ok(out)
}

/// The health last alerted on, per pipeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlertState {
    pub health: Health,
    pub since: DateTime<Utc>,
    pub last_alert_at: Option<DateTime<Utc>>,
}

fn state_path(warehouse: &Warehouse, pipeline: &str) -> object_store::path::Path {
    warehouse.path(&format!("alerts/{pipeline}.json"))
}

fn load_state(warehouse: &Warehouse, pipeline: &str) -> Option<AlertState> {
    let bytes = warehouse.get(&state_path(warehouse, pipeline)).ok()??;
    serde_json::from_slice(&bytes).ok()
}

fn save_state(warehouse: &Warehouse, pipeline: &str, state: &AlertState) {
    let saved = serde_json::to_vec_pretty(state)
        .map_err(crate::error::Error::from)
        .and_then(|bytes| warehouse.put(&state_path(warehouse, pipeline), Bytes::from(bytes)));
    if let Err(e) = saved {
        tracing::warn!(pipeline, "cannot record the alert state: {e}");
    }
}

/// Decides which alert, if any, a change from `old` to `new` health calls
/// for at `now`.
pub fn alert_event(
    old: Option<&AlertState>,
    new: Health,
    now: DateTime<Utc>,
    reminder: Option<Duration>,
) -> Option<AlertEvent> {
    let previous = old.map(|s| s.health).unwrap_or(Health::Ok);
    match (previous, new) {
        (Health::Ok, Health::Ok) => None,
        (_, Health::Ok) => Some(AlertEvent::Recovery),
        (Health::Ok, Health::Failing) => Some(AlertEvent::Failure),
        (Health::Ok, Health::Stale) => Some(AlertEvent::Stale),
        (Health::Stale, Health::Failing) => Some(AlertEvent::Failure),
        // Failing then stale is the same trouble going on: no new alert
        // but the reminder.
        (Health::Failing, Health::Failing)
        | (Health::Stale, Health::Stale)
        | (Health::Failing, Health::Stale) => {
            let last = old.and_then(|s| s.last_alert_at.or(Some(s.since)))?;
            match reminder {
                Some(after) if now - last >= after => Some(AlertEvent::Reminder),
                _ => None,
            }
        }
    }
}

/// Where a run's manifest is, for alerts.
pub fn manifest_uri(warehouse: &Warehouse, manifest: &Manifest) -> String {
    warehouse.uri(&warehouse.path(&format!(
        "runs/{}/{}.json",
        manifest.pipeline, manifest.run_id
    )))
}

/// Moves a pipeline to `health`, alerting every channel when the change
/// calls for it. Returns the notifications sent.
pub fn update_health(
    warehouse: &Warehouse,
    config: &Config,
    status: &PipelineStatus,
    run: Option<&Manifest>,
    now: DateTime<Utc>,
) -> Vec<Notification> {
    // Without channels nothing is alerted, so nothing is recorded as
    // alerted: channels added later still hear of the current trouble.
    if config.alerts.is_empty() {
        return Vec::new();
    }
    let old = load_state(warehouse, &status.pipeline);
    let reminder = config
        .alert_reminder_hours
        .map(|h| Duration::seconds((h * 3600.0) as i64));
    let event = alert_event(old.as_ref(), status.health, now, reminder);
    let changed = old.as_ref().map(|s| s.health).unwrap_or(Health::Ok) != status.health;
    let mut notifications = Vec::new();
    if let Some(event) = event {
        let alert = Alert {
            event,
            pipeline: status.pipeline.clone(),
            run_id: run.map(|m| m.run_id.clone()),
            state: status.health.name().to_lowercase(),
            error: match status.health {
                Health::Ok => None,
                _ => status.reason.clone(),
            },
            manifest: run.map(|m| manifest_uri(warehouse, m)),
            last_success_at: status.last_success_at.map(|t| t.to_rfc3339()),
            at: now.to_rfc3339(),
            message: alert_message(event, status),
        };
        tracing::info!(pipeline = %status.pipeline, event = event.name(), "alert");
        notifications = notify::send_alert(&config.alerts, &alert);
    }
    if changed || event.is_some() {
        let since = match (&old, changed) {
            (Some(old), false) => old.since,
            _ => now,
        };
        let last_alert_at = if event.is_some() {
            Some(now)
        } else {
            old.as_ref().and_then(|s| s.last_alert_at)
        };
        save_state(
            warehouse,
            &status.pipeline,
            &AlertState {
                health: status.health,
                since,
                last_alert_at,
            },
        );
    }
    notifications
}

fn alert_message(event: AlertEvent, status: &PipelineStatus) -> String {
    let reason = status.reason.clone().unwrap_or_default();
    match event {
        AlertEvent::Failure => format!("pipeline `{}` is failing: {reason}", status.pipeline),
        AlertEvent::Recovery => format!(
            "pipeline `{}` recovered: its run succeeded",
            status.pipeline
        ),
        AlertEvent::Stale => format!("pipeline `{}` is stale: {reason}", status.pipeline),
        AlertEvent::Reminder => format!(
            "pipeline `{}` is still {}: {reason}",
            status.pipeline,
            status.health.name()
        ),
    }
}

/// Checks every pipeline's staleness at `now` and alerts on changes.
pub fn check_health(
    warehouse: &Warehouse,
    config: &Config,
    pipelines: &[Pipeline],
    now: DateTime<Utc>,
) -> Result<Vec<PipelineStatus>> {
    let mut out = Vec::new();
    for pipeline in pipelines {
        let manifests = manifest::list(warehouse, &pipeline.name)?;
        let status = status_of(pipeline, &manifests, now);
        let latest = manifests.iter().max_by_key(|m| m.started_at);
        update_health(warehouse, config, &status, latest, now);
        out.push(status);
    }
    Ok(out)
}

/// Renders status as Prometheus text, for node_exporter's textfile
/// collector or any scraper.
pub fn prometheus_text(statuses: &[(PipelineStatus, Option<f64>)]) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, rows: Vec<(String, f64)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for (labels, value) in rows {
            out.push_str(&format!("{name}{{{labels}}} {value}\n"));
        }
    };
    let label = |s: &PipelineStatus| format!("pipeline=\"{}\"", escape_label(&s.pipeline));
    metric(
        "nightshift_last_success_timestamp_seconds",
        "Unix time of the pipeline's latest successful run (0: never).",
        statuses
            .iter()
            .map(|(s, _)| {
                (
                    label(s),
                    s.last_success_at
                        .map(|t| t.timestamp() as f64)
                        .unwrap_or(0.0),
                )
            })
            .collect(),
    );
    metric(
        "nightshift_last_run_duration_seconds",
        "Wall time of the pipeline's latest run.",
        statuses
            .iter()
            .filter_map(|(s, d)| d.map(|d| (label(s), d)))
            .collect(),
    );
    metric(
        "nightshift_rows_written",
        "Rows of the outputs the latest successful run committed.",
        statuses
            .iter()
            .map(|(s, _)| (label(s), s.rows_written as f64))
            .collect(),
    );
    let mut rows = Vec::new();
    for (s, _) in statuses {
        for health in [Health::Ok, Health::Failing, Health::Stale] {
            rows.push((
                format!("{},status=\"{}\"", label(s), health.name().to_lowercase()),
                if s.health == health { 1.0 } else { 0.0 },
            ));
        }
    }
    metric(
        "nightshift_pipeline_status",
        "1 for the pipeline's current status (ok, failing or stale), 0 otherwise.",
        rows,
    );
    out
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes the metrics to `config.metrics_file`, if set, replacing the file
/// in one step so that a collector never reads half of it.
pub fn write_metrics_file(
    warehouse: &Warehouse,
    config: &Config,
    pipelines: &[Pipeline],
    now: DateTime<Utc>,
) -> Result<()> {
    let Some(path) = &config.metrics_file else {
        return Ok(());
    };
    let text = prometheus_text(&statuses(warehouse, pipelines, now)?);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let partial = path.with_extension("prom.partial");
    std::fs::write(&partial, text)?;
    std::fs::rename(&partial, path)?;
    Ok(())
}

/// Sends one of a pipeline's pings, if it has that URL.
pub fn ping(url: Option<&String>, event: &str, manifest: &Manifest) -> Option<Notification> {
    let url = url?;
    let body = json!({
        "pipeline": manifest.pipeline,
        "run_id": manifest.run_id,
        "status": manifest.status,
        "error": manifest.error,
    });
    Some(notify::ping(url, event, &body))
}
