//! The kubelet's per-key exponential back-off (client-go's `flowcontrol.Backoff` as the
//! kubelet configures it): 10 s doubling to 5 min, forgotten after twice the maximum
//! without a failure. Keys are `<pod uid>/<container>` for restarts and
//! `pull/<pod uid>/<container>` for image pulls.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// The first back-off after a failure.
pub const INITIAL: Duration = Duration::from_secs(10);
/// The longest back-off (the kubelet's `MaxContainerBackOff`).
pub const MAX: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
pub struct Backoff {
    /// Current back-off and the time of the event it was last raised for.
    entries: HashMap<String, (Duration, SystemTime)>,
}

fn expired(entry: &(Duration, SystemTime), at: SystemTime) -> bool {
    at.duration_since(entry.1).unwrap_or_default() > MAX * 2
}

impl Backoff {
    /// The back-off still to wait when the failure happened at `event`, if any.
    pub fn remaining(&self, key: &str, event: SystemTime, now: SystemTime) -> Option<Duration> {
        let e = self.entries.get(key)?;
        if expired(e, now) {
            return None;
        }
        let since = now.duration_since(event).unwrap_or_default();
        (since < e.0).then(|| e.0 - since)
    }

    /// The current back-off of `key` (for messages), if any.
    pub fn current(&self, key: &str) -> Option<Duration> {
        self.entries.get(key).map(|e| e.0)
    }

    /// Records a retry for a failure at `event`: the next back-off doubles.
    pub fn next(&mut self, key: &str, event: SystemTime) {
        let d = match self.entries.get(key) {
            Some(e) if !expired(e, event) => (e.0 * 2).min(MAX),
            _ => INITIAL,
        };
        self.entries.insert(key.to_string(), (d, event));
    }

    /// Forgets every key of a pod.
    pub fn forget_pod(&mut self, uid: &str) {
        self.entries
            .retain(|k, _| !k.starts_with(uid) && !k.starts_with(&format!("pull/{uid}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_ten_seconds_to_five_minutes() {
        let mut b = Backoff::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            b.remaining("k", t0, t0),
            None,
            "the first failure restarts at once"
        );
        b.next("k", t0);
        assert_eq!(b.current("k"), Some(INITIAL));
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(
            b.remaining("k", t1, t1 + Duration::from_secs(3)),
            Some(Duration::from_secs(7))
        );
        assert_eq!(b.remaining("k", t1, t1 + Duration::from_secs(10)), None);
        let mut t = t1;
        for _ in 0..10 {
            b.next("k", t);
            t += Duration::from_secs(1);
        }
        assert_eq!(b.current("k"), Some(MAX));
        // Quiet for longer than twice the maximum: back to the start.
        b.next("k", t + MAX * 3);
        assert_eq!(b.current("k"), Some(INITIAL));
    }
}
