//! `nightshift.toml`: where the warehouse and the pipeline files are.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::notify::AlertChannel;
use crate::warehouse::DEFAULT_WAREHOUSE;

/// The configuration file name looked up in the current folder.
pub const CONFIG_FILE: &str = "nightshift.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    warehouse: Option<String>,
    pipelines: Option<String>,
    lease_timeout_minutes: Option<u64>,
    metrics_file: Option<String>,
    alert_reminder_hours: Option<f64>,
    #[serde(default)]
    alerts: Vec<AlertChannel>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The warehouse URL.
    pub warehouse: String,
    /// The folder of pipeline files.
    pub pipelines_dir: PathBuf,
    /// How long a run's lease lasts before another run may take it over,
    /// for runs that crashed without releasing it.
    pub lease_timeout_minutes: u64,
    /// The configuration file read, if any.
    pub source: Option<PathBuf>,
    /// Where runs, `status` and the scheduler write Prometheus metrics.
    pub metrics_file: Option<PathBuf>,
    /// Alert channels.
    pub alerts: Vec<AlertChannel>,
    /// Repeats an alert while a pipeline stays failing or stale this long.
    pub alert_reminder_hours: Option<f64>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            warehouse: DEFAULT_WAREHOUSE.to_string(),
            pipelines_dir: PathBuf::from("pipelines"),
            lease_timeout_minutes: 120,
            source: None,
            metrics_file: None,
            alerts: Vec::new(),
            alert_reminder_hours: Some(24.0),
        }
    }
}

impl Config {
    /// Loads the configuration from `path`, or from `nightshift.toml` in the
    /// current folder when it exists, or returns the defaults. A `path`
    /// given explicitly must exist.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let (path, required) = match path {
            Some(path) => (path.to_path_buf(), true),
            None => (PathBuf::from(CONFIG_FILE), false),
        };
        if !path.exists() {
            if required {
                return Err(Error::Config(format!(
                    "configuration file {} not found; `nightshift init` writes one",
                    path.display()
                )));
            }
            return Ok(Self::default());
        }
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::Config(format!(
                "cannot read configuration file {}: {e}",
                path.display()
            ))
        })?;
        Self::parse(&text, &path)
    }

    /// Parses configuration text; `path` names the file in errors and
    /// anchors relative folders.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| {
            Error::Config(format!(
                "invalid configuration file {}: {e}",
                path.display()
            ))
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        let mut names = std::collections::BTreeSet::new();
        for channel in &file.alerts {
            channel.validate().map_err(|e| {
                Error::Config(format!(
                    "invalid configuration file {}: {e}",
                    path.display()
                ))
            })?;
            if !names.insert(channel.name.clone()) {
                return Err(Error::Config(format!(
                    "invalid configuration file {}: two alert channels are named `{}`",
                    path.display(),
                    channel.name
                )));
            }
        }
        let defaults = Self::default();
        let warehouse = match file.warehouse {
            Some(url) => resolve_local_url(&url, base),
            None => resolve_local_url(&defaults.warehouse, base),
        };
        Ok(Self {
            warehouse,
            pipelines_dir: base.join(file.pipelines.unwrap_or_else(|| "pipelines".into())),
            lease_timeout_minutes: file
                .lease_timeout_minutes
                .unwrap_or(defaults.lease_timeout_minutes),
            source: Some(path.to_path_buf()),
            metrics_file: file.metrics_file.map(|f| base.join(f)),
            alerts: file.alerts,
            alert_reminder_hours: match file.alert_reminder_hours {
                Some(h) if h > 0.0 => Some(h),
                Some(_) => None,
                None => defaults.alert_reminder_hours,
            },
        })
    }
}

/// Makes a relative local warehouse URL relative to the configuration
/// file's folder instead of the current folder.
fn resolve_local_url(url: &str, base: &Path) -> String {
    if base.as_os_str().is_empty() {
        return url.to_string();
    }
    let local = match url.strip_prefix("file://") {
        Some(rest) => rest,
        None if !url.contains("://") => url,
        None => return url.to_string(),
    };
    if Path::new(local).is_absolute() {
        return url.to_string();
    }
    format!("file://{}", base.join(local).display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("warehose = \"x\"", Path::new("nightshift.toml")).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("warehose"), "{message}");
        assert!(message.contains("nightshift.toml"), "{message}");
    }

    #[test]
    fn relative_warehouse_follows_config_folder() {
        let config = Config::parse(
            "warehouse = \"file://./wh\"",
            Path::new("proj/nightshift.toml"),
        )
        .unwrap();
        assert_eq!(config.warehouse, "file://proj/./wh");
        assert_eq!(config.pipelines_dir, PathBuf::from("proj/pipelines"));
    }
}
