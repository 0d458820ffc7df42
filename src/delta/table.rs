//! One Delta table: reading pinned versions, staging and committing writes,
//! history, restore and vacuum.
//!
//! A write has two steps. [`Table::stage`] writes the Parquet data files
//! under unique names and builds the commit's actions; nothing of it is
//! visible yet. [`Staged::commit`] then creates `_delta_log/<version>.json`
//! with a conditional create. If another writer created that version first,
//! the commit fails with [`Error::CommitConflict`] and the staged files stay
//! orphans until `vacuum` removes them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use object_store::path::Path;
use polars::polars_utils::compression::ZstdLevel;
use polars::prelude::*;
use rayon::prelude::*;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::log::{
    commit_file_name, decode_commit, encode_commit, parse_commit_file_name, Action, Add,
    CommitInfo, Format, Metadata, Protocol, Remove, MIN_READER_VERSION, MIN_WRITER_VERSION,
};
use super::schema::{from_schema_string, normalize_frame, to_schema_string};
use crate::error::{Error, Result};
use crate::warehouse::{PutOutcome, Warehouse};

/// The maximum number of rows nightshift writes into one data file.
pub const MAX_ROWS_PER_FILE: usize = 1_000_000;

/// The minimum rows per file when a write is split into a file per
/// thread.
const MIN_ROWS_PER_FILE: usize = 100_000;

/// Returns how many rows go into each data file of a write of `height`
/// rows. Polars encodes the columns of one file with little parallelism.
/// So a write gets at least one file per thread, as long as each file
/// keeps [`MIN_ROWS_PER_FILE`] rows or more. On 2 cores, the clv table of
/// 1M customers (25 columns) took 0.6 s to encode as one file and 0.35 s
/// as two.
fn rows_per_file(height: usize, threads: usize) -> usize {
    height
        .div_ceil(threads.max(1))
        .clamp(MIN_ROWS_PER_FILE, MAX_ROWS_PER_FILE)
}

/// The zstd level of written data files. Polars passes no level, which zstd
/// takes as its default, 3. On the scores and list tables of the scoring
/// benchmark, level 1 gave files of the same size (within 1%) with about
/// 15% less encoding time (measured with Python Polars 2.1).
const WRITE_ZSTD_LEVEL: i32 = 1;

/// The change a write makes to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    /// Adds the new rows to those already there.
    Append,
    /// Replaces every row: removes all current files, adds the new ones.
    Overwrite,
}

/// One committed version's actions, as read from the log.
#[derive(Debug, Clone)]
pub struct Commit {
    pub version: u64,
    pub actions: Vec<Action>,
}

impl Commit {
    /// Returns the commit's `commitInfo`, if it has one.
    pub fn info(&self) -> Option<&CommitInfo> {
        self.actions.iter().find_map(|a| match a {
            Action::CommitInfo(info) => Some(info),
            _ => None,
        })
    }
}

/// The state of a table at one version: its schema and data files.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub table: String,
    pub version: u64,
    pub metadata: Metadata,
    pub schema: Schema,
    pub files: Vec<Add>,
    /// Commit time of this version, in milliseconds since the Unix epoch.
    pub timestamp: Option<i64>,
}

impl Snapshot {
    /// Returns the row count from the files' statistics, when every file
    /// has them.
    pub fn num_rows(&self) -> Option<u64> {
        self.files.iter().map(Add::num_records).sum()
    }
}

/// One line of a table's history.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    pub version: u64,
    pub timestamp: Option<String>,
    pub operation: Option<String>,
    pub parameters: Map<String, Value>,
    pub run_id: Option<String>,
    pub files_added: usize,
    pub files_removed: usize,
    /// Rows in the table at this version, from file statistics.
    pub num_rows: Option<u64>,
}

/// The files `vacuum` removed, or would remove with a dry run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VacuumReport {
    pub table: String,
    pub files_deleted: Vec<String>,
    pub bytes_deleted: u64,
    /// The oldest version that can still be read after the vacuum.
    pub oldest_readable_version: Option<u64>,
}

/// A write whose data files exist but whose commit has not been made.
#[derive(Debug)]
pub struct Staged {
    table: Table,
    /// The version the commit will create.
    pub version: u64,
    actions: Vec<Action>,
    pub rows: u64,
    pub files_added: usize,
    pub files_removed: usize,
}

/// Metadata a caller attaches to a commit.
#[derive(Debug, Clone, Default)]
pub struct CommitOptions {
    pub operation: String,
    pub parameters: Map<String, Value>,
    pub run_id: Option<String>,
}

impl CommitOptions {
    /// Returns options for `operation` with no parameters.
    pub fn new(operation: &str) -> Self {
        Self {
            operation: operation.to_string(),
            ..Default::default()
        }
    }

    /// Adds a parameter, recorded in the commit's `operationParameters`.
    pub fn with_parameter(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.parameters.insert(key.to_string(), value.into());
        self
    }

    /// Sets the run id recorded in the commit.
    pub fn with_run_id(mut self, run_id: Option<String>) -> Self {
        self.run_id = run_id;
        self
    }
}

/// A named Delta table in a warehouse, at `<warehouse>/tables/<name>/`.
#[derive(Debug, Clone)]
pub struct Table {
    warehouse: Warehouse,
    name: String,
    root: Path,
}

/// Checks that `name` is a valid table name: lower-case letters, digits
/// and underscores, starting with a letter.
pub fn validate_table_name(name: &str) -> Result<()> {
    let valid = name.len() <= 128
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "invalid table name `{name}`: use lower-case letters, digits and underscores, \
             starting with a letter"
        )))
    }
}

fn now_millis() -> i64 {
    Utc::now().timestamp_millis()
}

fn format_millis(millis: i64) -> Option<String> {
    DateTime::<Utc>::from_timestamp_millis(millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

impl Table {
    /// Returns the table `name` of `warehouse`; it need not exist yet.
    pub fn new(warehouse: &Warehouse, name: &str) -> Result<Self> {
        validate_table_name(name)?;
        Ok(Self {
            warehouse: warehouse.clone(),
            name: name.to_string(),
            root: warehouse.path(&format!("tables/{name}")),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn warehouse(&self) -> &Warehouse {
        &self.warehouse
    }

    /// Returns the URI of the table folder, as notebooks open it.
    pub fn uri(&self) -> String {
        self.warehouse.uri(&self.root)
    }

    fn log_path(&self, version: u64) -> Path {
        self.root
            .clone()
            .join("_delta_log")
            .join(commit_file_name(version))
    }

    fn file_path(&self, relative: &str) -> Path {
        let mut path = self.root.clone();
        for part in relative.split('/') {
            path = path.join(part);
        }
        path
    }

    /// Lists the committed versions, in ascending order.
    pub fn versions(&self) -> Result<Vec<u64>> {
        let prefix = self.root.clone().join("_delta_log");
        let mut versions: Vec<u64> = self
            .warehouse
            .list(&prefix)?
            .iter()
            .filter_map(|meta| meta.location.filename().and_then(parse_commit_file_name))
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    /// Returns the latest committed version, or `None` for a table that
    /// does not exist.
    pub fn latest_version(&self) -> Result<Option<u64>> {
        Ok(self.versions()?.last().copied())
    }

    /// Returns the snapshot at the latest version, or `None` for a table
    /// that does not exist.
    pub fn latest_snapshot(&self) -> Result<Option<Snapshot>> {
        match self.latest_version()? {
            Some(version) => Ok(Some(self.snapshot(Some(version))?)),
            None => Ok(None),
        }
    }

    /// Returns true when the table has at least one committed version.
    pub fn exists(&self) -> Result<bool> {
        Ok(self.latest_version()?.is_some())
    }

    /// Reads the actions of one committed version.
    pub fn read_commit(&self, version: u64) -> Result<Commit> {
        let path = self.log_path(version);
        let bytes = self.warehouse.get(&path)?.ok_or_else(|| Error::DeltaLog {
            path: self.warehouse.uri(&path),
            message: "the log entry is missing".into(),
        })?;
        let text = std::str::from_utf8(&bytes).map_err(|e| Error::DeltaLog {
            path: self.warehouse.uri(&path),
            message: e.to_string(),
        })?;
        Ok(Commit {
            version,
            actions: decode_commit(&self.warehouse.uri(&path), text)?,
        })
    }

    /// Reads every commit up to and including `version`.
    fn read_commits_upto(&self, version: u64) -> Result<Vec<Commit>> {
        (0..=version).map(|v| self.read_commit(v)).collect()
    }

    /// Returns the snapshot at `version`, or at the latest version.
    pub fn snapshot(&self, version: Option<u64>) -> Result<Snapshot> {
        let latest = self
            .latest_version()?
            .ok_or_else(|| Error::TableNotFound(self.name.clone()))?;
        let version = version.unwrap_or(latest);
        if version > latest {
            return Err(Error::VersionNotFound {
                table: self.name.clone(),
                version,
                latest,
            });
        }
        let commits = self.read_commits_upto(version)?;
        self.replay(&commits)
    }

    /// Applies `commits`, which start at version 0, in order.
    fn replay(&self, commits: &[Commit]) -> Result<Snapshot> {
        let mut metadata: Option<Metadata> = None;
        let mut files: BTreeMap<String, (u64, Add)> = BTreeMap::new();
        let mut timestamp = None;
        let mut order = 0u64;
        for commit in commits {
            for action in &commit.actions {
                match action {
                    Action::Protocol(protocol) => {
                        if protocol.min_reader_version > MIN_READER_VERSION + 2 {
                            return Err(Error::Data(format!(
                                "table `{}` needs Delta reader version {}, which nightshift does \
                                 not support",
                                self.name, protocol.min_reader_version
                            )));
                        }
                    }
                    Action::Metadata(m) => metadata = Some(m.clone()),
                    Action::Add(add) => {
                        order += 1;
                        files.insert(add.path.clone(), (order, add.clone()));
                    }
                    Action::Remove(remove) => {
                        files.remove(&remove.path);
                    }
                    Action::CommitInfo(info) => timestamp = info.timestamp,
                }
            }
        }
        let metadata = metadata.ok_or_else(|| Error::DeltaLog {
            path: self.uri(),
            message: "the log has no metaData action".into(),
        })?;
        let schema = from_schema_string(&metadata.schema_string)?;
        // Files keep the order in which they were added, so that reads are
        // deterministic and appended rows come after older ones.
        let mut ordered: Vec<(u64, Add)> = files.into_values().collect();
        ordered.sort_by_key(|(order, _)| *order);
        Ok(Snapshot {
            table: self.name.clone(),
            version: commits.last().map(|c| c.version).unwrap_or(0),
            metadata,
            schema,
            files: ordered.into_iter().map(|(_, add)| add).collect(),
            timestamp,
        })
    }

    /// Returns a lazy scan of exactly the files of `snapshot`.
    pub fn scan(&self, snapshot: &Snapshot) -> Result<LazyFrame> {
        self.scan_files(&snapshot.schema, &snapshot.files)
    }

    /// Returns a lazy scan of `files`, with columns cast to `schema`.
    pub fn scan_files(&self, schema: &Schema, files: &[Add]) -> Result<LazyFrame> {
        if files.is_empty() {
            return Ok(DataFrame::empty_with_schema(schema).lazy());
        }
        let args = ScanArgsParquet {
            cloud_options: self.warehouse.cloud_options(),
            schema: Some(Arc::new(schema.clone())),
            allow_missing_columns: true,
            // Data files sit directly in the table folder, never in
            // partition folders.
            hive_options: HiveOptions {
                enabled: Some(false),
                ..Default::default()
            },
            glob: false,
            cache: false,
            ..Default::default()
        };
        let sources = if self.warehouse.is_scannable() {
            let paths = files
                .iter()
                .map(|add| {
                    PlRefPath::new(self.warehouse.uri(&self.file_path(&decode_path(&add.path))))
                })
                .collect();
            ScanSources::Paths(paths)
        } else {
            let mut buffers = Vec::with_capacity(files.len());
            for add in files {
                let path = self.file_path(&decode_path(&add.path));
                let bytes = self.warehouse.get(&path)?.ok_or_else(|| {
                    Error::Data(format!(
                        "data file {} of table `{}` is missing",
                        add.path, self.name
                    ))
                })?;
                buffers.push(bytes.to_vec());
            }
            ScanSources::Buffers(buffers.into_iter().map(Into::into).collect())
        };
        // The schema given to the scan orders and types the columns and
        // fills columns a file lacks with nulls. So no cast follows the
        // scan, and Polars can push filters into the Parquet reader.
        Ok(LazyFrame::scan_parquet_sources(sources, args)?)
    }

    /// Reads the table at `version` (or the latest) into memory.
    pub fn read(&self, version: Option<u64>) -> Result<DataFrame> {
        let snapshot = self.snapshot(version)?;
        Ok(self.scan(&snapshot)?.collect()?)
    }

    /// Returns the files added after version `after` up to and including
    /// `upto`, or `None` when a commit in that range removed data (the table
    /// was rewritten, not only appended to), so a reader must read it whole.
    pub fn added_between(&self, after: u64, upto: u64) -> Result<Option<Vec<Add>>> {
        let mut added = Vec::new();
        for version in after + 1..=upto {
            let commit = self.read_commit(version)?;
            for action in commit.actions {
                match action {
                    Action::Add(add) if add.data_change => added.push(add),
                    Action::Remove(remove) if remove.data_change => return Ok(None),
                    _ => {}
                }
            }
        }
        Ok(Some(added))
    }

    /// Writes `df` as data files under unique names and returns their add
    /// actions. Nothing becomes visible until a commit references them.
    pub fn write_data_files(&self, df: &DataFrame) -> Result<Vec<Add>> {
        let height = df.height();
        // An empty frame still gets one (empty) file.
        let chunks: Vec<(usize, usize)> = if height == 0 {
            vec![(0, 0)]
        } else {
            let per_file = rows_per_file(height, rayon::current_num_threads());
            (0..height)
                .step_by(per_file)
                .map(|offset| (offset, per_file.min(height - offset)))
                .collect()
        };
        // Encoding takes most of the time of a large write, and the files
        // are independent, so each is encoded and stored in parallel.
        chunks
            .par_iter()
            .map(|(offset, length)| {
                let mut chunk = df.slice(*offset as i64, *length);
                let mut buffer: Vec<u8> = Vec::new();
                let level = ZstdLevel::try_new(WRITE_ZSTD_LEVEL)?;
                ParquetWriter::new(&mut buffer)
                    .with_compression(ParquetCompression::Zstd(Some(level)))
                    .finish(&mut chunk)?;
                let name = format!("part-{}.parquet", uuid::Uuid::now_v7());
                let size = buffer.len() as i64;
                self.warehouse
                    .put(&self.file_path(&name), Bytes::from(buffer))?;
                Ok(Add {
                    path: name,
                    partition_values: Map::new(),
                    size,
                    modification_time: now_millis(),
                    data_change: true,
                    stats: Some(json!({ "numRecords": length }).to_string()),
                })
            })
            .collect()
    }

    /// Stages a write of `df`, based on version `base` (`None`: the table
    /// does not exist yet). The data files are written; the commit is not.
    pub fn stage(&self, df: DataFrame, mode: WriteMode, base: Option<&Snapshot>) -> Result<Staged> {
        let df = normalize_frame(df)?;
        let mut actions = Vec::new();
        let version = match base {
            None => {
                actions.push(Action::Protocol(Protocol {
                    min_reader_version: MIN_READER_VERSION,
                    min_writer_version: MIN_WRITER_VERSION,
                }));
                actions.push(Action::Metadata(Metadata {
                    id: uuid::Uuid::new_v4().to_string(),
                    name: None,
                    description: None,
                    format: Format {
                        provider: "parquet".into(),
                        options: Map::new(),
                    },
                    schema_string: to_schema_string(df.schema())?,
                    partition_columns: Vec::new(),
                    configuration: Map::new(),
                    created_time: Some(now_millis()),
                }));
                0
            }
            Some(base) => base.version + 1,
        };

        let df = match (base, mode) {
            (Some(base), WriteMode::Append) => {
                let (df, merged) = align_for_append(df, &base.schema)?;
                if let Some(schema) = merged {
                    let mut metadata = base.metadata.clone();
                    metadata.schema_string = to_schema_string(&schema)?;
                    actions.push(Action::Metadata(metadata));
                }
                df
            }
            (Some(base), WriteMode::Overwrite) => {
                let schema_string = to_schema_string(df.schema())?;
                if schema_string != base.metadata.schema_string {
                    let mut metadata = base.metadata.clone();
                    metadata.schema_string = schema_string;
                    actions.push(Action::Metadata(metadata));
                }
                df
            }
            (None, _) => df,
        };

        let mut files_removed = 0;
        if let (Some(base), WriteMode::Overwrite) = (base, mode) {
            let now = now_millis();
            for add in &base.files {
                actions.push(Action::Remove(Remove {
                    path: add.path.clone(),
                    deletion_timestamp: Some(now),
                    data_change: true,
                    extended_file_metadata: Some(false),
                    size: Some(add.size),
                }));
                files_removed += 1;
            }
        }

        // An empty frame still gets one (empty) file, so that readers see
        // the schema in a data file too.
        let adds = self.write_data_files(&df)?;
        let files_added = adds.len();
        actions.extend(adds.into_iter().map(Action::Add));
        Ok(Staged {
            table: self.clone(),
            version,
            actions,
            rows: df.height() as u64,
            files_added,
            files_removed,
        })
    }

    /// Stages and commits a write of `df` on top of the latest version.
    pub fn write(&self, df: DataFrame, mode: WriteMode, options: CommitOptions) -> Result<u64> {
        let base = self.latest_snapshot()?;
        self.stage(df, mode, base.as_ref())?.commit(options)
    }

    /// Creates the commit file of `version` holding `actions`, failing with
    /// [`Error::CommitConflict`] when another writer created it first.
    fn commit_actions(
        &self,
        version: u64,
        mut actions: Vec<Action>,
        options: CommitOptions,
    ) -> Result<u64> {
        let is_blind_append = options.operation == "WRITE"
            && options.parameters.get("mode") == Some(&Value::from("Append"));
        actions.push(Action::CommitInfo(CommitInfo {
            timestamp: Some(now_millis()),
            operation: Some(options.operation),
            operation_parameters: options.parameters,
            engine_info: Some(format!("nightshift/{}", env!("CARGO_PKG_VERSION"))),
            is_blind_append: Some(is_blind_append),
            operation_metrics: Map::new(),
            user_metadata: options.run_id,
        }));
        let body = encode_commit(&actions)?;
        match self
            .warehouse
            .put_if_absent(&self.log_path(version), Bytes::from(body))?
        {
            PutOutcome::Created => {
                tracing::debug!(table = %self.name, version, "committed");
                Ok(version)
            }
            PutOutcome::AlreadyExists => Err(Error::CommitConflict {
                table: self.name.clone(),
                version,
            }),
        }
    }

    /// Appends `df`, staging it again on the newer version when another
    /// writer commits first. Only for tables that nothing reads back before
    /// appending, such as rejected rows, because the rows are not checked
    /// against what the other writer added. Each retry leaves the previous
    /// attempt's files as orphans for `vacuum`.
    pub fn append_retrying(&self, df: DataFrame, options: CommitOptions) -> Result<u64> {
        const ATTEMPTS: usize = 10;
        let mut attempt = 1;
        loop {
            let base = self.latest_snapshot()?;
            let staged = self.stage(df.clone(), WriteMode::Append, base.as_ref())?;
            match staged.commit(options.clone()) {
                Err(Error::CommitConflict { version, .. }) if attempt < ATTEMPTS => {
                    tracing::debug!(table = %self.name, version, attempt, "append conflicted; retrying");
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    /// Undoes the commit of `version` with a new version. While `version` is
    /// the latest, the table returns to version `version - 1` (or to no rows,
    /// for version 0). When later versions exist, only a commit that just
    /// added files can be undone, by removing those files; anything else is
    /// an error, so that no other writer's rows are lost.
    pub fn revert(&self, version: u64, options: CommitOptions) -> Result<u64> {
        let current = self.snapshot(None)?;
        if current.version == version {
            if let Some(previous) = version.checked_sub(1) {
                return self.restore(previous, options);
            }
            let empty = DataFrame::empty_with_schema(&current.schema);
            return self
                .stage(empty, WriteMode::Overwrite, Some(&current))?
                .commit(options);
        }
        let commit = self.read_commit(version)?;
        let only_added = commit
            .actions
            .iter()
            .all(|a| matches!(a, Action::Add(_) | Action::CommitInfo(_)));
        if !only_added {
            return Err(Error::Data(format!(
                "cannot undo version {version} of table `{}`: versions up to {} were committed on \
                 top of it; check `nightshift history {}` and roll back by hand",
                self.name, current.version, self.name
            )));
        }
        let now = now_millis();
        let active: HashSet<&str> = current.files.iter().map(|a| a.path.as_str()).collect();
        let removes: Vec<Action> = commit
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Add(add) if active.contains(add.path.as_str()) => {
                    Some(Action::Remove(Remove {
                        path: add.path.clone(),
                        deletion_timestamp: Some(now),
                        data_change: true,
                        extended_file_metadata: Some(false),
                        size: Some(add.size),
                    }))
                }
                _ => None,
            })
            .collect();
        let options = options.with_parameter("reverted_version", version);
        self.commit_actions(current.version + 1, removes, options)
    }

    /// Checks that every data file of `snapshot` still exists: `vacuum`
    /// removes the files of versions older than its retention.
    pub fn check_readable(&self, snapshot: &Snapshot) -> Result<()> {
        for add in &snapshot.files {
            let path = self.file_path(&decode_path(&add.path));
            if self.warehouse.get_meta(&path)?.is_none() {
                return Err(Error::Data(format!(
                    "version {} of table `{}` can no longer be read: its data file {} was \
                     removed by vacuum",
                    snapshot.version, self.name, add.path
                )));
            }
        }
        Ok(())
    }

    /// Commits a new version that restores the content of version `to`.
    /// Nothing is deleted: the versions in between stay readable.
    pub fn restore(&self, to: u64, options: CommitOptions) -> Result<u64> {
        let current = self.snapshot(None)?;
        let target = self.snapshot(Some(to))?;
        self.check_readable(&target).map_err(|e| {
            Error::Data(format!(
                "cannot restore table `{}` to version {to}: {e}",
                self.name
            ))
        })?;
        let target_paths: HashSet<&str> = target.files.iter().map(|a| a.path.as_str()).collect();
        let current_paths: HashSet<&str> = current.files.iter().map(|a| a.path.as_str()).collect();
        let mut actions = Vec::new();
        if target.metadata.schema_string != current.metadata.schema_string {
            actions.push(Action::Metadata(target.metadata.clone()));
        }
        let now = now_millis();
        for add in current
            .files
            .iter()
            .filter(|a| !target_paths.contains(a.path.as_str()))
        {
            actions.push(Action::Remove(Remove {
                path: add.path.clone(),
                deletion_timestamp: Some(now),
                data_change: true,
                extended_file_metadata: Some(false),
                size: Some(add.size),
            }));
        }
        for add in target
            .files
            .iter()
            .filter(|a| !current_paths.contains(a.path.as_str()))
        {
            let mut add = add.clone();
            add.data_change = true;
            add.modification_time = now;
            actions.push(Action::Add(add));
        }
        let options = options.with_parameter("version", to);
        self.commit_actions(current.version + 1, actions, options)
    }

    /// Returns one entry per committed version, oldest first.
    pub fn history(&self) -> Result<Vec<HistoryEntry>> {
        let mut entries = Vec::new();
        let mut rows: HashMap<String, Option<u64>> = HashMap::new();
        for version in self.versions()? {
            let commit = self.read_commit(version)?;
            let mut added = 0;
            let mut removed = 0;
            for action in &commit.actions {
                match action {
                    Action::Add(add) => {
                        added += 1;
                        rows.insert(add.path.clone(), add.num_records());
                    }
                    Action::Remove(remove) => {
                        removed += 1;
                        rows.remove(&remove.path);
                    }
                    _ => {}
                }
            }
            let info = commit.info().cloned().unwrap_or_default();
            entries.push(HistoryEntry {
                version,
                timestamp: info.timestamp.and_then(format_millis),
                operation: info.operation,
                parameters: info.operation_parameters,
                run_id: info.user_metadata,
                files_added: added,
                files_removed: removed,
                num_rows: rows.values().copied().sum(),
            });
        }
        Ok(entries)
    }

    /// Deletes data files that no version inside the retention window
    /// references, and orphaned files (never committed) older than the
    /// retention. The latest version always stays readable.
    pub fn vacuum(&self, retention: Duration, dry_run: bool) -> Result<VacuumReport> {
        let versions = self.versions()?;
        let mut report = VacuumReport {
            table: self.name.clone(),
            ..Default::default()
        };
        if versions.is_empty() {
            return Ok(report);
        }
        let cutoff = now_millis() - retention.as_millis() as i64;

        // Replay the log, remembering each version's commit time and the
        // files that were active at the newest version committed before the
        // cutoff: that version was current when the window opened.
        let mut active: HashSet<String> = HashSet::new();
        let mut ever_added: HashSet<String> = HashSet::new();
        let mut keep: HashSet<String> = HashSet::new();
        // The version at which each file was last removed: versions before
        // it read the file.
        let mut removed_at: HashMap<String, u64> = HashMap::new();
        for &version in &versions {
            let commit = self.read_commit(version)?;
            let timestamp = commit.info().and_then(|i| i.timestamp).unwrap_or(i64::MAX);
            for action in &commit.actions {
                match action {
                    Action::Add(add) => {
                        active.insert(add.path.clone());
                        ever_added.insert(add.path.clone());
                    }
                    Action::Remove(remove) => {
                        active.remove(&remove.path);
                        removed_at.insert(decode_path(&remove.path), version);
                    }
                    _ => {}
                }
            }
            if timestamp <= cutoff {
                // This version was committed before the window opened, so
                // only the newest such version (and later ones) stay
                // readable: restart the kept set here.
                keep = active.clone();
            } else {
                keep.extend(active.iter().cloned());
            }
        }
        let keep: HashSet<String> = keep.iter().map(|p| decode_path(p)).collect();
        let ever_added: HashSet<String> = ever_added.iter().map(|p| decode_path(p)).collect();

        let mut present: HashSet<String> = HashSet::new();
        for meta in self.warehouse.list(&self.root)? {
            let relative = match meta.location.prefix_match(&self.root) {
                Some(parts) => parts
                    .map(|p| p.as_ref().to_string())
                    .collect::<Vec<_>>()
                    .join("/"),
                None => continue,
            };
            if relative.starts_with("_delta_log/") || !relative.ends_with(".parquet") {
                continue;
            }
            if keep.contains(&relative) {
                present.insert(relative);
                continue;
            }
            let is_orphan = !ever_added.contains(&relative);
            if is_orphan && meta.last_modified.timestamp_millis() > cutoff {
                // Possibly a write in progress: leave it until it is older
                // than the retention.
                present.insert(relative);
                continue;
            }
            report.bytes_deleted += meta.size;
            report.files_deleted.push(relative);
            if !dry_run {
                self.warehouse.delete(&meta.location)?;
            }
        }
        report.files_deleted.sort();

        // A version is readable while every file it references exists, so
        // the oldest readable version follows the last removal of any file
        // that is gone, whether this vacuum or an earlier one deleted it.
        let oldest = ever_added
            .iter()
            .filter(|path| !present.contains(*path) && !keep.contains(*path))
            .filter_map(|path| removed_at.get(path))
            .max()
            .copied()
            .unwrap_or(0);
        report.oldest_readable_version = Some(oldest);
        Ok(report)
    }
}

impl Staged {
    /// Commits the staged write.
    pub fn commit(self, options: CommitOptions) -> Result<u64> {
        self.table
            .commit_actions(self.version, self.actions, options)
    }

    /// Returns the name of the table this write is for.
    pub fn table(&self) -> &str {
        &self.table.name
    }
}

/// Orders the columns of `df` as `schema` has them, filling missing ones with
/// nulls. Returns the merged schema when `df` has columns the table lacks.
fn align_for_append(df: DataFrame, schema: &Schema) -> Result<(DataFrame, Option<Schema>)> {
    let mut merged = schema.clone();
    let mut extended = false;
    for (name, dtype) in df.schema().iter() {
        if !schema.contains(name) {
            merged.with_column(name.clone(), dtype.clone());
            extended = true;
        }
    }
    let present = df.schema();
    let columns: Vec<Expr> = merged
        .iter()
        .map(|(name, dtype)| {
            if present.contains(name) {
                col(name.clone()).cast(dtype.clone())
            } else {
                lit(NULL).cast(dtype.clone()).alias(name.clone())
            }
        })
        .collect();
    let df = df.lazy().select(columns).collect()?;
    Ok((df, extended.then_some(merged)))
}

/// Decodes the URL-encoding of a path in an add or remove action. nightshift
/// writes plain names; other writers may encode special characters.
fn decode_path(path: &str) -> String {
    if !path.contains('%') {
        return path.to_string();
    }
    url::form_urlencoded::parse(format!("p={}", path.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| path.to_string())
}

#[cfg(test)]
mod rows_per_file_tests {
    use super::*;

    #[test]
    fn small_writes_stay_in_one_file() {
        assert_eq!(rows_per_file(5, 2), MIN_ROWS_PER_FILE);
        assert_eq!(rows_per_file(150_000, 2), MIN_ROWS_PER_FILE);
    }

    #[test]
    fn mid_size_writes_get_a_file_per_thread() {
        assert_eq!(rows_per_file(1_000_000, 2), 500_000);
        assert_eq!(rows_per_file(1_000_001, 2), 500_001);
        assert_eq!(rows_per_file(1_000_000, 0), MAX_ROWS_PER_FILE);
    }

    #[test]
    fn large_writes_keep_the_file_size_limit() {
        assert_eq!(rows_per_file(10_000_000, 2), MAX_ROWS_PER_FILE);
        assert_eq!(rows_per_file(10_000_000, 64), 156_250);
    }
}
