//! The scheduling queue, as upstream's: an active heap ordered by priority (then by
//! when the pod became active), a backoff heap of pods waiting out their backoff
//! (1 s doubling to 10 s per failed attempt), and the unschedulable pods that wait
//! for a cluster change that might help them (a node added or changed, a pod gone)
//! before they are tried again, or for five minutes at most.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::types::PodInfo;

/// Upstream's podInitialBackoffDuration.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Upstream's podMaxBackoffDuration.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Upstream's podMaxInUnschedulablePodsDuration: after it, an unschedulable pod is
/// tried again even though nothing it was waiting for happened.
pub const MAX_UNSCHEDULABLE: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Active,
    Backoff,
    Unschedulable,
    /// Popped and being scheduled or bound.
    InFlight,
}

#[derive(Debug)]
struct Entry {
    pod: Arc<PodInfo>,
    attempts: u32,
    state: State,
    /// Bumped on every state change, so stale heap items are skipped.
    generation: u64,
    backoff_until: Instant,
    since: Instant,
    /// A cluster change happened while the pod was in flight: a failure then retries
    /// after backoff instead of waiting for the next change.
    moved: bool,
}

/// Pending pods of this scheduler.
#[derive(Debug, Default)]
pub struct Queue {
    entries: HashMap<String, Entry>,
    /// (priority, earliest activation first, key, generation).
    active: BinaryHeap<(i32, Reverse<u64>, String, u64)>,
    backoff: BinaryHeap<Reverse<(Instant, String, u64)>>,
    seq: u64,
    /// Keys of pods unschedulable or in flight: the only ones a cluster change
    /// concerns, so that a change costs nothing with a long active queue.
    waiting: std::collections::HashSet<String>,
}

/// Backoff after `attempts` failed attempts.
pub fn backoff(attempts: u32) -> Duration {
    let shift = attempts.saturating_sub(1).min(16);
    INITIAL_BACKOFF
        .saturating_mul(1u32 << shift)
        .min(MAX_BACKOFF)
}

impl Queue {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Counts of pods (active, backoff, unschedulable, in flight).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let mut c = (0, 0, 0, 0);
        for e in self.entries.values() {
            match e.state {
                State::Active => c.0 += 1,
                State::Backoff => c.1 += 1,
                State::Unschedulable => c.2 += 1,
                State::InFlight => c.3 += 1,
            }
        }
        c
    }

    fn activate(&mut self, key: &str) {
        self.seq += 1;
        let seq = self.seq;
        if let Some(e) = self.entries.get_mut(key) {
            e.state = State::Active;
            self.waiting.remove(key);
            e.generation += 1;
            self.active
                .push((e.pod.priority, Reverse(seq), key.to_string(), e.generation));
        }
    }

    fn enter_backoff(&mut self, key: &str, now: Instant) {
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        if e.backoff_until <= now {
            self.activate(key);
            return;
        }
        e.state = State::Backoff;
        self.waiting.remove(key);
        e.generation += 1;
        self.backoff
            .push(Reverse((e.backoff_until, key.to_string(), e.generation)));
    }

    /// A pending pod appeared or changed. Returns whether it became active.
    pub fn upsert(&mut self, pod: Arc<PodInfo>, now: Instant) -> bool {
        let key = pod.key();
        match self.entries.get_mut(&key) {
            None => {
                self.entries.insert(
                    key.clone(),
                    Entry {
                        pod,
                        attempts: 0,
                        state: State::Active,
                        generation: 0,
                        backoff_until: now,
                        since: now,
                        moved: false,
                    },
                );
                self.activate(&key);
                true
            }
            Some(e) => {
                // Only a change a scheduling decision depends on (not our own status
                // writes) sends an unschedulable pod back to be tried.
                let changed = e.pod.pod.spec != pod.pod.spec
                    || e.pod.pod.metadata.labels != pod.pod.metadata.labels;
                e.pod = pod;
                match e.state {
                    State::Unschedulable if changed => {
                        self.enter_backoff(&key, now);
                        true
                    }
                    State::InFlight if changed => {
                        e.moved = true;
                        false
                    }
                    _ => false,
                }
            }
        }
    }

    /// A pending pod was deleted or bound elsewhere.
    pub fn remove(&mut self, key: &str) {
        self.entries.remove(key);
        self.waiting.remove(key);
    }

    /// Keys of every queued pod.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.entries.keys()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// Moves pods whose backoff has passed to the active heap.
    fn flush_backoff(&mut self, now: Instant) {
        while let Some(Reverse((at, key, generation))) = self.backoff.peek().cloned() {
            if at > now {
                break;
            }
            self.backoff.pop();
            let current = self
                .entries
                .get(&key)
                .is_some_and(|e| e.generation == generation && e.state == State::Backoff);
            if current {
                self.activate(&key);
            }
        }
    }

    /// The next pod to schedule, now in flight.
    pub fn pop(&mut self, now: Instant) -> Option<Arc<PodInfo>> {
        self.flush_backoff(now);
        while let Some((_, _, key, generation)) = self.active.pop() {
            if let Some(e) = self.entries.get_mut(&key) {
                if e.generation == generation && e.state == State::Active {
                    e.state = State::InFlight;
                    self.waiting.insert(key.clone());
                    e.generation += 1;
                    e.moved = false;
                    return Some(e.pod.clone());
                }
            }
        }
        None
    }

    /// When the earliest backoff ends, if any pod is backing off.
    pub fn next_backoff(&self) -> Option<Instant> {
        self.backoff.peek().map(|Reverse((at, _, _))| *at)
    }

    /// The in-flight pod was bound (or assumed and handed to binding): forget it.
    pub fn done(&mut self, key: &str) {
        self.entries.remove(key);
        self.waiting.remove(key);
    }

    /// No node fits the in-flight pod: it waits for a cluster change (after its
    /// backoff), unless one happened while it was in flight.
    pub fn unschedulable(&mut self, key: &str, now: Instant) {
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        e.attempts += 1;
        e.backoff_until = now + backoff(e.attempts);
        if e.moved {
            self.enter_backoff(key, now);
        } else {
            e.state = State::Unschedulable;
            self.waiting.insert(key.to_string());
            e.generation += 1;
            e.since = now;
        }
    }

    /// A failure other than a misfit (a binding error): retried after backoff. The pod
    /// is put back even if it left the queue meanwhile, since it is still pending.
    pub fn error(&mut self, pod: Arc<PodInfo>, now: Instant) {
        let key = pod.key();
        let e = self.entries.entry(key.clone()).or_insert_with(|| Entry {
            pod,
            attempts: 0,
            state: State::InFlight,
            generation: 0,
            backoff_until: now,
            since: now,
            moved: false,
        });
        e.attempts += 1;
        e.backoff_until = now + backoff(e.attempts);
        self.enter_backoff(&key, now);
    }

    /// A cluster change that may make unschedulable pods fit: they are tried again
    /// once their backoff has passed; pods in flight remember it.
    pub fn cluster_changed(&mut self, now: Instant) {
        let mut retry = Vec::new();
        for k in &self.waiting {
            if let Some(e) = self.entries.get_mut(k) {
                match e.state {
                    State::Unschedulable => retry.push(k.clone()),
                    State::InFlight => e.moved = true,
                    _ => {}
                }
            }
        }
        for k in retry {
            self.enter_backoff(&k, now);
        }
    }

    /// Tries again pods that have waited longer than [`MAX_UNSCHEDULABLE`].
    pub fn flush_stale_unschedulable(&mut self, now: Instant) {
        let keys: Vec<String> = self
            .waiting
            .iter()
            .filter(|k| {
                self.entries.get(*k).is_some_and(|e| {
                    e.state == State::Unschedulable && now - e.since >= MAX_UNSCHEDULABLE
                })
            })
            .cloned()
            .collect();
        for k in keys {
            self.enter_backoff(&k, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;

    fn pod(name: &str, priority: i32) -> Arc<PodInfo> {
        Arc::new(PodInfo::new(Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"containers": [{"name": "c"}], "priority": priority},
            }))
            .expect("a valid pod"),
        )))
    }

    #[test]
    fn priority_then_arrival_order() {
        let mut q = Queue::default();
        let t = Instant::now();
        q.upsert(pod("low-1", 0), t);
        q.upsert(pod("high", 100), t);
        q.upsert(pod("low-2", 0), t);
        let order: Vec<String> = std::iter::from_fn(|| q.pop(t))
            .map(|p| p.name.clone())
            .collect();
        assert_eq!(order, vec!["high", "low-1", "low-2"]);
    }

    #[test]
    fn backoff_doubles_to_ten_seconds() {
        let secs: Vec<u64> = (1..=6).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn unschedulable_pods_wait_for_a_change_and_their_backoff() {
        let mut q = Queue::default();
        let t = Instant::now();
        q.upsert(pod("p", 0), t);
        assert!(q.pop(t).is_some());
        q.unschedulable("default/p", t);
        assert!(
            q.pop(t + Duration::from_secs(60)).is_none(),
            "no change, no retry"
        );
        // Our own status write is an update that changes nothing scheduling reads.
        let mut with_status = (*pod("p", 0).pod).clone();
        with_status.status = Some(Default::default());
        assert!(!q.upsert(Arc::new(PodInfo::new(Arc::new(with_status))), t));
        q.cluster_changed(t);
        assert!(q.pop(t).is_none(), "still backing off");
        assert_eq!(q.next_backoff(), Some(t + INITIAL_BACKOFF));
        assert!(q.pop(t + INITIAL_BACKOFF).is_some());
        // Second failure: 2 s.
        q.unschedulable("default/p", t);
        q.cluster_changed(t + Duration::from_secs(1));
        assert!(q.pop(t + Duration::from_secs(1)).is_none());
        assert!(q.pop(t + Duration::from_secs(2)).is_some());
    }

    #[test]
    fn a_change_during_the_attempt_is_not_lost() {
        let mut q = Queue::default();
        let t = Instant::now();
        q.upsert(pod("p", 0), t);
        assert!(q.pop(t).is_some());
        q.cluster_changed(t);
        q.unschedulable("default/p", t);
        assert!(
            q.pop(t + INITIAL_BACKOFF).is_some(),
            "retried after backoff alone"
        );
    }

    #[test]
    fn stale_unschedulable_pods_are_flushed() {
        let mut q = Queue::default();
        let t = Instant::now();
        q.upsert(pod("p", 0), t);
        q.pop(t);
        q.unschedulable("default/p", t);
        q.flush_stale_unschedulable(t + Duration::from_secs(10));
        assert!(q.pop(t + Duration::from_secs(10)).is_none());
        q.flush_stale_unschedulable(t + MAX_UNSCHEDULABLE);
        assert!(q.pop(t + MAX_UNSCHEDULABLE).is_some());
    }
}
