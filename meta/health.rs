//! Replica health of extents and volumes, from the extent records and
//! the nodes' liveness. Pure, so the rules are unit-tested here.
//!
//! A replica is *live* when its node is `up` or `draining` and its lease
//! is alive. Per extent, in order of precedence:
//!
//! | state | when |
//! |---|---|
//! | `unavailable` | no replica is live |
//! | `resyncing` | it has learners (being filled) |
//! | `degraded` | fewer live replicas than the pool's replica count |
//! | `healthy` | otherwise |
//!
//! A volume shows its worst extent's state (unavailable > degraded >
//! resyncing > healthy) and the count of each.

use crate::proto::{self, ExtentHealth};
use crate::records::ExtentRecord;

/// The health of one extent and its live replica count.
pub fn extent_health(
    e: &ExtentRecord,
    replica_count: u32,
    live: impl Fn(&str) -> bool,
) -> (ExtentHealth, u32) {
    let live_replicas = e.replicas.iter().filter(|r| live(r)).count() as u32;
    let state = if live_replicas == 0 {
        ExtentHealth::Unavailable
    } else if !e.learners.is_empty() {
        ExtentHealth::Resyncing
    } else if live_replicas < replica_count {
        ExtentHealth::Degraded
    } else {
        ExtentHealth::Healthy
    };
    (state, live_replicas)
}

/// Severity rank: higher is worse.
fn rank(h: ExtentHealth) -> u8 {
    match h {
        ExtentHealth::Unspecified | ExtentHealth::Healthy => 0,
        ExtentHealth::Resyncing => 1,
        ExtentHealth::Degraded => 2,
        ExtentHealth::Unavailable => 3,
    }
}

/// Adds up extent states into a volume's health.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    h: proto::VolumeHealth,
}

impl Tally {
    /// An empty tally (a volume without extents is healthy).
    pub fn new() -> Self {
        Tally {
            h: proto::VolumeHealth {
                state: ExtentHealth::Healthy as i32,
                ..Default::default()
            },
        }
    }

    /// Counts one extent.
    pub fn add(&mut self, state: ExtentHealth, resync: &[proto::ResyncProgress]) {
        self.add_n(state, 1);
        for r in resync {
            self.h.resync_bytes_done += r.bytes_done;
            self.h.resync_bytes_total += r.bytes_total;
        }
    }

    /// Counts `n` extents in `state`.
    pub fn add_n(&mut self, state: ExtentHealth, n: u64) {
        if n == 0 {
            return;
        }
        self.h.extents += n;
        match state {
            ExtentHealth::Unspecified | ExtentHealth::Healthy => self.h.healthy += n,
            ExtentHealth::Resyncing => self.h.resyncing += n,
            ExtentHealth::Degraded => self.h.degraded += n,
            ExtentHealth::Unavailable => self.h.unavailable += n,
        }
        let cur = ExtentHealth::try_from(self.h.state).unwrap_or(ExtentHealth::Healthy);
        if rank(state) > rank(cur) {
            self.h.state = state as i32;
        }
    }

    /// The volume's health.
    pub fn finish(self) -> proto::VolumeHealth {
        self.h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(replicas: &[&str], learners: &[&str]) -> ExtentRecord {
        ExtentRecord {
            id: 1,
            volume_uuid: "u".into(),
            index: 0,
            replicas: replicas.iter().map(|s| s.to_string()).collect(),
            generation: 1,
            learners: learners.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn extent_states() {
        let live = |n: &str| n != "dead";
        assert_eq!(
            extent_health(&ext(&["a", "b", "c"], &[]), 3, live),
            (ExtentHealth::Healthy, 3)
        );
        assert_eq!(
            extent_health(&ext(&["a", "dead", "c"], &[]), 3, live),
            (ExtentHealth::Degraded, 2)
        );
        assert_eq!(
            extent_health(&ext(&["a", "b"], &[]), 3, live),
            (ExtentHealth::Degraded, 2)
        );
        assert_eq!(
            extent_health(&ext(&["a", "b"], &["c"]), 3, live),
            (ExtentHealth::Resyncing, 2)
        );
        assert_eq!(
            extent_health(&ext(&["dead"], &["c"]), 2, live),
            (ExtentHealth::Unavailable, 0)
        );
        // A draining replica still counted until it leaves.
        assert_eq!(
            extent_health(&ext(&["a", "b", "c"], &[]), 2, live),
            (ExtentHealth::Healthy, 3)
        );
        // RF 1 on a dead node: healthy by its record, unavailable in fact.
        assert_eq!(
            extent_health(&ext(&["dead"], &[]), 1, live),
            (ExtentHealth::Unavailable, 0)
        );
    }

    #[test]
    fn volume_tally_is_the_worst() {
        let mut t = Tally::new();
        assert_eq!(t.clone().finish().state, ExtentHealth::Healthy as i32);
        t.add_n(ExtentHealth::Healthy, 5);
        t.add(
            ExtentHealth::Resyncing,
            &[proto::ResyncProgress {
                node: "c".into(),
                bytes_done: 10,
                bytes_total: 40,
                updated_unix_ms: 0,
            }],
        );
        assert_eq!(t.clone().finish().state, ExtentHealth::Resyncing as i32);
        t.add(ExtentHealth::Degraded, &[]);
        t.add(ExtentHealth::Resyncing, &[]);
        let h = t.finish();
        assert_eq!(h.state, ExtentHealth::Degraded as i32);
        assert_eq!(
            (h.extents, h.healthy, h.resyncing, h.degraded, h.unavailable),
            (8, 5, 2, 1, 0)
        );
        assert_eq!((h.resync_bytes_done, h.resync_bytes_total), (10, 40));
    }
}
