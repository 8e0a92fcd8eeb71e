//! One chaos run: start (or reach) the cluster, run the workload while the fault
//! schedule fires, settle, read the reference history from every member, run every
//! checker, and save the history of a failing run as JSON.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use capstan_proto::etcdserverpb as pb;
use capstan_proto::etcdserverpb::kv_client::KvClient;
use capstan_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use serde::Serialize;
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::checks;
use crate::cluster::{channel, Cluster, ServerKind, Timing};
use crate::error::{ChaosError, Result};
use crate::history::{History, Input, Output};
use crate::linearize::{self, LinReport};
use crate::schedule::{self, Fault, FaultKind};
use crate::watchcheck;
use crate::workload::{self, ClientCfg, Phase, WatchCfg};

/// What to run against.
#[derive(Debug, Clone)]
pub enum Target {
    /// Start `members` processes of `kind` (faults are injected).
    Spawn {
        kind: ServerKind,
        members: usize,
        timing: Timing,
    },
    /// An existing cluster's client URLs: workload and checkers only (the harness does
    /// not own those processes, so it injects no faults).
    Endpoints(Vec<String>),
}

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub seed: u64,
    /// How long the workload (and the fault schedule) runs.
    pub duration: Duration,
    pub clients_per_member: usize,
    /// Keys per epoch (see `workload::EPOCH`).
    pub keys: usize,
    pub faults: Vec<FaultKind>,
    /// Quiet time after each healed fault.
    pub recover: Duration,
    pub op_timeout: Duration,
    /// Where a failing run's history is saved.
    pub out_dir: PathBuf,
    /// Print progress to stderr.
    pub verbose: bool,
    /// How progress notifications are judged (lenient only for etcd < 3.4.25).
    pub progress: watchcheck::Progress,
}

/// One fault as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    pub fault: Fault,
    /// The member it hit (the leader, for partitions; `None` for every link).
    pub member: Option<usize>,
    /// What was hit, for the log (members, or the sides of a partition).
    pub detail: String,
    pub injected_ns: u64,
    pub healed_ns: u64,
    /// From injection to the first acknowledged write invoked after it.
    pub gap_ms: Option<f64>,
}

/// The failover gaps of one fault kind.
#[derive(Debug, Clone, Serialize)]
pub struct GapStats {
    pub kind: FaultKind,
    /// Faults of this kind with a gap (an acknowledged write came after them).
    pub faults: usize,
    pub max_ms: f64,
    pub median_ms: f64,
    /// Faults after which a write was acknowledged before the fault was healed.
    pub recovered_during: usize,
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub seed: u64,
    pub members: usize,
    pub schedule: Vec<Fault>,
    pub faults: Vec<FaultRecord>,
    pub ops: usize,
    pub ops_ok: usize,
    pub ops_unknown: usize,
    pub watch_events: usize,
    pub watchers: usize,
    pub linearizability: LinReport,
    pub watch_violations: Vec<String>,
    /// Known reference-server bugs the run was told to excuse (`--lenient-progress`).
    pub excused: Vec<String>,
    pub session_violations: Vec<String>,
    pub acked_writes_checked: usize,
    pub lost_writes: Vec<String>,
    pub state_mismatches: Vec<String>,
    pub history_mismatches: Vec<String>,
    pub hash_mismatch: Option<String>,
    pub final_revision: i64,
    pub elapsed_s: f64,
    /// The saved history, for a failing run.
    pub saved: Option<PathBuf>,
}

impl Report {
    /// Every violation found, one line each.
    pub fn violations(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        v.extend(
            self.linearizability
                .failures
                .iter()
                .map(|(k, verdict)| format!("not linearizable: key {k}: {verdict:?}")),
        );
        v.extend(self.watch_violations.iter().cloned());
        v.extend(self.session_violations.iter().cloned());
        v.extend(self.lost_writes.iter().cloned());
        v.extend(self.state_mismatches.iter().cloned());
        v.extend(self.history_mismatches.iter().cloned());
        v.extend(self.hash_mismatch.iter().cloned());
        v
    }

    pub fn ok(&self) -> bool {
        self.violations().is_empty()
    }

    /// Failover gap per fault kind.
    pub fn gaps(&self) -> Vec<GapStats> {
        let mut by: BTreeMap<FaultKind, (Vec<f64>, usize)> = BTreeMap::new();
        for f in &self.faults {
            if let Some(g) = f.gap_ms {
                let e = by.entry(f.fault.kind).or_default();
                e.0.push(g);
                // A gap shorter than the fault means the cluster worked around it;
                // one as long means writes waited for the heal.
                let held_ms = f.healed_ns.saturating_sub(f.injected_ns) as f64 / 1e6;
                if g < held_ms {
                    e.1 += 1;
                }
            }
        }
        by.into_iter()
            .map(|(kind, (mut g, during))| {
                g.sort_by(|a, b| a.total_cmp(b));
                GapStats {
                    kind,
                    faults: g.len(),
                    max_ms: g.last().copied().unwrap_or_default(),
                    median_ms: g.get(g.len() / 2).copied().unwrap_or_default(),
                    recovered_during: during,
                }
            })
            .collect()
    }

    /// A human summary (also what the CLI prints).
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let lin = &self.linearizability;
        s += &format!(
            "seed {} · {} members · {:.0}s · {} faults · {} ops ({} ok, {} unknown) · {} watch events on {} watchers\n",
            self.seed,
            self.members,
            self.elapsed_s,
            self.faults.len(),
            self.ops,
            self.ops_ok,
            self.ops_unknown,
            self.watch_events,
            self.watchers
        );
        s += &format!(
            "linearizable: {}/{} keys ({} ops checked) · acknowledged writes checked {} · lost {} · final revision {}\n",
            lin.linearizable_keys,
            lin.keys,
            lin.ops_checked,
            self.acked_writes_checked,
            self.lost_writes.len(),
            self.final_revision
        );
        for g in self.gaps() {
            s += &format!(
                "  {:<26} x{}: failover gap max {:.0} ms, median {:.0} ms; {} recovered before the heal\n",
                g.kind.to_string(),
                g.faults,
                g.max_ms,
                g.median_ms,
                g.recovered_during
            );
        }
        let v = self.violations();
        if v.is_empty() {
            s += "no violations\n";
        } else {
            s += &format!("{} VIOLATIONS:\n", v.len());
            for line in v.iter().take(30) {
                s += &format!("  {line}\n");
            }
        }
        if !self.excused.is_empty() {
            s += &format!(
                "{} progress notifications ahead of events excused (--lenient-progress), first: {}\n",
                self.excused.len(),
                self.excused[0]
            );
        }
        if let Some(p) = &self.saved {
            s += &format!("history saved to {}\n", p.display());
        }
        s
    }
}

macro_rules! say {
    ($cfg:expr, $($arg:tt)*) => { if $cfg.verbose { eprintln!($($arg)*); } };
}

/// Runs the suite (see the module docs).
pub async fn run(cfg: RunConfig, target: Target) -> Result<Report> {
    let began = Instant::now();
    let (mut cluster, endpoints, election) = match &target {
        Target::Spawn {
            kind,
            members,
            timing,
        } => {
            let c =
                Cluster::start(kind.clone(), *members, *timing, Duration::from_secs(60)).await?;
            let eps = c.endpoints();
            (Some(c), eps, Duration::from_millis(timing.election_ms))
        }
        Target::Endpoints(eps) => (None, eps.clone(), Duration::from_secs(1)),
    };
    if endpoints.is_empty() {
        return Err(ChaosError::Config("no endpoints".into()));
    }
    let schedule = if cluster.is_some() {
        schedule::build(cfg.seed, &cfg.faults, cfg.duration, election, cfg.recover)
    } else {
        Vec::new()
    };
    eprintln!(
        "chaos: seed {} (replay with --seed {}); {} endpoints; schedule ({} faults):",
        cfg.seed,
        cfg.seed,
        endpoints.len(),
        schedule.len()
    );
    for f in &schedule {
        eprintln!("  {f}");
    }
    let channels: Vec<Channel> = endpoints
        .iter()
        .map(|e| channel(e))
        .collect::<Result<_>>()?;
    let prefix = format!("/chaos/{}-{}/", cfg.seed, std::process::id());
    let start_rev = current_rev(&channels, Duration::from_secs(30)).await? + 1;

    let start = Instant::now();
    let (phase_tx, phase_rx) = watch::channel(Phase::Run);
    let mut watchers = Vec::new();
    for (m, ch) in channels.iter().enumerate() {
        let wc = WatchCfg {
            id: m,
            member: m,
            prefix: prefix.clone(),
            start_rev,
            progress_every: Duration::from_millis(500),
            drain_deadline: Duration::from_secs(60),
        };
        watchers.push(tokio::spawn(workload::watcher(
            wc,
            ch.clone(),
            start,
            phase_rx.clone(),
        )));
    }
    let mut clients = Vec::new();
    for (m, ch) in channels.iter().enumerate() {
        for c in 0..cfg.clients_per_member {
            let cc = ClientCfg {
                id: m * cfg.clients_per_member + c,
                member: m,
                seed: cfg.seed,
                prefix: prefix.clone(),
                keys: cfg.keys,
                op_timeout: cfg.op_timeout,
            };
            clients.push(tokio::spawn(workload::client(
                cc,
                ch.clone(),
                start,
                phase_rx.clone(),
            )));
        }
    }

    // The fault schedule.
    let mut records: Vec<FaultRecord> = Vec::new();
    if let Some(c) = cluster.as_mut() {
        for f in &schedule {
            tokio::time::sleep_until((start + f.at).into()).await;
            let (member, detail, undo) = inject(c, f).await?;
            let injected_ns = workload::ns(start);
            say!(
                cfg,
                "chaos: {:>6.1}s inject {} on {detail}",
                injected_ns as f64 / 1e9,
                f.kind,
            );
            tokio::time::sleep(f.hold).await;
            heal(c, undo)?;
            let healed_ns = workload::ns(start);
            say!(
                cfg,
                "chaos: {:>6.1}s healed {}",
                healed_ns as f64 / 1e9,
                f.kind
            );
            records.push(FaultRecord {
                fault: f.clone(),
                member,
                detail,
                injected_ns,
                healed_ns,
                gap_ms: None,
            });
        }
    }
    tokio::time::sleep_until((start + cfg.duration).into()).await;

    // Stop the clients, undo every fault, wait until the members agree.
    let _ = phase_tx.send(Phase::Drain(i64::MAX));
    let mut ops = Vec::new();
    for c in clients {
        ops.extend(
            c.await
                .map_err(|e| ChaosError::Config(format!("client task: {e}")))?,
        );
    }
    say!(
        cfg,
        "chaos: {:>6.1}s workload done ({} ops); settling",
        workload::ns(start) as f64 / 1e9,
        ops.len()
    );
    if let Some(c) = cluster.as_mut() {
        c.settle(Duration::from_secs(60)).await?;
    }
    // A last write under the prefix marks the end: its revision bounds the reference
    // history and tells every watcher it has drained (a progress notification cannot:
    // etcd before 3.4.25 sends one ahead of an unsynced watcher's catch-up events).
    let end_rev = put_sentinel(&channels, &prefix, Duration::from_secs(60)).await?;
    // Members that never agree are a finding, not a harness failure: the run goes on
    // to check (and save) everything else.
    let mut history_mismatches = Vec::new();
    let final_rev = match converged_rev(&channels, Duration::from_secs(60)).await {
        Ok(r) => r,
        Err(e) => {
            history_mismatches.push(format!("members did not converge: {e}"));
            current_rev(&channels, Duration::from_secs(30)).await?
        }
    };
    let _ = phase_tx.send(Phase::Drain(end_rev));
    let mut watches = Vec::new();
    for w in watchers {
        watches.push(
            w.await
                .map_err(|e| ChaosError::Config(format!("watcher task: {e}")))?,
        );
    }
    say!(
        cfg,
        "chaos: {:>6.1}s watchers drained; reading the history",
        workload::ns(start) as f64 / 1e9
    );

    // The reference history, from every member; they must agree.
    let mut reference = None;
    for (m, ch) in channels.iter().enumerate() {
        match workload::read_history(
            ch.clone(),
            &prefix,
            start_rev,
            end_rev,
            Duration::from_secs(60),
        )
        .await
        {
            Ok(h) => match &reference {
                None => reference = Some(h),
                Some(r) if *r != h => history_mismatches.push(format!(
                    "member {m}'s history ({} events) differs from member 0's ({} events)",
                    h.len(),
                    r.len()
                )),
                Some(_) => {}
            },
            Err(e) => history_mismatches.push(format!("member {m}: {e}")),
        }
    }
    let reference = reference.unwrap_or_default();
    if cluster.is_some() {
        // Only this run writes to a spawned cluster, and every write is under the
        // prefix, so every revision since the start must be in the history.
        let mut revs: Vec<i64> = reference.iter().map(|e| e.rev).collect();
        revs.dedup();
        let want: Vec<i64> = (start_rev..=end_rev).collect();
        if revs != want {
            let missing = want.iter().find(|r| !revs.contains(r));
            history_mismatches.push(format!(
                "history holds {} distinct revisions in {start_rev}..={end_rev} (first missing: {missing:?})",
                revs.len()
            ));
        }
    }

    let mut state_mismatches = Vec::new();
    let expected = checks::final_state(&reference);
    for (m, ch) in channels.iter().enumerate() {
        match state_of(ch.clone(), &prefix).await {
            Ok(got) => state_mismatches.extend(checks::compare_state(m, &expected, &got)),
            Err(e) => state_mismatches.push(format!("member {m}: reading its state: {e}")),
        }
    }
    let hash_mismatch = hashes(&channels, final_rev).await;

    let history = History {
        seed: cfg.seed,
        ops,
        watches,
        reference,
    };
    say!(
        cfg,
        "chaos: {:>6.1}s checking",
        workload::ns(start) as f64 / 1e9
    );
    let linearizability = linearize::check(&history, linearize::DEFAULT_BUDGET);
    let mut excused = Vec::new();
    let watch_violations = history
        .watches
        .iter()
        .filter_map(|w| {
            watchcheck::check_watcher(w, &history.reference, cfg.progress, &mut excused)
        })
        .map(|v| format!("watcher {}: {}", v.watcher, v.what))
        .collect();
    say!(
        cfg,
        "chaos: {:>6.1}s checked",
        workload::ns(start) as f64 / 1e9
    );
    let session_violations = checks::session_revisions(&history);
    let (acked_writes_checked, lost_writes) = checks::acknowledged_writes(&history);

    for r in &mut records {
        r.gap_ms = history
            .ops
            .iter()
            .filter(|o| o.invoke >= r.injected_ns && o.input.is_write() && !o.unknown())
            .filter(|o| {
                !matches!(o.output, Output::LeaseGrant { .. })
                    && !matches!(o.input, Input::LeaseRevoke { .. })
            })
            .map(|o| o.complete)
            .min()
            .map(|c| (c - r.injected_ns) as f64 / 1e6);
    }
    let ops_unknown = history.ops.iter().filter(|o| o.unknown()).count();
    let mut report = Report {
        seed: cfg.seed,
        members: channels.len(),
        schedule,
        faults: records,
        ops: history.ops.len(),
        ops_ok: history.ops.len() - ops_unknown,
        ops_unknown,
        watch_events: history
            .watches
            .iter()
            .flat_map(|w| &w.records)
            .map(|r| match r {
                crate::history::WatchRecord::Events { events, .. } => events.len(),
                _ => 0,
            })
            .sum(),
        watchers: history.watches.len(),
        linearizability,
        watch_violations,
        excused,
        session_violations,
        acked_writes_checked,
        lost_writes,
        state_mismatches,
        history_mismatches,
        hash_mismatch,
        final_revision: final_rev,
        elapsed_s: began.elapsed().as_secs_f64(),
        saved: None,
    };
    if !report.ok() {
        std::fs::create_dir_all(&cfg.out_dir)?;
        let path = cfg
            .out_dir
            .join(format!("chaos-{}-{}.json", cfg.seed, std::process::id()));
        let doc = serde_json::json!({ "report": &report, "history": &history });
        std::fs::write(&path, serde_json::to_vec_pretty(&doc)?)?;
        report.saved = Some(path);
        // The members' logs go with it: the temp dir holding them is removed below.
        if let Some(c) = &cluster {
            for m in 0..c.len() {
                let log = cfg.out_dir.join(format!(
                    "chaos-{}-{}-m{m}.log",
                    cfg.seed,
                    std::process::id()
                ));
                std::fs::write(log, c.log_tail(m, usize::MAX))?;
            }
        }
    }
    drop(cluster);
    Ok(report)
}

/// What healing a fault takes.
enum Undo {
    Restart(usize),
    Resume(usize),
    Isolated(usize),
    Stalled(Vec<(usize, usize)>),
    Delayed(Vec<(usize, usize)>),
    Cut(Vec<(usize, usize)>),
    Lossy(Vec<(usize, usize)>),
}

/// Both directions of every link between a member of `a` and one of `b`.
fn links_between(a: &[usize], b: &[usize]) -> Vec<(usize, usize)> {
    a.iter()
        .flat_map(|&x| b.iter().flat_map(move |&y| [(x, y), (y, x)]))
        .collect()
}

/// The two sides of `SplitLeaderMinority`: the leader with the followers from `pick` on
/// that still leave its side a minority, and everyone else.
fn minority_split(n: usize, leader: usize, pick: u64) -> (Vec<usize>, Vec<usize>) {
    let mut followers: Vec<usize> = (0..n).filter(|&i| i != leader).collect();
    let len = followers.len().max(1);
    followers.rotate_left((pick % len as u64) as usize);
    let with_leader = (n.saturating_sub(1) / 2).saturating_sub(1);
    let mut minority = vec![leader];
    minority.extend(followers.iter().take(with_leader));
    let majority = followers.into_iter().skip(with_leader).collect();
    (minority, majority)
}

/// The three parts of `Bridge`: the leader's side, the bridge (one follower), the far
/// side. The remaining followers are shared out so neither side alone is a majority.
fn bridge_split(n: usize, leader: usize, pick: u64) -> (Vec<usize>, usize, Vec<usize>) {
    let mut followers: Vec<usize> = (0..n).filter(|&i| i != leader).collect();
    let len = followers.len().max(1);
    followers.rotate_left((pick % len as u64) as usize);
    let bridge = followers.first().copied().unwrap_or(leader);
    let rest: Vec<usize> = followers.into_iter().skip(1).collect();
    let near = rest.len() / 2;
    let mut leader_side = vec![leader];
    leader_side.extend(rest.iter().take(near));
    (leader_side, bridge, rest.into_iter().skip(near).collect())
}

/// Injects `f`; returns the member it hit (for partitions: the leader), a description
/// of what was cut, and what healing it takes.
async fn inject(c: &mut Cluster, f: &Fault) -> Result<(Option<usize>, String, Undo)> {
    let n = c.len();
    let leader = c.leader().await;
    let pick = (f.pick % n as u64) as usize;
    let follower = leader.map(|l| {
        let others: Vec<usize> = (0..n).filter(|&i| i != l).collect();
        others.get(pick % others.len().max(1)).copied().unwrap_or(l)
    });
    // With no leader known (an election under way), hit the picked member.
    let leader = leader.unwrap_or(pick);
    let follower = follower.unwrap_or(pick);
    let peers = |m: usize| (0..n).filter(move |&j| j != m);
    let one = |m: usize, u: Undo| (Some(m), format!("member {m}"), u);
    Ok(match f.kind {
        FaultKind::KillLeader | FaultKind::KillFollower => {
            let m = if f.kind == FaultKind::KillLeader {
                leader
            } else {
                follower
            };
            c.kill(m);
            one(m, Undo::Restart(m))
        }
        FaultKind::PauseLeader => {
            c.pause(leader)?;
            one(leader, Undo::Resume(leader))
        }
        FaultKind::IsolateLeader | FaultKind::IsolateFollower => {
            let m = if f.kind == FaultKind::IsolateLeader {
                leader
            } else {
                follower
            };
            c.net.update(|t| {
                t.isolated.insert(m);
            });
            one(m, Undo::Isolated(m))
        }
        FaultKind::OneWayFromLeader => {
            let links: Vec<_> = peers(leader).map(|j| (leader, j)).collect();
            c.net.update(|t| t.stalled.extend(links.iter().copied()));
            one(leader, Undo::Stalled(links))
        }
        FaultKind::DelayLeader => {
            let links: Vec<_> = peers(leader)
                .flat_map(|j| [(leader, j), (j, leader)])
                .collect();
            c.net.update(|t| {
                for l in &links {
                    t.delayed.insert(*l, f.delay);
                }
            });
            one(leader, Undo::Delayed(links))
        }
        FaultKind::SplitLeaderMinority => {
            let (minority, majority) = minority_split(n, leader, f.pick);
            let links = links_between(&minority, &majority);
            c.net.update(|t| t.cut.extend(links.iter().copied()));
            let detail = format!("{minority:?} | {majority:?}");
            (Some(leader), detail, Undo::Cut(links))
        }
        FaultKind::Bridge => {
            let (near, bridge, far) = bridge_split(n, leader, f.pick);
            let links = links_between(&near, &far);
            c.net.update(|t| t.cut.extend(links.iter().copied()));
            let detail = format!("{near:?} <-> {bridge} <-> {far:?}");
            (Some(leader), detail, Undo::Cut(links))
        }
        FaultKind::LossyLinks => {
            let loss = crate::proxy::Loss {
                stall_permille: f.stall_permille,
                reset_permille: f.reset_permille,
                seed: f.pick,
            };
            let links: Vec<_> = (0..n).flat_map(|i| peers(i).map(move |j| (i, j))).collect();
            c.net.update(|t| {
                for l in &links {
                    t.lossy.insert(*l, loss);
                }
            });
            (None, "every peer link".into(), Undo::Lossy(links))
        }
    })
}

fn heal(c: &mut Cluster, u: Undo) -> Result<()> {
    match u {
        Undo::Restart(m) => c.restart(m)?,
        Undo::Resume(m) => c.resume(m)?,
        Undo::Isolated(m) => c.net.update(|t| {
            t.isolated.remove(&m);
        }),
        Undo::Stalled(links) => c.net.update(|t| {
            for l in &links {
                t.stalled.remove(l);
            }
        }),
        Undo::Delayed(links) => c.net.update(|t| {
            for l in &links {
                t.delayed.remove(l);
            }
        }),
        Undo::Cut(links) => c.net.update(|t| {
            for l in &links {
                t.cut.remove(l);
            }
        }),
        Undo::Lossy(links) => c.net.update(|t| {
            for l in &links {
                t.lossy.remove(l);
            }
        }),
    }
    Ok(())
}

/// Sends one request to each member in turn (each bounded by `per_try`), round after
/// round until one answers or `deadline` passes; returns the answer's header revision.
async fn first_answer<F, Fut>(
    channels: &[Channel],
    deadline: Duration,
    per_try: Duration,
    what: &str,
    mut call: F,
) -> Result<i64>
where
    F: FnMut(KvClient<Channel>) -> Fut,
    Fut: std::future::Future<
        Output = std::result::Result<Option<pb::ResponseHeader>, tonic::Status>,
    >,
{
    let until = Instant::now() + deadline;
    loop {
        for ch in channels {
            if let Ok(Ok(header)) =
                tokio::time::timeout(per_try, call(KvClient::new(ch.clone()))).await
            {
                return Ok(header.map(|h| h.revision).unwrap_or_default());
            }
        }
        if Instant::now() > until {
            return Err(ChaosError::Timeout(deadline, what.into()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Puts `<prefix>end` through any member until one acknowledges; returns its revision.
async fn put_sentinel(channels: &[Channel], prefix: &str, deadline: Duration) -> Result<i64> {
    let key = format!("{prefix}end").into_bytes();
    first_answer(
        channels,
        deadline,
        Duration::from_secs(5),
        "the end-of-run write",
        |mut kv| {
            let req = pb::PutRequest {
                key: key.clone(),
                value: b"end".to_vec(),
                ..Default::default()
            };
            async move { kv.put(req).await.map(|r| r.into_inner().header) }
        },
    )
    .await
}

/// The revision a linearizable read reports on any member.
async fn current_rev(channels: &[Channel], deadline: Duration) -> Result<i64> {
    first_answer(
        channels,
        deadline,
        Duration::from_secs(2),
        "a linearizable read",
        |mut kv| {
            let req = pb::RangeRequest {
                key: b"chaos-rev".to_vec(),
                ..Default::default()
            };
            async move { kv.range(req).await.map(|r| r.into_inner().header) }
        },
    )
    .await
}

/// Polls until every member's local (serializable) revision equals the linearizable
/// one, i.e. every member has applied everything committed; returns it.
async fn converged_rev(channels: &[Channel], deadline: Duration) -> Result<i64> {
    let until = Instant::now() + deadline;
    loop {
        let lin = current_rev(channels, deadline).await?;
        let mut all = true;
        let mut revs = Vec::new();
        for ch in channels {
            let req = pb::RangeRequest {
                key: b"chaos-rev".to_vec(),
                serializable: true,
                ..Default::default()
            };
            let r =
                tokio::time::timeout(Duration::from_secs(2), KvClient::new(ch.clone()).range(req))
                    .await;
            let rev = match r {
                Ok(Ok(r)) => r
                    .into_inner()
                    .header
                    .map(|h| h.revision)
                    .unwrap_or_default(),
                _ => -1,
            };
            all &= rev == lin;
            revs.push(rev);
        }
        if all {
            return Ok(lin);
        }
        if Instant::now() > until {
            return Err(ChaosError::Timeout(
                deadline,
                format!("every member to reach revision {lin} (local revisions: {revs:?})"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A member's local state under `prefix` (serializable: what it holds itself).
async fn state_of(ch: Channel, prefix: &str) -> Result<BTreeMap<String, String>> {
    let req = pb::RangeRequest {
        key: prefix.as_bytes().to_vec(),
        range_end: workload::prefix_end(prefix),
        serializable: true,
        ..Default::default()
    };
    let r = tokio::time::timeout(Duration::from_secs(10), KvClient::new(ch).range(req))
        .await
        .map_err(|_| ChaosError::Timeout(Duration::from_secs(10), "a range".into()))??
        .into_inner();
    Ok(r.kvs
        .into_iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
            )
        })
        .collect())
}

/// `HashKV` at `rev` on every member; `Some(description)` if they differ or fail.
async fn hashes(channels: &[Channel], rev: i64) -> Option<String> {
    let mut got: HashMap<usize, std::result::Result<u32, String>> = HashMap::new();
    for (m, ch) in channels.iter().enumerate() {
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            MaintenanceClient::new(ch.clone()).hash_kv(pb::HashKvRequest { revision: rev }),
        )
        .await;
        got.insert(
            m,
            match r {
                Ok(Ok(r)) => Ok(r.into_inner().hash),
                Ok(Err(st)) => Err(st.message().to_string()),
                Err(_) => Err("timeout".into()),
            },
        );
    }
    let first = got.get(&0).cloned();
    let differ = got
        .values()
        .any(|h| Some(h) != first.as_ref() || h.is_err());
    differ.then(|| {
        let mut v: Vec<_> = got.into_iter().collect();
        v.sort_by_key(|(m, _)| *m);
        format!("HashKV at revision {rev} differs between members: {v:?}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leaders_minority_is_as_large_as_a_minority_can_be() {
        // Five members: the leader and one follower against three.
        let (min, maj) = minority_split(5, 2, 1);
        assert_eq!(min.len(), 2);
        assert_eq!(min[0], 2);
        assert_eq!(maj.len(), 3);
        let mut all: Vec<usize> = min.iter().chain(&maj).copied().collect();
        all.sort_unstable();
        assert_eq!(all, vec![0, 1, 2, 3, 4]);
        // Three members: the leader alone (isolate-leader).
        let (min, mut maj) = minority_split(3, 0, 7);
        maj.sort_unstable();
        assert_eq!((min, maj), (vec![0], vec![1, 2]));
        // Seven: the leader and two followers against four.
        assert_eq!(minority_split(7, 6, 0).0.len(), 3);
    }

    #[test]
    fn a_bridge_leaves_neither_side_a_majority_on_its_own() {
        assert_eq!(bridge_split(3, 1, 0), (vec![1], 0, vec![2]));
        assert_eq!(bridge_split(3, 1, 1), (vec![1], 2, vec![0]));
        let (near, bridge, far) = bridge_split(5, 0, 2);
        assert_eq!((near.len(), far.len()), (2, 2));
        assert_eq!(near[0], 0);
        assert!(!near.contains(&bridge) && !far.contains(&bridge) && bridge != 0);
        // Only links between the two sides are cut; the bridge keeps all of its own.
        let cut = links_between(&near, &far);
        assert_eq!(cut.len(), 8);
        assert!(cut.iter().all(|&(a, b)| a != bridge && b != bridge));
    }
}
