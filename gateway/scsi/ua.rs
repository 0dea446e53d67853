//! Unit attention conditions (SAM-5 5.14, SPC-4 5.14): kept per I_T nexus,
//! reported one at a time on the next command that is not INQUIRY, REPORT
//! LUNS or REQUEST SENSE, oldest first.

use super::sense::Asc;
use std::collections::{HashMap, VecDeque};

/// At most this many conditions are queued per nexus; older duplicates
/// collapse and beyond the cap the oldest is dropped, so an initiator that
/// never reads them cannot grow the queue without bound.
const MAX_PENDING: usize = 16;

#[derive(Default, Debug)]
pub struct UaTable {
    pending: HashMap<String, VecDeque<Asc>>,
}

impl UaTable {
    /// Starts tracking a nexus (a session logged in).
    pub fn attach(&mut self, key: &str) {
        self.pending.entry(key.to_string()).or_default();
    }

    /// Forgets a nexus (its session is gone): conditions die with it.
    pub fn detach(&mut self, key: &str) {
        self.pending.remove(key);
    }

    pub fn is_attached(&self, key: &str) -> bool {
        self.pending.contains_key(key)
    }

    pub fn push(&mut self, key: &str, asc: Asc) {
        let q = self.pending.entry(key.to_string()).or_default();
        if q.contains(&asc) {
            return;
        }
        if q.len() >= MAX_PENDING {
            q.pop_front();
        }
        q.push_back(asc);
    }

    /// Establishes `asc` for every attached nexus matching `pred`.
    pub fn push_where(&mut self, asc: Asc, mut pred: impl FnMut(&str) -> bool) {
        let keys: Vec<String> = self.pending.keys().filter(|k| pred(k)).cloned().collect();
        for k in keys {
            self.push(&k, asc);
        }
    }

    pub fn pop(&mut self, key: &str) -> Option<Asc> {
        self.pending.get_mut(key).and_then(|q| q.pop_front())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_is_fifo_deduplicated_and_bounded() {
        let mut t = UaTable::default();
        t.attach("a");
        t.push("a", Asc::BUS_DEVICE_RESET);
        t.push("a", Asc::BUS_DEVICE_RESET);
        t.push("a", Asc::CAPACITY_DATA_CHANGED);
        assert_eq!(t.pop("a"), Some(Asc::BUS_DEVICE_RESET));
        assert_eq!(t.pop("a"), Some(Asc::CAPACITY_DATA_CHANGED));
        assert_eq!(t.pop("a"), None);
        for i in 0..100u8 {
            t.push("a", Asc(0x2A, i));
        }
        assert_eq!(t.pending["a"].len(), MAX_PENDING);
        t.detach("a");
        assert_eq!(t.pop("a"), None);
    }
}
