//! Leader election through a coordination.k8s.io/v1 Lease, as client-go's
//! `leaderelection` does it: a candidate takes the lease when its holder has not renewed
//! it for a lease duration (measured on the candidate's own clock from when it last saw
//! the record change, so clock skew does not matter), every write is a compare-and-swap
//! on the resourceVersion, and a leader that cannot renew within the renew deadline
//! stops (the process exits, as kube-controller-manager's does).

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::chrono::Utc;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::Client;

use crate::Error;

/// client-go's `LeaderElectionConfig`, with kube-controller-manager's flag names.
#[derive(Clone, Debug)]
pub struct ElectionConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

/// One candidate's view of the lease.
pub struct Elector {
    api: Api<Lease>,
    cfg: ElectionConfig,
    /// The last record seen (holder, renewTime) and when it was first seen.
    observed: Option<(Option<String>, Option<MicroTime>, Instant)>,
}

impl Elector {
    pub fn new(client: Client, cfg: ElectionConfig) -> Elector {
        Elector {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            observed: None,
        }
    }

    /// Blocks until this candidate holds the lease.
    pub async fn acquire(&mut self) {
        tracing::info!(lease = %format!("{}/{}", self.cfg.namespace, self.cfg.name), identity = %self.cfg.identity, "attempting to acquire leader lease");
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(identity = %self.cfg.identity, "successfully acquired lease");
                    return;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "error retrieving resource lock"),
            }
            tokio::time::sleep(self.cfg.retry_period).await;
        }
    }

    /// Renews the lease every retry period; returns (with an error) once a renewal has
    /// not succeeded for the renew deadline, or another holder took the lease.
    pub async fn keep(&mut self) -> Error {
        let mut last_ok = Instant::now();
        loop {
            tokio::time::sleep(self.cfg.retry_period).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_ok = Instant::now(),
                Ok(false) => return Error::LeaderLost("the lease has another holder".into()),
                Err(e) => tracing::warn!(error = %e, "failed to renew lease"),
            }
            if last_ok.elapsed() > self.cfg.renew_deadline {
                return Error::LeaderLost("failed to renew within the renew deadline".into());
            }
        }
    }

    /// One round of client-go's `tryAcquireOrRenew`: whether we hold the lease after it.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, Error> {
        let now = MicroTime(Utc::now());
        let secs = i32::try_from(self.cfg.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let current = match self.api.get_opt(&self.cfg.name).await? {
            Some(l) => l,
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.cfg.name.clone()),
                        namespace: Some(self.cfg.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.cfg.identity.clone()),
                        lease_duration_seconds: Some(secs),
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => {
                        self.observed = None;
                        Ok(true)
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e.into()),
                };
            }
        };
        let spec = current.spec.clone().unwrap_or_default();
        let record = (spec.holder_identity.clone(), spec.renew_time.clone());
        match &self.observed {
            Some((h, r, _)) if *h == record.0 && *r == record.1 => {}
            _ => self.observed = Some((record.0, record.1, Instant::now())),
        }
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.cfg.identity;
        let held_for = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
        );
        let expired = self
            .observed
            .as_ref()
            .is_none_or(|(_, _, seen)| seen.elapsed() > held_for);
        if !holder.is_empty() && !ours && !expired {
            return Ok(false);
        }
        let mut next = current.clone();
        let s = next.spec.get_or_insert_with(Default::default);
        if !ours {
            s.acquire_time = Some(now.clone());
            s.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            s.holder_identity = Some(self.cfg.identity.clone());
        }
        s.renew_time = Some(now);
        s.lease_duration_seconds = Some(secs);
        // The replace carries the resourceVersion we read: of two candidates racing for
        // an expired lease, one gets a 409.
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}
