//! Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection:
//! every candidate polls the lease each retry period; it takes the lease when the
//! holder has not renewed it for a lease duration *as observed locally* (so clocks
//! need not agree), and every write is a compare-and-swap on the resourceVersion, so
//! two candidates can never both believe they hold it. The holder renews each retry
//! period and gives up once it has failed to renew for the renew deadline.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::chrono::Utc;
use kube::api::{Api, PostParams};

/// Why a leader stopped leading (upstream exits then, so that a fresh start rebuilds
/// its state, and so do the components).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost(pub String);

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Lease timings (the `--leader-elect-*` flags of kube-scheduler and
/// kube-controller-manager).
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

/// A candidate for one lease.
pub struct Elector {
    api: Api<Lease>,
    cfg: LeaderConfig,
    /// The last lease spec seen and when it was first seen locally.
    observed: Option<(LeaseSpec, Instant)>,
}

impl Elector {
    pub fn new(client: kube::Client, cfg: LeaderConfig) -> Elector {
        // A standby reports 0, as upstream's backup.
        crate::metrics::LEADER
            .with_label_values(&[&cfg.name])
            .set(0);
        Elector {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            observed: None,
        }
    }

    /// Waits until this candidate holds the lease.
    pub async fn acquire(&mut self) {
        tracing::info!(lease = %format!("{}/{}", self.cfg.namespace, self.cfg.name), identity = %self.cfg.identity, "attempting to acquire leader lease");
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(lease = %format!("{}/{}", self.cfg.namespace, self.cfg.name), identity = %self.cfg.identity, "successfully acquired lease");
                    crate::metrics::LEADER
                        .with_label_values(&[&self.cfg.name])
                        .set(1);
                    return;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "error retrieving resource lock"),
            }
            tokio::time::sleep(jitter(self.cfg.retry_period)).await;
        }
    }

    /// Renews the lease every retry period; returns once a renewal has not succeeded
    /// within the renew deadline (leadership lost).
    pub async fn hold(&mut self) -> Lost {
        let lost = self.hold_inner().await;
        crate::metrics::LEADER
            .with_label_values(&[&self.cfg.name])
            .set(0);
        lost
    }

    async fn hold_inner(&mut self) -> Lost {
        let mut last_renewed = Instant::now();
        loop {
            tokio::time::sleep(self.cfg.retry_period).await;
            // A renewal stuck on an unresponsive apiserver must not outlast the
            // deadline: past it a standby may take the lease while we still schedule.
            let left = self
                .cfg
                .renew_deadline
                .saturating_sub(last_renewed.elapsed());
            match tokio::time::timeout(left, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => last_renewed = Instant::now(),
                Ok(Ok(false)) => return Lost("the lease is held by another".into()),
                Ok(Err(e)) => tracing::warn!(error = %e, "failed to renew lease"),
                Err(_) => tracing::warn!("lease renewal timed out"),
            }
            if last_renewed.elapsed() > self.cfg.renew_deadline {
                return Lost(format!(
                    "failed to renew the lease within {:?}",
                    self.cfg.renew_deadline
                ));
            }
        }
    }

    /// Gives the lease up (on shutdown), so a standby need not wait for it to expire.
    pub async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.cfg.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        let now = MicroTime(Utc::now());
        spec.renew_time = Some(now.clone());
        spec.acquire_time = Some(now);
        if let Err(e) = self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(error = %e, "failed to release the lease");
        }
    }

    fn desired(&self, prev: Option<&LeaseSpec>) -> LeaseSpec {
        let now = MicroTime(Utc::now());
        let ours =
            prev.is_some_and(|p| p.holder_identity.as_deref() == Some(self.cfg.identity.as_str()));
        let transitions = prev.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.cfg.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX),
            ),
            acquire_time: if ours {
                prev.and_then(|p| p.acquire_time.clone())
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(match prev {
                Some(p) if !ours && p.holder_identity.as_deref().is_some_and(|h| !h.is_empty()) => {
                    transitions + 1
                }
                _ => transitions,
            }),
            ..Default::default()
        }
    }

    /// One round: `Ok(true)` when this candidate holds the lease afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(self.desired(None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(l) => {
                    self.observe(l.spec.unwrap_or_default());
                    Ok(true)
                }
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        self.observe(spec.clone());
        let holder = spec.holder_identity.as_deref().unwrap_or("");
        let ours = holder == self.cfg.identity;
        let duration = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
        );
        let observed_at = self
            .observed
            .as_ref()
            .map(|(_, t)| *t)
            .unwrap_or_else(Instant::now);
        if !ours && !holder.is_empty() && observed_at.elapsed() < duration {
            return Ok(false);
        }
        lease.spec = Some(self.desired(Some(&spec)));
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(l) => {
                self.observe(l.spec.unwrap_or_default());
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Records the lease spec as seen now, unless it is the one already seen.
    fn observe(&mut self, spec: LeaseSpec) {
        if self.observed.as_ref().is_none_or(|(s, _)| *s != spec) {
            self.observed = Some((spec, Instant::now()));
        }
    }
}

/// client-go's wait.Jitter(retryPeriod, 1.2): up to 20% more, so candidates drift apart.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(1.0 + rand::random::<f64>() * 0.2)
}
