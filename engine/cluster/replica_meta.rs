//! What the replication service needs from meta, over [`MetaLink`].

use super::MetaLink;
use crate::replica::service::{ExtentRecord, MetaRefusal, PlacedExtent, ReplicaMeta};
use ferrite_meta::client::Code;
use ferrite_meta::proto;
use std::collections::HashMap;
use std::sync::Arc;

/// [`ReplicaMeta`] on the meta service.
pub struct MetaReplicaOps {
    link: Arc<MetaLink>,
}

impl MetaReplicaOps {
    pub fn new(link: Arc<MetaLink>) -> Arc<Self> {
        Arc::new(Self { link })
    }
}

fn record(e: &proto::Extent) -> ExtentRecord {
    ExtentRecord {
        id: e.id,
        index: e.index,
        replicas: e.replicas.clone(),
        learners: e.learners.clone(),
        generation: e.generation,
    }
}

impl ReplicaMeta for MetaReplicaOps {
    fn list_node_extents(&self, node: &str) -> Result<Vec<PlacedExtent>, String> {
        let n = node.to_string();
        let r = self
            .link
            .call(move |c| async move { c.list_node_extents(&n).await })
            .map_err(|s| s.message().to_string())?;
        Ok(r.extents
            .iter()
            .enumerate()
            .map(|(i, e)| PlacedExtent {
                record: record(e),
                volume: r.volume_names.get(i).cloned().unwrap_or_default(),
                extent_size: r.extent_sizes.get(i).copied().unwrap_or(0),
            })
            .collect())
    }

    fn get_extent(&self, id: u64) -> Result<ExtentRecord, String> {
        self.link
            .call(move |c| async move { c.get_extent(id).await })
            .map(|e| record(&e))
            .map_err(|s| s.message().to_string())
    }

    fn report_failure(
        &self,
        id: u64,
        generation: u64,
        failed: &str,
        reporter: &str,
    ) -> Result<ExtentRecord, MetaRefusal> {
        let (f, r) = (failed.to_string(), reporter.to_string());
        match self
            .link
            .call(move |c| async move { c.report_replica_failure(id, generation, &f, &r).await })
        {
            Ok(e) => Ok(record(&e)),
            Err(s) if s.code() == Code::FailedPrecondition => {
                Err(MetaRefusal::LastCopy(s.message().to_string()))
            }
            Err(s) => Err(MetaRefusal::Unavailable(s.message().to_string())),
        }
    }

    fn complete_resync(
        &self,
        id: u64,
        generation: u64,
        node: &str,
    ) -> Result<ExtentRecord, String> {
        let n = node.to_string();
        self.link
            .call(move |c| async move { c.complete_resync(id, generation, &n).await })
            .map(|e| record(&e))
            .map_err(|s| s.message().to_string())
    }

    fn report_progress(&self, id: u64, node: &str, done: u64, total: u64) {
        let n = node.to_string();
        let _ = self
            .link
            .call(move |c| async move { c.report_resync_progress(id, &n, done, total).await });
    }

    fn replica_addresses(&self) -> Result<HashMap<String, String>, String> {
        let nodes = self
            .link
            .call(|c| async move { c.list_nodes().await })
            .map_err(|s| s.message().to_string())?;
        Ok(nodes
            .into_iter()
            .filter_map(|n| n.addresses.map(|a| (n.id, a.replica)))
            .collect())
    }
}
