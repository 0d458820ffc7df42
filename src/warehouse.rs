//! The warehouse: the root URL under which tables, run manifests and leases
//! live, and the object store behind it.
//!
//! The library's API is synchronous. Each warehouse owns a Tokio runtime and
//! blocks on object-store calls, so that Polars, which runs its own runtime
//! for cloud scans, is never called from inside an async context.

use std::fmt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use polars::prelude::cloud::CloudOptions;

use crate::error::{Error, Result};

/// The default warehouse URL: a folder `warehouse` in the current folder.
pub const DEFAULT_WAREHOUSE: &str = "file://./warehouse";

/// The storage behind a warehouse.
#[derive(Debug, Clone)]
enum Location {
    /// A local folder, by absolute path.
    Local(PathBuf),
    /// An S3 bucket and key prefix.
    S3 { bucket: String },
    /// Process memory, for tests.
    Memory,
}

/// A warehouse: an object store and the prefix everything lives under.
#[derive(Clone)]
pub struct Warehouse {
    url: String,
    location: Location,
    store: Arc<dyn ObjectStore>,
    root: Path,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl fmt::Debug for Warehouse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Warehouse").field("url", &self.url).finish()
    }
}

/// Returned by [`Warehouse::put_if_absent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    AlreadyExists,
}

impl Warehouse {
    /// Opens the warehouse at `url`: `file://PATH` (relative paths resolve
    /// against the current folder), a plain local path, `s3://BUCKET/PREFIX`
    /// with credentials, region and endpoint from the `AWS_*` environment
    /// variables, or `memory://` (one fresh in-memory store per call).
    pub fn open(url: &str) -> Result<Self> {
        let url = url.trim();
        if url.is_empty() {
            return Err(Error::Config(
                "the warehouse URL is empty; set `warehouse` in nightshift.toml or pass --warehouse"
                    .into(),
            ));
        }
        let runtime = Arc::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?,
        );
        if let Some(rest) = url.strip_prefix("memory://") {
            let root = Path::parse(rest.trim_matches('/'))?;
            return Ok(Self {
                url: url.to_string(),
                location: Location::Memory,
                store: Arc::new(InMemory::new()),
                root,
                runtime,
            });
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(Error::Config(format!(
                    "invalid warehouse URL `{url}`: the bucket name is missing (expected s3://BUCKET/PREFIX)"
                )));
            }
            let prefix = prefix.trim_matches('/').to_string();
            let store = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(|e| Error::Config(format!("cannot open S3 warehouse `{url}`: {e}")))?;
            return Ok(Self {
                url: url.to_string(),
                location: Location::S3 {
                    bucket: bucket.to_string(),
                },
                store: Arc::new(store),
                root: Path::parse(&prefix)?,
                runtime,
            });
        }
        if let Some((scheme, _)) = url.split_once("://") {
            if scheme != "file" {
                return Err(Error::Config(format!(
                    "unsupported warehouse URL `{url}`: this build supports file://, s3:// and memory://"
                )));
            }
        }
        let path = url.strip_prefix("file://").unwrap_or(url);
        let path = absolute_path(FsPath::new(path))?;
        std::fs::create_dir_all(&path).map_err(|e| {
            Error::Config(format!(
                "cannot create the warehouse folder {}: {e}",
                path.display()
            ))
        })?;
        let store = LocalFileSystem::new_with_prefix(&path)?;
        Ok(Self {
            url: url.to_string(),
            location: Location::Local(path),
            store: Arc::new(store),
            root: Path::default(),
            runtime,
        })
    }

    /// Returns the URL the warehouse was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Returns true when the warehouse lives in process memory.
    pub fn is_memory(&self) -> bool {
        matches!(self.location, Location::Memory)
    }

    /// Returns the object-store path of `relative` under the warehouse root.
    pub fn path(&self, relative: &str) -> Path {
        let mut path = self.root.clone();
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            path = path.clone().join(part);
        }
        path
    }

    /// Returns the path of `path` relative to the warehouse root.
    pub fn relative(&self, path: &Path) -> String {
        match path.prefix_match(&self.root) {
            Some(parts) => parts
                .map(|p| p.as_ref().to_string())
                .collect::<Vec<_>>()
                .join("/"),
            None => path.to_string(),
        }
    }

    /// Returns the URI that Polars, the Python `deltalake` package or DuckDB
    /// open for `path`: an absolute local path, or `s3://bucket/key`.
    pub fn uri(&self, path: &Path) -> String {
        match &self.location {
            Location::Local(root) => {
                let relative = self.relative(path);
                root.join(relative).to_string_lossy().into_owned()
            }
            Location::S3 { bucket, .. } => format!("s3://{bucket}/{path}"),
            Location::Memory => format!("memory:///{path}"),
        }
    }

    /// Returns the options Polars needs to scan files of this warehouse, or
    /// `None` for local files.
    pub fn cloud_options(&self) -> Option<CloudOptions> {
        match &self.location {
            // Polars builds its S3 client from the same AWS_* environment
            // variables as this warehouse's store.
            Location::S3 { .. } => Some(CloudOptions::default()),
            _ => None,
        }
    }

    /// Returns true when Polars can scan this warehouse's files by URI;
    /// files of an in-memory warehouse are read into buffers instead.
    pub fn is_scannable(&self) -> bool {
        !self.is_memory()
    }

    /// Runs an object-store future to completion.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Reads the object at `path`, or `None` when it does not exist.
    pub fn get(&self, path: &Path) -> Result<Option<Bytes>> {
        self.block_on(async {
            match self.store.get(path).await {
                Ok(result) => Ok(Some(result.bytes().await?)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
    }

    /// Returns the metadata of the object at `path`, or `None` when it does
    /// not exist.
    pub fn get_meta(&self, path: &Path) -> Result<Option<ObjectMeta>> {
        match self.block_on(self.store.head(path)) {
            Ok(meta) => Ok(Some(meta)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes `bytes` to `path`, replacing what is there.
    pub fn put(&self, path: &Path, bytes: Bytes) -> Result<()> {
        self.block_on(self.store.put(path, PutPayload::from(bytes)))?;
        Ok(())
    }

    /// Creates `path` with `bytes` only if no object exists there (a
    /// conditional create), so that exactly one of several racing writers
    /// succeeds.
    pub fn put_if_absent(&self, path: &Path, bytes: Bytes) -> Result<PutOutcome> {
        let options = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let result = self.block_on(self.store.put_opts(path, PutPayload::from(bytes), options));
        match result {
            Ok(_) => Ok(PutOutcome::Created),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(PutOutcome::AlreadyExists),
            Err(e) => Err(e.into()),
        }
    }

    /// Lists every object under `prefix`, recursively.
    pub fn list(&self, prefix: &Path) -> Result<Vec<ObjectMeta>> {
        let objects = self.block_on(self.store.list(Some(prefix)).try_collect::<Vec<_>>())?;
        Ok(objects)
    }

    /// Lists the immediate child folders of `prefix`.
    pub fn list_folders(&self, prefix: &Path) -> Result<Vec<String>> {
        let listing = self.block_on(self.store.list_with_delimiter(Some(prefix)))?;
        let mut names: Vec<String> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Deletes the object at `path`; a missing object is not an error.
    pub fn delete(&self, path: &Path) -> Result<()> {
        match self.block_on(self.store.delete(path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Returns the object store itself, for reading files given by URL.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }
}

/// Resolves `path` against the current folder without requiring it to exist.
fn absolute_path(path: &FsPath) -> Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    let cwd = std::env::current_dir()?;
    let mut out = cwd;
    for component in path.components() {
        match component {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    Ok(out)
}
