//! The fault schedule: a seeded sequence of faults, each injected, held, healed, then
//! followed by a quiet spell so the cluster recovers before the next. Every kind is
//! used once (in seeded order) before any repeats, so a short run covers them all.
//! Targets are roles ("the leader", "a follower") resolved when the fault fires, so a
//! replay with the same seed runs the same schedule even if another member leads.

use std::fmt;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum FaultKind {
    /// SIGKILL the leader, restart it after the hold.
    KillLeader,
    /// SIGKILL a follower, restart it after the hold.
    KillFollower,
    /// SIGSTOP the leader past the election timeout, then SIGCONT.
    PauseLeader,
    /// Cut the leader off from every peer (it keeps serving its clients).
    IsolateLeader,
    /// Cut a follower off (a minority of one).
    IsolateFollower,
    /// Stall everything the leader sends to its peers (one-way loss); it still hears them.
    OneWayFromLeader,
    /// Add delay to every peer link of the leader, both ways.
    DelayLeader,
    /// Partition the leader and as many followers as still leave it a minority (one
    /// of five, none of three, where this is `IsolateLeader`) from the majority.
    SplitLeaderMinority,
    /// A non-transitive partition (Jepsen's bridge): the leader's side and the far side
    /// cannot talk, one follower (the bridge) still talks to both.
    Bridge,
    /// Partial loss on every peer link, both ways: stalls of a retransmission timeout
    /// and occasional connection resets (what loss under TCP looks like).
    LossyLinks,
}

impl FaultKind {
    pub const ALL: [FaultKind; 10] = [
        FaultKind::KillLeader,
        FaultKind::KillFollower,
        FaultKind::PauseLeader,
        FaultKind::IsolateLeader,
        FaultKind::IsolateFollower,
        FaultKind::OneWayFromLeader,
        FaultKind::DelayLeader,
        FaultKind::SplitLeaderMinority,
        FaultKind::Bridge,
        FaultKind::LossyLinks,
    ];

    /// Parses a `--faults` name (`kill-leader`, ...).
    pub fn parse(s: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.to_string() == s)
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultKind::KillLeader => "kill-leader",
            FaultKind::KillFollower => "kill-follower",
            FaultKind::PauseLeader => "pause-leader",
            FaultKind::IsolateLeader => "isolate-leader",
            FaultKind::IsolateFollower => "isolate-follower",
            FaultKind::OneWayFromLeader => "one-way-loss-from-leader",
            FaultKind::DelayLeader => "delay-leader",
            FaultKind::SplitLeaderMinority => "split-leader-minority",
            FaultKind::Bridge => "bridge",
            FaultKind::LossyLinks => "lossy-links",
        })
    }
}

/// One scheduled fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fault {
    /// When to inject, from the start of the workload.
    pub at: Duration,
    pub kind: FaultKind,
    /// How long it lasts before it is healed.
    pub hold: Duration,
    /// For `DelayLeader`: the added delay per direction.
    pub delay: Duration,
    /// For `LossyLinks`: the chances per chunk, in thousandths, of a retransmission
    /// stall and of a connection reset.
    pub stall_permille: u32,
    pub reset_permille: u32,
    /// Tie-breaker among candidate members (e.g. which follower), for replays.
    pub pick: u64,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "at {:>6.1}s {} for {:.1}s",
            self.at.as_secs_f64(),
            self.kind,
            self.hold.as_secs_f64()
        )?;
        match self.kind {
            FaultKind::DelayLeader => write!(f, " (+{} ms)", self.delay.as_millis())?,
            FaultKind::LossyLinks => write!(
                f,
                " ({:.1}% stalls, {:.1}% resets per chunk)",
                f64::from(self.stall_permille) / 10.0,
                f64::from(self.reset_permille) / 10.0
            )?,
            _ => {}
        }
        Ok(())
    }
}

/// Builds the schedule for a workload of `duration`: faults from `warmup` on, each held
/// 1.5–4 election timeouts (long enough that a paused or cut-off leader is replaced),
/// then `recover` of quiet, until `duration` minus a final quiet spell.
pub fn build(
    seed: u64,
    kinds: &[FaultKind],
    duration: Duration,
    election: Duration,
    recover: Duration,
) -> Vec<Fault> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed_fa17);
    let mut out = Vec::new();
    if kinds.is_empty() {
        return out;
    }
    let warmup = Duration::from_secs(2);
    let mut at = warmup;
    let mut bag: Vec<FaultKind> = Vec::new();
    loop {
        if bag.is_empty() {
            bag = kinds.to_vec();
            bag.shuffle(&mut rng);
        }
        let hold = election.mul_f64(rng.random_range(1.5..4.0));
        if at + hold + recover > duration {
            break;
        }
        let Some(kind) = bag.pop() else { break };
        out.push(Fault {
            at,
            kind,
            hold,
            delay: Duration::from_millis(rng.random_range(50..300)),
            pick: rng.random(),
            // A busy link carries hundreds of chunks a second and a stall holds
            // everything behind it, so a few percent already keeps a link stalled a
            // good part of the time; resets are rarer, as on a real lossy link.
            stall_permille: rng.random_range(10..50),
            reset_permille: rng.random_range(1..8),
        });
        at += hold + recover;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_covers_every_kind() {
        let e = Duration::from_secs(1);
        let a = build(
            7,
            &FaultKind::ALL,
            Duration::from_secs(80),
            e,
            Duration::from_secs(3),
        );
        let b = build(
            7,
            &FaultKind::ALL,
            Duration::from_secs(80),
            e,
            Duration::from_secs(3),
        );
        assert_eq!(a, b);
        for k in FaultKind::ALL {
            assert!(a.iter().any(|f| f.kind == k), "{k} missing from {a:?}");
            assert_eq!(FaultKind::parse(&k.to_string()), Some(k));
        }
        assert!(a
            .last()
            .is_some_and(|f| f.at + f.hold <= Duration::from_secs(77)));
    }
}
