//! Pipeline leases, so that two runs of one pipeline never overlap.
//!
//! A lease is a sequence of objects `leases/<pipeline>/<epoch>.json`, each
//! created with a conditional create. The object with the highest epoch is
//! the current lease. A run takes the lease by creating the next epoch when
//! the current one is released or expired, so when several runs race for
//! it, exactly one create succeeds. Only the holder ever rewrites its own
//! epoch, to mark it released.

use bytes::Bytes;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::warehouse::{PutOutcome, Warehouse};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaseRecord {
    pipeline: String,
    run_id: String,
    epoch: u64,
    acquired_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    #[serde(default)]
    released: bool,
}

/// A held lease. [`LeaseGuard::release`] marks it released; a run that
/// crashes leaves it to expire.
#[derive(Debug)]
pub struct LeaseGuard {
    warehouse: Warehouse,
    path: object_store::path::Path,
    record: LeaseRecord,
}

fn epoch_name(epoch: u64) -> String {
    format!("{epoch:020}.json")
}

fn parse_epoch(name: &str) -> Option<u64> {
    name.strip_suffix(".json")?.parse().ok()
}

/// Takes the lease of `pipeline` for `timeout`. Fails with
/// [`Error::LeaseHeld`] while another run has it.
pub fn acquire(
    warehouse: &Warehouse,
    pipeline: &str,
    run_id: &str,
    timeout: Duration,
) -> Result<LeaseGuard> {
    let prefix = warehouse.path(&format!("leases/{pipeline}"));
    let epochs: Vec<u64> = warehouse
        .list(&prefix)?
        .iter()
        .filter_map(|meta| meta.location.filename().and_then(parse_epoch))
        .collect();
    let current = epochs.iter().copied().max();
    let now = Utc::now();
    if let Some(epoch) = current {
        let path = prefix.clone().join(epoch_name(epoch));
        let record: Option<LeaseRecord> = warehouse
            .get(&path)?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        if let Some(record) = record {
            if !record.released && record.expires_at > now {
                return Err(held(record));
            }
            if !record.released {
                tracing::warn!(
                    pipeline,
                    run_id = %record.run_id,
                    "taking over the expired lease of a run that did not finish"
                );
            }
        }
    }

    let epoch = current.map_or(0, |e| e + 1);
    let path = prefix.clone().join(epoch_name(epoch));
    let record = LeaseRecord {
        pipeline: pipeline.to_string(),
        run_id: run_id.to_string(),
        epoch,
        acquired_at: now,
        expires_at: now + timeout,
        released: false,
    };
    let body = Bytes::from(serde_json::to_vec(&record)?);
    match warehouse.put_if_absent(&path, body)? {
        PutOutcome::Created => {}
        PutOutcome::AlreadyExists => {
            // Another run created this epoch first: it holds the lease.
            let winner: Option<LeaseRecord> = warehouse
                .get(&path)?
                .and_then(|bytes| serde_json::from_slice(&bytes).ok());
            return Err(match winner {
                Some(winner) => held(winner),
                None => Error::Data(format!(
                    "could not take the lease of pipeline `{pipeline}`: another run took it first"
                )),
            });
        }
    }
    // Older epochs are never read again, so they are deleted.
    for old in epochs.iter().filter(|e| **e < epoch) {
        let _ = warehouse.delete(&prefix.clone().join(epoch_name(*old)));
    }
    Ok(LeaseGuard {
        warehouse: warehouse.clone(),
        path,
        record,
    })
}

fn held(record: LeaseRecord) -> Error {
    Error::LeaseHeld {
        pipeline: record.pipeline,
        run_id: record.run_id,
        expires_at: record.expires_at.to_rfc3339(),
    }
}

impl LeaseGuard {
    /// Marks the lease released, so the next run may take it at once.
    pub fn release(mut self) {
        self.record.released = true;
        let result = serde_json::to_vec(&self.record)
            .map_err(Error::from)
            .and_then(|body| self.warehouse.put(&self.path, Bytes::from(body)));
        if let Err(e) = result {
            tracing::warn!(
                run_id = %self.record.run_id,
                error = %e,
                "failed to release the lease; it expires by itself"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn racing_runs_get_one_lease() {
        let warehouse = Warehouse::open("memory://").unwrap();
        let first = acquire(&warehouse, "p", "a", Duration::minutes(5)).unwrap();
        let err = acquire(&warehouse, "p", "b", Duration::minutes(5)).unwrap_err();
        assert!(
            matches!(err, Error::LeaseHeld { ref run_id, .. } if run_id == "a"),
            "{err}"
        );
        first.release();
        let second = acquire(&warehouse, "p", "b", Duration::minutes(5)).unwrap();
        assert_eq!(second.record.epoch, 1);
    }

    #[test]
    fn expired_lease_taken_over_once() {
        let dir = tempfile::tempdir().unwrap();
        let warehouse = Warehouse::open(dir.path().to_str().unwrap()).unwrap();
        let _crashed = acquire(&warehouse, "p", "crashed", Duration::milliseconds(-1)).unwrap();
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let warehouse = warehouse.clone();
                std::thread::spawn(move || {
                    acquire(&warehouse, "p", &format!("run{i}"), Duration::minutes(5)).is_ok()
                })
            })
            .collect();
        let winners = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|ok| *ok)
            .count();
        assert_eq!(winners, 1);
    }
}
