//! Caller-bound plans and the statement handles tickets carry.

use super::*;

/// Plans made to answer GetFlightInfo, kept for the DoGet that follows it (clients ask at
/// once): the query is planned once, on the snapshot of its first call. A ticket whose plan is
/// gone (expired, evicted, another server) is planned again.
///
/// A kept plan belongs to its caller: its id is 128 random bits (not guessable from another
/// ticket), and it is handed out only to the connection that asked for it and for the same SQL
/// and parameters. Any other redemption of the id plans the ticket's own SQL afresh, so a
/// forged or replayed ticket never yields another caller's plan.
#[derive(Default)]
pub(super) struct PlanCache {
    pub(super) plans: std::sync::Mutex<std::collections::VecDeque<Kept>>,
}

pub(super) struct Kept {
    pub(super) id: String,
    pub(super) at: std::time::Instant,
    pub(super) owner: Owner,
    pub(super) planned: Planned,
}

/// Who may redeem a kept plan: the connection that asked, for the statement it asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Owner {
    pub(super) peer: Option<std::net::SocketAddr>,
    pub(super) sql: String,
    pub(super) params: Option<String>,
}

impl Owner {
    pub(super) fn of<T>(handle: &Handle, request: &Request<T>) -> Self {
        Owner {
            peer: request.remote_addr(),
            sql: handle.sql.clone(),
            params: handle.params.clone(),
        }
    }
}

/// Plans waiting for their DoGet, at most.
pub(super) const PLANS_KEPT: usize = 64;
/// Batches a DoPut of parameters may send (one row in all; clients send one or two).
pub(super) const PARAM_BATCHES: usize = 8;
/// How long a plan waits for its DoGet.
pub(super) const PLAN_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

impl PlanCache {
    pub(super) fn put(&self, owner: Owner, planned: Planned) -> String {
        let id = format!("{:032x}", rand::random::<u128>());
        if let Ok(mut plans) = self.plans.lock() {
            plans.retain(|k| k.at.elapsed() < PLAN_WAIT);
            if plans.len() >= PLANS_KEPT {
                plans.pop_front();
            }
            plans.push_back(Kept {
                id: id.clone(),
                at: std::time::Instant::now(),
                owner,
                planned,
            });
        }
        id
    }

    /// The plan kept under `id` if `owner` is the one who asked for it; otherwise `None`,
    /// leaving it for its owner.
    pub(super) fn take(&self, id: &str, owner: &Owner) -> Option<Planned> {
        let mut plans = self.plans.lock().ok()?;
        let i = plans.iter().position(|k| k.id == id && &k.owner == owner)?;
        let kept = plans.remove(i)?;
        (kept.at.elapsed() < PLAN_WAIT).then_some(kept.planned)
    }
}

/// What a ticket or prepared-statement handle carries.
#[derive(Serialize, Deserialize)]
pub(super) struct Handle {
    pub(super) sql: String,
    /// One parameter row as an Arrow IPC stream, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) params: Option<String>,
    /// In a ticket: the plan GetFlightInfo made, waiting in the [`PlanCache`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) plan: Option<String>,
}

impl Handle {
    pub(super) fn encode(&self) -> Result<Vec<u8>, Status> {
        serde_json::to_vec(self).map_err(|e| Status::internal(e.to_string()))
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Self, Status> {
        serde_json::from_slice(bytes)
            .map_err(|_| Status::invalid_argument("not a statement handle of this server"))
    }

    pub(super) fn params(&self) -> Result<Option<Vec<ScalarValue>>, Status> {
        let Some(encoded) = &self.params else {
            return Ok(None);
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| Status::invalid_argument("bad parameters in statement handle"))?;
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut values = None;
        for batch in reader {
            let batch = batch.map_err(|e| Status::invalid_argument(e.to_string()))?;
            if batch.num_rows() > 0 && values.is_none() {
                values = Some(
                    batch
                        .columns()
                        .iter()
                        .map(|c| ScalarValue::try_from_array(c, 0))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| Status::invalid_argument(e.to_string()))?,
                );
            }
        }
        Ok(values)
    }
}

pub(super) fn encode_params(batch: &RecordBatch) -> Result<String, Status> {
    let mut buf = Vec::new();
    {
        let mut writer = StreamWriter::try_new(&mut buf, &batch.schema())
            .map_err(|e| Status::internal(e.to_string()))?;
        writer
            .write(batch)
            .map_err(|e| Status::internal(e.to_string()))?;
        writer
            .finish()
            .map_err(|e| Status::internal(e.to_string()))?;
    }
    Ok(base64::engine::general_purpose::STANDARD.encode(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn planned(sql: &str) -> Planned {
        let df = datafusion::prelude::SessionContext::new()
            .sql(sql)
            .await
            .unwrap();
        let wire_schema = statement::wire_schema(df.schema().as_arrow());
        Planned { df, wire_schema }
    }

    fn owner(peer: &str, sql: &str) -> Owner {
        Owner {
            peer: Some(peer.parse().unwrap()),
            sql: sql.into(),
            params: None,
        }
    }

    #[tokio::test]
    async fn a_kept_plan_goes_only_to_its_caller_for_its_sql() {
        let cache = PlanCache::default();
        let a = owner("127.0.0.1:40000", "SELECT 1");
        let id = cache.put(a.clone(), planned("SELECT 1").await);
        let other = cache.put(a.clone(), planned("SELECT 1").await);
        assert_eq!(id.len(), 32, "128 random bits");
        assert_ne!(id, other);
        // Another connection, or the same id with other SQL or parameters: not handed out.
        assert!(cache
            .take(&id, &owner("127.0.0.1:40001", "SELECT 1"))
            .is_none());
        assert!(cache
            .take(&id, &owner("127.0.0.1:40000", "SELECT 2"))
            .is_none());
        let with_params = Owner {
            params: Some("x".into()),
            ..a.clone()
        };
        assert!(cache.take(&id, &with_params).is_none());
        // The caller still gets it, once.
        assert!(cache.take(&id, &a).is_some());
        assert!(cache.take(&id, &a).is_none());
    }
}
