//! Scheduling: which pipelines are due, running them in dependency order
//! with alerts and pings, and the long-running scheduler.
//!
//! A pipeline is due when a scheduled time has come since the scheduled
//! time its last scheduled run served (or, for a pipeline never run by
//! schedule, when any scheduled time has come). Missed windows collapse
//! into one catch-up run, whose manifest says how many windows it covers.

pub mod cron;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Duration, Utc};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::manifest::{self, Manifest, Status, Trigger};
use crate::monitor;
use crate::pipeline::{self, Pipeline};
use crate::runner::{self, RunOptions, RunReport};
use crate::warehouse::Warehouse;

/// How far back a never-run pipeline looks for its latest scheduled time.
pub const FIRST_RUN_LOOKBACK_DAYS: i64 = 400;

/// A scheduled run that has come due.
#[derive(Debug, Clone, PartialEq)]
pub struct Due {
    /// The latest scheduled time that has come.
    pub scheduled_for: DateTime<Utc>,
    /// Scheduled times since the last scheduled run (1 when none was
    /// missed).
    pub windows: usize,
}

/// Returns the due run of `pipeline` at `now`, if any.
pub fn due(pipeline: &Pipeline, manifests: &[Manifest], now: DateTime<Utc>) -> Option<Due> {
    let schedule = pipeline.schedule.as_ref()?;
    match monitor::last_scheduled(manifests) {
        Some(since) => {
            let scheduled_for = schedule.latest_between(since, now)?;
            Some(Due {
                scheduled_for,
                windows: schedule.count_between(since, now, 100_000).max(1),
            })
        }
        None => {
            let since = now - Duration::days(FIRST_RUN_LOOKBACK_DAYS);
            let scheduled_for = schedule.latest_between(since, now)?;
            Some(Due {
                scheduled_for,
                windows: 1,
            })
        }
    }
}

/// Runs `pipeline` with its pings and alerts: a start ping, the run, then
/// the alert its new health calls for and a success or failure ping, all
/// recorded in the manifest.
pub fn run_monitored(
    warehouse: &Warehouse,
    config: &Config,
    pipeline: &Pipeline,
    options: &RunOptions,
) -> Result<RunReport> {
    let mut start_ping = None;
    if !options.dry_run {
        if let Some(url) = &pipeline.pings.start {
            let started = runner::new_manifest(pipeline, options);
            start_ping = monitor::ping(Some(url), "start", &started);
        }
    }
    let mut finish = |manifest: &mut Manifest| {
        manifest.notifications.extend(start_ping.take());
        let ping = match manifest.status {
            Status::Failed => monitor::ping(pipeline.pings.failure.as_ref(), "failure", manifest),
            _ => monitor::ping(pipeline.pings.success.as_ref(), "success", manifest),
        };
        manifest.notifications.extend(ping);
        // A run skipped because nothing changed leaves the health as it is.
        if manifest.status == Status::Skipped {
            return;
        }
        let mut manifests = manifest::list(warehouse, &pipeline.name).unwrap_or_default();
        manifests.push(manifest.clone());
        let status = monitor::status_of(pipeline, &manifests, manifest.ended_at);
        let sent = monitor::update_health(
            warehouse,
            config,
            &status,
            Some(manifest),
            manifest.ended_at,
        );
        manifest.notifications.extend(sent);
    };
    runner::run_pipeline_with(warehouse, pipeline, options, &mut finish)
}

/// What happened to one pipeline in a cycle of due runs.
#[derive(Debug)]
pub enum Outcome {
    /// The run ended (succeeded or skipped).
    Ran(Box<RunReport>),
    /// The run failed.
    Failed {
        error: Error,
        manifest: Option<Box<Manifest>>,
    },
    /// An upstream pipeline failed, so this one did not run.
    Blocked(Box<Manifest>),
}

impl Outcome {
    /// True for a run skipped because nothing changed.
    fn skipped(&self) -> bool {
        matches!(self, Outcome::Ran(report) if report.manifest.status == Status::Skipped)
    }
}

/// Runs every pipeline that is due at `now`, upstream pipelines first.
/// A pipeline without a schedule that runs `after` others runs when one of
/// them ran in this cycle. A pipeline whose upstream failed, in this
/// cycle or in its latest run, is held back with a skipped manifest that
/// names the failure. `stop` ends the cycle between runs.
pub fn run_due(
    warehouse: &Warehouse,
    config: &Config,
    pipelines: &[Pipeline],
    now: DateTime<Utc>,
    base: &RunOptions,
    stop: &AtomicBool,
) -> Result<Vec<(String, Outcome)>> {
    let order = pipeline::dependency_order(pipelines).map_err(Error::Config)?;
    let mut outcomes: Vec<(String, Outcome)> = Vec::new();
    for pipeline in order {
        if stop.load(Ordering::SeqCst) {
            tracing::info!("stopping before pipeline {}", pipeline.name);
            break;
        }
        let manifests = manifest::list(warehouse, &pipeline.name)?;
        // A pipeline without a schedule follows its upstream pipelines: it
        // runs when one of them succeeded in this cycle, and is held back
        // when one failed.
        let upstream_ran = pipeline.after.iter().any(|u| {
            outcomes
                .iter()
                .any(|(name, outcome)| name == u && !outcome.skipped())
        });
        let (scheduled_for, windows) = match due(pipeline, &manifests, now) {
            Some(due) => (Some(due.scheduled_for), Some(due.windows)),
            None if pipeline.schedule.is_none() && upstream_ran => (None, None),
            None => continue,
        };
        let mut options = base.clone();
        options.scheduled_for = scheduled_for.or(Some(now));
        options.windows = windows;
        options.trigger = match windows {
            Some(n) if n > 1 => Trigger::CatchUp,
            _ => Trigger::Schedule,
        };
        if let Some((upstream, reason)) = upstream_failure(warehouse, pipeline, &outcomes)? {
            tracing::warn!(pipeline = %pipeline.name, "not run: {reason}");
            let manifest =
                runner::record_blocked(warehouse, pipeline, &options, &upstream, reason)?;
            outcomes.push((pipeline.name.clone(), Outcome::Blocked(Box::new(manifest))));
            continue;
        }
        if let Some(n) = windows.filter(|n| *n > 1) {
            tracing::info!(pipeline = %pipeline.name, "catching up {n} missed scheduled times with one run");
        }
        let outcome = match run_monitored(warehouse, config, pipeline, &options) {
            Ok(report) => Outcome::Ran(Box::new(report)),
            Err(error) => {
                let manifest = manifest::list(warehouse, &pipeline.name)
                    .ok()
                    .and_then(|all| all.into_iter().last())
                    .filter(|m| m.status == Status::Failed)
                    .map(Box::new);
                Outcome::Failed { error, manifest }
            }
        };
        outcomes.push((pipeline.name.clone(), outcome));
    }
    Ok(outcomes)
}

/// Returns the upstream pipeline that holds `pipeline` back, and why: one
/// that failed or was held back in this cycle, or whose latest run failed.
fn upstream_failure(
    warehouse: &Warehouse,
    pipeline: &Pipeline,
    outcomes: &[(String, Outcome)],
) -> Result<Option<(String, String)>> {
    for upstream in &pipeline.after {
        match outcomes.iter().find(|(name, _)| name == upstream) {
            Some((_, Outcome::Failed { manifest, .. })) => {
                let run = manifest
                    .as_ref()
                    .map(|m| format!(" (run {})", m.run_id))
                    .unwrap_or_default();
                return Ok(Some((
                    upstream.clone(),
                    format!(
                        "upstream pipeline `{upstream}` failed in this cycle{run}; not running \
                         on its stale outputs"
                    ),
                )));
            }
            Some((_, Outcome::Blocked(_))) => {
                return Ok(Some((
                    upstream.clone(),
                    format!(
                        "upstream pipeline `{upstream}` was held back in this cycle by a failure \
                         before it"
                    ),
                )));
            }
            Some((_, Outcome::Ran(_))) => {}
            None => {
                let manifests = manifest::list(warehouse, upstream)?;
                let latest = manifests
                    .iter()
                    .filter(|m| m.status != Status::Skipped || m.blocked_by.is_some())
                    .max_by_key(|m| m.started_at);
                if let Some(m) = latest.filter(|m| m.status == Status::Failed) {
                    return Ok(Some((
                        upstream.clone(),
                        format!(
                            "the latest run of upstream pipeline `{upstream}` (run {}) failed; \
                             not running on its stale outputs",
                            m.run_id
                        ),
                    )));
                }
            }
        }
    }
    Ok(None)
}

/// Set by SIGTERM and SIGINT: the scheduler finishes the current run and
/// stops.
static STOP: AtomicBool = AtomicBool::new(false);

#[cfg(unix)]
extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Makes SIGTERM and SIGINT request a clean stop instead of ending the
/// process at once.
pub fn install_stop_handler() -> &'static AtomicBool {
    #[cfg(unix)]
    // SAFETY: the handler only stores to an atomic, which is
    // async-signal-safe.
    unsafe {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGTERM, handler);
        libc::signal(libc::SIGINT, handler);
    }
    &STOP
}

/// Runs the scheduler in the foreground until `stop` is set: each cycle
/// runs the due pipelines, checks staleness, writes the metrics file, then
/// sleeps until the next scheduled time (at most `check_every`, so that
/// staleness alerts go out on time). Pipeline files are read again every
/// cycle, so edits take effect without a restart.
pub fn serve(
    warehouse: &Warehouse,
    config: &Config,
    base: &RunOptions,
    stop: &AtomicBool,
    check_every: std::time::Duration,
) -> Result<()> {
    tracing::info!(pipelines = %config.pipelines_dir.display(), "scheduler started");
    while !stop.load(Ordering::SeqCst) {
        let now = Utc::now();
        let pipelines = match pipeline::load_all(&config.pipelines_dir) {
            Ok(pipelines) => pipelines,
            Err(e) => {
                tracing::error!("cannot load the pipeline files, retrying: {e}");
                sleep_until(now + Duration::seconds(60), stop);
                continue;
            }
        };
        match run_due(warehouse, config, &pipelines, now, base, stop) {
            Ok(outcomes) => {
                for (name, outcome) in &outcomes {
                    match outcome {
                        Outcome::Ran(report) => tracing::info!(
                            pipeline = %name,
                            run_id = %report.manifest.run_id,
                            status = %report.manifest.status,
                            "run finished"
                        ),
                        Outcome::Failed { error, .. } => {
                            tracing::error!(pipeline = %name, "run failed: {error}")
                        }
                        Outcome::Blocked(m) => tracing::warn!(
                            pipeline = %name,
                            "run held back: {}",
                            m.skipped_reason.as_deref().unwrap_or_default()
                        ),
                    }
                }
            }
            Err(e) => tracing::error!("cannot run the due pipelines: {e}"),
        }
        let now = Utc::now();
        if let Err(e) = monitor::check_health(warehouse, config, &pipelines, now) {
            tracing::error!("cannot check the pipelines' health: {e}");
        }
        if let Err(e) = monitor::write_metrics_file(warehouse, config, &pipelines, now) {
            tracing::error!("cannot write the metrics file: {e}");
        }
        let next = pipelines
            .iter()
            .filter_map(|p| p.schedule.as_ref()?.next_after(now))
            .min();
        let limit = now + Duration::from_std(check_every).unwrap_or(Duration::seconds(60));
        let wake = next.map_or(limit, |n| n.min(limit));
        if let Some(next) = next {
            tracing::debug!(next = %next, "waiting for the next scheduled time");
        }
        sleep_until(wake, stop);
    }
    tracing::info!("scheduler stopped");
    Ok(())
}

fn sleep_until(until: DateTime<Utc>, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        let left = until - Utc::now();
        if left <= Duration::zero() {
            return;
        }
        let step = left.min(Duration::milliseconds(200));
        std::thread::sleep(step.to_std().unwrap_or_default());
    }
}

/// Counts outcomes per kind, for summaries.
pub fn summarize(outcomes: &[(String, Outcome)]) -> BTreeMap<&'static str, usize> {
    let mut counts = BTreeMap::new();
    for (_, outcome) in outcomes {
        let key = match outcome {
            Outcome::Ran(r) if r.manifest.status == Status::Skipped => "skipped",
            Outcome::Ran(_) => "succeeded",
            Outcome::Failed { .. } => "failed",
            Outcome::Blocked(_) => "held back",
        };
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}
