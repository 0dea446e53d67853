//! Replica placement: which nodes hold a new extent. Pure (no I/O), so the
//! rules are unit-tested here; the service feeds it the `up` nodes with
//! live leases and writes the result in one transaction.
//!
//! Rules: most available space first (the primary is the emptiest node);
//! never two replicas on one node; with failure domain `zone`, never two
//! in one zone when the eligible nodes span at least `replica_count`
//! zones, and as few shared zones as possible otherwise.

use std::collections::HashSet;
use std::fmt;

use crate::records::FailureDomain;

/// A node that may receive replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Node id.
    pub id: String,
    /// Zone ("" when none).
    pub zone: String,
    /// Bytes meta may still place there.
    pub available: u64,
}

/// Why an extent could not be placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacementError {
    /// Fewer usable nodes than replicas wanted.
    NotEnoughNodes {
        /// Replicas wanted.
        needed: usize,
        /// Nodes up with a live lease.
        up: usize,
    },
    /// Enough nodes, but too few with room for another extent.
    NoSpace {
        /// Replicas wanted.
        needed: usize,
        /// Nodes with room for one more extent.
        with_room: usize,
        /// Bytes per extent.
        extent_size: u64,
    },
}

impl fmt::Display for PlacementError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlacementError::NotEnoughNodes { needed, up } => write!(
                f,
                "{needed} replica(s) need {needed} distinct nodes but only {up} node(s) are up"
            ),
            PlacementError::NoSpace {
                needed,
                with_room,
                extent_size,
            } => write!(
                f,
                "{needed} replica(s) of {extent_size} bytes need {needed} nodes with room but only {with_room} node(s) have it"
            ),
        }
    }
}

/// Places extents one after the other over a fixed set of candidates,
/// counting down their available space as it goes (so a thick volume's
/// extents spread out).
#[derive(Debug, Clone)]
pub struct Placer {
    candidates: Vec<Candidate>,
}

impl Placer {
    /// A placer over `candidates` (nodes up with a live lease).
    pub fn new(candidates: Vec<Candidate>) -> Self {
        Placer { candidates }
    }

    /// The candidates with their space as left by the placements so far.
    pub fn candidates(&self) -> &[Candidate] {
        &self.candidates
    }

    /// Chooses `replicas` nodes for one extent of `extent_size` bytes,
    /// primary first, and takes the space from them.
    pub fn place(
        &mut self,
        replicas: usize,
        domain: FailureDomain,
        extent_size: u64,
    ) -> Result<Vec<String>, PlacementError> {
        self.choose(replicas, domain, extent_size, &HashSet::new(), &[])
    }

    /// Chooses `count` more nodes for an extent that already has copies
    /// (re-replication, drain): never a node in `exclude` (those holding
    /// it, and any the caller rules out), and with failure domain `zone`
    /// preferably none of `zones_in_use` (the zones of the copies that
    /// stay) nor a zone twice. Takes the space from the chosen nodes.
    pub fn place_more(
        &mut self,
        count: usize,
        domain: FailureDomain,
        extent_size: u64,
        exclude: &HashSet<&str>,
        zones_in_use: &[&str],
    ) -> Result<Vec<String>, PlacementError> {
        self.choose(count, domain, extent_size, exclude, zones_in_use)
    }

    fn choose(
        &mut self,
        replicas: usize,
        domain: FailureDomain,
        extent_size: u64,
        exclude: &HashSet<&str>,
        zones_in_use: &[&str],
    ) -> Result<Vec<String>, PlacementError> {
        let usable: Vec<usize> = (0..self.candidates.len())
            .filter(|&i| !exclude.contains(self.candidates[i].id.as_str()))
            .collect();
        if usable.len() < replicas {
            return Err(PlacementError::NotEnoughNodes {
                needed: replicas,
                up: usable.len(),
            });
        }
        let eligible: Vec<usize> = usable
            .into_iter()
            .filter(|&i| self.candidates[i].available >= extent_size)
            .collect();
        if eligible.len() < replicas {
            return Err(PlacementError::NoSpace {
                needed: replicas,
                with_room: eligible.len(),
                extent_size,
            });
        }
        let mut chosen: Vec<usize> = Vec::with_capacity(replicas);
        let mut used_zones: HashSet<&str> = zones_in_use.iter().copied().collect();
        for _ in 0..replicas {
            let best = |prefer_new_zone: bool| {
                eligible
                    .iter()
                    .copied()
                    .filter(|i| !chosen.contains(i))
                    .filter(|&i| {
                        !prefer_new_zone || !used_zones.contains(self.candidates[i].zone.as_str())
                    })
                    // Most room first; the id breaks ties so the result
                    // does not depend on the order nodes were listed in.
                    .max_by(|&a, &b| {
                        let (ca, cb) = (&self.candidates[a], &self.candidates[b]);
                        ca.available.cmp(&cb.available).then(cb.id.cmp(&ca.id))
                    })
            };
            let pick = match domain {
                FailureDomain::Zone => best(true).or_else(|| best(false)),
                FailureDomain::Node => best(false),
            };
            // `eligible` has at least `replicas` entries, so a node is left.
            let Some(i) = pick else { break };
            used_zones.insert(self.candidates[i].zone.as_str());
            chosen.push(i);
        }
        if chosen.len() < replicas {
            return Err(PlacementError::NoSpace {
                needed: replicas,
                with_room: chosen.len(),
                extent_size,
            });
        }
        for &i in &chosen {
            self.candidates[i].available -= extent_size;
        }
        Ok(chosen
            .into_iter()
            .map(|i| self.candidates[i].id.clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, zone: &str, available: u64) -> Candidate {
        Candidate {
            id: id.into(),
            zone: zone.into(),
            available,
        }
    }

    #[test]
    fn most_room_first_and_distinct_nodes() {
        let mut p = Placer::new(vec![c("a", "", 10), c("b", "", 30), c("c", "", 20)]);
        assert_eq!(p.place(2, FailureDomain::Node, 5).unwrap(), vec!["b", "c"]);
        // b=25, c=15, a=10
        assert_eq!(
            p.place(3, FailureDomain::Node, 5).unwrap(),
            vec!["b", "c", "a"]
        );
    }

    #[test]
    fn spreads_equal_nodes() {
        let mut p = Placer::new(vec![c("a", "", 100), c("b", "", 100), c("c", "", 100)]);
        let mut primaries = Vec::new();
        for _ in 0..3 {
            primaries.push(p.place(1, FailureDomain::Node, 10).unwrap()[0].clone());
        }
        primaries.sort();
        assert_eq!(primaries, vec!["a", "b", "c"]);
    }

    #[test]
    fn zones_are_distinct_when_enough_exist() {
        // Zone z1 has the two emptiest nodes; zone rule must skip the second.
        let mut p = Placer::new(vec![
            c("a", "z1", 100),
            c("b", "z1", 90),
            c("c", "z2", 10),
            c("d", "z3", 5),
        ]);
        let r = p.place(3, FailureDomain::Zone, 5).unwrap();
        assert_eq!(r, vec!["a", "c", "d"]);
        // With domain node the zone does not matter.
        let mut p = Placer::new(vec![c("a", "z1", 100), c("b", "z1", 90), c("c", "z2", 10)]);
        assert_eq!(p.place(2, FailureDomain::Node, 5).unwrap(), vec!["a", "b"]);
    }

    #[test]
    fn too_few_zones_falls_back_to_distinct_nodes() {
        let mut p = Placer::new(vec![c("a", "z1", 100), c("b", "z1", 90), c("c", "z2", 10)]);
        let r = p.place(3, FailureDomain::Zone, 5).unwrap();
        assert_eq!(r, vec!["a", "c", "b"]);
    }

    #[test]
    fn errors() {
        let mut p = Placer::new(vec![c("a", "", 100)]);
        let e = p.place(3, FailureDomain::Node, 5).unwrap_err();
        assert_eq!(e, PlacementError::NotEnoughNodes { needed: 3, up: 1 });
        assert!(e.to_string().contains("only 1 node(s) are up"));
        let mut p = Placer::new(vec![c("a", "", 100), c("b", "", 4)]);
        assert!(matches!(
            p.place(2, FailureDomain::Node, 5),
            Err(PlacementError::NoSpace { with_room: 1, .. })
        ));
        // A failed placement takes no space.
        assert_eq!(p.candidates()[0].available, 100);
    }

    #[test]
    fn more_copies_avoid_holders_and_their_zones() {
        let mut p = Placer::new(vec![
            c("a", "z1", 100),
            c("b", "z1", 90),
            c("c", "z2", 80),
            c("d", "z3", 10),
        ]);
        let ex: HashSet<&str> = ["a"].into_iter().collect();
        // The copy on a (z1) stays: b is roomier but shares its zone.
        assert_eq!(
            p.place_more(1, FailureDomain::Zone, 5, &ex, &["z1"])
                .unwrap(),
            vec!["c"]
        );
        // Zones z1 and z2 in use: d (z3) although it is the fullest.
        let ex: HashSet<&str> = ["a", "c"].into_iter().collect();
        assert_eq!(
            p.place_more(1, FailureDomain::Zone, 5, &ex, &["z1", "z2"])
                .unwrap(),
            vec!["d"]
        );
        // No zone left: the roomiest other node.
        let ex: HashSet<&str> = ["a", "c", "d"].into_iter().collect();
        assert_eq!(
            p.place_more(1, FailureDomain::Zone, 5, &ex, &["z1", "z2", "z3"])
                .unwrap(),
            vec!["b"]
        );
        // Never a holder, even when nothing else is left.
        let ex: HashSet<&str> = ["a", "b", "c", "d"].into_iter().collect();
        assert!(matches!(
            p.place_more(1, FailureDomain::Node, 5, &ex, &[]),
            Err(PlacementError::NotEnoughNodes { needed: 1, up: 0 })
        ));
    }

    #[test]
    fn space_runs_out() {
        let mut p = Placer::new(vec![c("a", "", 10), c("b", "", 10)]);
        assert!(p.place(2, FailureDomain::Node, 5).is_ok());
        assert!(p.place(2, FailureDomain::Node, 5).is_ok());
        assert!(p.place(1, FailureDomain::Node, 5).is_err());
    }
}
