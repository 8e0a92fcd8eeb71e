//! The apiserver's only way to its data: the etcd v3 API (the `etcd-client` crate), so
//! the same binary runs on `capstan store` or on a real etcd. Objects are JSON under
//! kube-apiserver's own keys; the object's resourceVersion is the key's mod revision
//! and is never stored inside the value (as upstream).

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, SortOrder, SortTarget, Txn, TxnOp, WatchOptions,
};

use crate::error::ApiError;

/// A value and the revision that last wrote it.
pub struct Stored {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// One page of a range read.
pub struct Page {
    pub items: Vec<Stored>,
    /// The store revision the page was read at.
    pub revision: i64,
    /// More keys follow the last item.
    pub more: bool,
}

/// Outcome of a conditional write.
pub enum Written {
    /// Written at this revision.
    Ok(i64),
    /// The condition failed; the current value, if any, as read in the same txn.
    Conflict(Option<Stored>),
}

/// Outcome of [`Store::create_claiming`].
pub enum Claimed {
    /// Written, with its claims, at this revision.
    Ok(i64),
    /// The key exists already (its current value).
    Exists(Stored),
    /// These claims are held by other objects.
    Taken(Vec<String>),
}

/// Outcome of [`Store::update_claiming`].
pub enum Reclaimed {
    /// Written, claims taken and released, at this revision.
    Ok(i64),
    /// The key changed (or went) since it was read.
    Conflict,
    /// These claims are held by other objects.
    Taken(Vec<String>),
}

#[derive(Clone)]
pub struct Store {
    client: Client,
    /// One client per member's client URL, for what only that member can answer (its
    /// Maintenance Status); kept so a dashboard polling every few seconds does not
    /// open a connection per member each time.
    members: std::sync::Arc<parking_lot::Mutex<std::collections::HashMap<String, Client>>>,
}

/// One store member as the Cluster API lists it, with its own Maintenance Status
/// (what `etcdctl member list` and `etcdctl endpoint status` show).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// The member's ID, in hex as etcdctl prints it (a u64 does not fit a JSON number
    /// a browser reads exactly).
    pub id: String,
    pub name: String,
    #[serde(rename = "peerURLs")]
    pub peer_urls: Vec<String>,
    #[serde(rename = "clientURLs")]
    pub client_urls: Vec<String>,
    pub is_learner: bool,
    /// Its Status, if it answered.
    pub status: Option<EndpointStatus>,
    /// Why it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A member's Maintenance Status.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatus {
    pub version: String,
    pub db_size: i64,
    /// The leader this member follows, in hex (empty: it knows none).
    pub leader: String,
    pub raft_term: u64,
    pub raft_index: u64,
    pub raft_applied_index: u64,
    pub errors: Vec<String>,
}

/// How long one member may take to answer its Status before it counts as unreachable.
const MEMBER_STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A store key-value as the registry handles it.
pub fn stored(kv: &etcd_client::KeyValue) -> Stored {
    Stored {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        mod_revision: kv.mod_revision(),
    }
}

/// Whether a failed request may be sent again: for reads, whenever no member could
/// serve it (a dead or leaderless member); for writes, only when it provably reached
/// no member (no connection, or a member that refused it for want of a leader before
/// proposing), since a write whose outcome is unknown must not be applied twice. The
/// Go client kube-apiserver uses retries the same cases, which is why one store member
/// going away is invisible to Kubernetes clients.
fn retryable(e: &etcd_client::Error, read: bool) -> bool {
    let etcd_client::Error::GRpcStatus(s) = e else {
        return false;
    };
    let never_sent =
        s.message().contains("tcp connect error") || s.message() == "etcdserver: no leader";
    match s.code() {
        tonic::Code::Unavailable => read || never_sent,
        // A connection that closed under the request: a read simply goes elsewhere.
        tonic::Code::Cancelled => read,
        _ => false,
    }
}

/// How long a request keeps being retried on other members.
const RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs `op` until it succeeds, fails in a way [`retryable`] refuses, or [`RETRY_FOR`]
/// passes.
async fn with_retries<T, F, Fut>(read: bool, mut op: F) -> Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + RETRY_FOR;
    let mut pause = std::time::Duration::from_millis(25);
    loop {
        match op().await {
            Err(e) if retryable(&e, read) && tokio::time::Instant::now() + pause < deadline => {
                tracing::debug!(error = %e, "store request retried");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_millis(500));
            }
            r => return r,
        }
    }
}

/// What the `get`s of a failed transaction's else branch read, in order.
fn read_back(resp: etcd_client::TxnResponse) -> impl Iterator<Item = Option<Stored>> {
    resp.op_responses().into_iter().map(|r| match r {
        etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(stored),
        _ => None,
    })
}

fn header_rev(h: Option<&etcd_client::ResponseHeader>) -> i64 {
    h.map(|h| h.revision()).unwrap_or(0)
}

/// The client's TLS to the store (kube-apiserver's `--etcd-cafile`, `--etcd-certfile`,
/// `--etcd-keyfile`): used for `https://` servers.
#[derive(Clone, Debug, Default)]
pub struct EtcdTls {
    pub ca_file: Option<std::path::PathBuf>,
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
}

impl EtcdTls {
    /// etcd-client's options for these files; `None` without any (plaintext, or an
    /// https store whose certificate the client cannot verify and so refuses).
    pub fn options(&self) -> Result<Option<etcd_client::ConnectOptions>, ApiError> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| ApiError::Setup(format!("{}: {e}", p.display())))
        };
        let mut tls = etcd_client::TlsOptions::new();
        let mut any = false;
        if let Some(ca) = &self.ca_file {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
            any = true;
        }
        match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => {
                tls = tls.identity(etcd_client::Identity::from_pem(read(c)?, read(k)?));
                any = true;
            }
            (None, None) => {}
            _ => {
                return Err(ApiError::Setup(
                    "--etcd-certfile and --etcd-keyfile go together".into(),
                ))
            }
        }
        Ok(any.then(|| etcd_client::ConnectOptions::new().with_tls(tls)))
    }
}

impl Store {
    pub async fn connect(endpoints: &[String], tls: &EtcdTls) -> Result<Store, ApiError> {
        let client = Client::connect(endpoints, tls.options()?)
            .await
            .map_err(|e| ApiError::Setup(format!("connecting to the store: {e}")))?;
        Ok(Store {
            client,
            members: Default::default(),
        })
    }

    /// Every member (Cluster MemberList) with its own Maintenance Status, asked of each
    /// member at its first client URL, all at once; a member that does not answer in
    /// [`MEMBER_STATUS_TIMEOUT`] is listed with the error.
    pub async fn member_statuses(&self) -> Result<Vec<MemberStatus>, ApiError> {
        let list = with_retries(true, || {
            let mut c = self.client.cluster_client();
            async move { c.member_list().await }
        })
        .await?;
        let asks = list.members().iter().map(|m| async move {
            let mut out = MemberStatus {
                id: format!("{:x}", m.id()),
                name: m.name().to_string(),
                peer_urls: m.peer_urls().to_vec(),
                client_urls: m.client_urls().to_vec(),
                is_learner: m.is_learner(),
                status: None,
                error: None,
            };
            match m.client_urls().first() {
                // A member added but not started yet has no client URL.
                None => out.error = Some("not started".into()),
                Some(url) => match self.member_status(url).await {
                    Ok(s) => out.status = Some(s),
                    Err(e) => out.error = Some(e),
                },
            }
            out
        });
        Ok(futures::future::join_all(asks).await)
    }

    /// The Maintenance Status of the member at `url`.
    async fn member_status(&self, url: &str) -> Result<EndpointStatus, String> {
        let cached = self.members.lock().get(url).cloned();
        let mut client = match cached {
            Some(c) => c,
            None => {
                let opts = etcd_client::ConnectOptions::new()
                    .with_connect_timeout(MEMBER_STATUS_TIMEOUT)
                    .with_timeout(MEMBER_STATUS_TIMEOUT);
                let c = Client::connect([url], Some(opts))
                    .await
                    .map_err(|e| e.to_string())?;
                self.members.lock().insert(url.to_string(), c.clone());
                c
            }
        };
        let asked = tokio::time::timeout(MEMBER_STATUS_TIMEOUT, client.status()).await;
        let resp = match asked {
            Ok(Ok(r)) => r,
            failed => {
                // A fresh connection next time, in case this one is what broke.
                self.members.lock().remove(url);
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no answer within 2s".into(),
                };
                tracing::debug!(member = url, error = %error, "store member status");
                return Err(error);
            }
        };
        Ok(EndpointStatus {
            version: resp.version().to_string(),
            db_size: resp.db_size(),
            leader: match resp.leader() {
                0 => String::new(),
                l => format!("{l:x}"),
            },
            raft_term: resp.raft_term(),
            raft_index: resp.raft_index(),
            raft_applied_index: resp.raft_applied_index(),
            errors: resp.errors().to_vec(),
        })
    }

    /// The store's current revision: the header of a linearizable read of one key that
    /// never exists (a point read, where a count over `/registry/` would touch every key).
    pub async fn revision(&self) -> Result<i64, ApiError> {
        let resp = with_retries(true, || {
            let mut kv = self.client.kv_client();
            async move { kv.get("/registry/.revision", None).await }
        })
        .await?;
        Ok(header_rev(resp.header()))
    }

    pub async fn get(&self, key: &str) -> Result<(Option<Stored>, i64), ApiError> {
        let resp = with_retries(true, || {
            let mut kv = self.client.kv_client();
            async move { kv.get(key, None).await }
        })
        .await?;
        Ok((resp.kvs().first().map(stored), header_rev(resp.header())))
    }

    /// Keys under `prefix` from `start` (inclusive; the prefix itself when `None`), at
    /// `revision` (0: the current one), at most `limit` (0: all).
    pub async fn list(
        &self,
        prefix: &str,
        start: Option<&str>,
        revision: i64,
        limit: i64,
    ) -> Result<Page, ApiError> {
        let end = prefix_end(prefix);
        let from = start.unwrap_or(prefix);
        let mut opts = GetOptions::new()
            .with_range(end)
            .with_sort(SortTarget::Key, SortOrder::Ascend);
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        if limit > 0 {
            opts = opts.with_limit(limit);
        }
        let resp = with_retries(true, || {
            let mut kv = self.client.kv_client();
            let opts = opts.clone();
            async move { kv.get(from, Some(opts)).await }
        })
        .await?;
        Ok(Page {
            items: resp.kvs().iter().map(stored).collect(),
            revision: header_rev(resp.header()),
            more: resp.more(),
        })
    }

    /// Writes `key` only if it does not exist, together with `claims` (keys that stand
    /// for an allocated cluster IP or node port), each only if no one holds it yet: one
    /// transaction, so two objects can never be given the same claim.
    pub async fn create_claiming(
        &self,
        key: &str,
        value: Vec<u8>,
        claims: &[String],
    ) -> Result<Claimed, ApiError> {
        let mut when = vec![Compare::create_revision(key, CompareOp::Equal, 0)];
        let mut then = vec![TxnOp::put(key, value, None)];
        let mut or_else = vec![TxnOp::get(key, None)];
        for c in claims {
            when.push(Compare::create_revision(c.as_str(), CompareOp::Equal, 0));
            then.push(TxnOp::put(c.as_str(), key, None));
            or_else.push(TxnOp::get(c.as_str(), None));
        }
        let resp = self
            .txn(Txn::new().when(when).and_then(then).or_else(or_else))
            .await?;
        if resp.succeeded() {
            return Ok(Claimed::Ok(header_rev(resp.header())));
        }
        let mut found = read_back(resp);
        if let Some(Some(current)) = found.next() {
            return Ok(Claimed::Exists(current));
        }
        Ok(Claimed::Taken(found.flatten().map(|s| s.key).collect()))
    }

    /// Deletes `key` only if its mod revision is still `expected`, releasing `claims`
    /// in the same transaction.
    pub async fn delete_releasing(
        &self,
        key: &str,
        expected: i64,
        claims: &[String],
    ) -> Result<Written, ApiError> {
        let mut then = vec![TxnOp::delete(key, None)];
        then.extend(claims.iter().map(|c| TxnOp::delete(c.as_str(), None)));
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then(then)
            .or_else([TxnOp::get(key, None)]);
        self.cas(txn).await
    }

    /// Writes `key` only if its mod revision is still `expected`.
    pub async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: i64,
    ) -> Result<Written, ApiError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::put(key, value, None)])
            .or_else([TxnOp::get(key, None)]);
        self.cas(txn).await
    }

    /// Writes `key` only if its mod revision is still `expected` and every key of
    /// `claims` is free, taking those claims and deleting `releases` in the same
    /// transaction (a Service update that gains or gives up node ports).
    pub async fn update_claiming(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: i64,
        claims: &[String],
        releases: &[String],
    ) -> Result<Reclaimed, ApiError> {
        let mut when = vec![Compare::mod_revision(key, CompareOp::Equal, expected)];
        let mut then = vec![TxnOp::put(key, value, None)];
        let mut or_else = vec![TxnOp::get(key, None)];
        for c in claims {
            when.push(Compare::create_revision(c.as_str(), CompareOp::Equal, 0));
            then.push(TxnOp::put(c.as_str(), key, None));
            or_else.push(TxnOp::get(c.as_str(), None));
        }
        then.extend(releases.iter().map(|r| TxnOp::delete(r.as_str(), None)));
        let resp = self
            .txn(Txn::new().when(when).and_then(then).or_else(or_else))
            .await?;
        if resp.succeeded() {
            return Ok(Reclaimed::Ok(header_rev(resp.header())));
        }
        let mut found = read_back(resp);
        match found.next() {
            Some(Some(current)) if current.mod_revision == expected => {
                Ok(Reclaimed::Taken(found.flatten().map(|s| s.key).collect()))
            }
            _ => Ok(Reclaimed::Conflict),
        }
    }

    /// Runs a write transaction (retried only when it provably reached no member).
    async fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, ApiError> {
        Ok(with_retries(false, || {
            let mut kv = self.client.kv_client();
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })
        .await?)
    }

    async fn cas(&self, txn: Txn) -> Result<Written, ApiError> {
        let resp = self.txn(txn).await?;
        if resp.succeeded() {
            return Ok(Written::Ok(header_rev(resp.header())));
        }
        Ok(Written::Conflict(read_back(resp).flatten().next()))
    }

    /// Writes `key` attached to a fresh store lease of `ttl_seconds`, so the key goes
    /// away by itself unless written again in time (kube-apiserver's `masterleases`).
    /// Each write takes a new lease; the one it replaces expires unattached.
    pub async fn put_with_ttl(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl_seconds: i64,
    ) -> Result<(), ApiError> {
        // A lease granted twice (a retried grant that had reached a member) is never
        // attached to anything and expires on its own, so granting retries like a read.
        let lease = with_retries(true, || {
            let mut leases = self.client.lease_client();
            async move { leases.grant(ttl_seconds, None).await }
        })
        .await?;
        let opts = etcd_client::PutOptions::new().with_lease(lease.id());
        with_retries(false, || {
            let mut kv = self.client.kv_client();
            let (value, opts) = (value.clone(), opts.clone());
            async move { kv.put(key, value, Some(opts)).await }
        })
        .await?;
        Ok(())
    }

    /// Deletes `key` whatever its revision (a key only this apiserver writes).
    pub async fn delete(&self, key: &str) -> Result<(), ApiError> {
        with_retries(true, || {
            let mut kv = self.client.kv_client();
            async move { kv.delete(key, None).await }
        })
        .await?;
        Ok(())
    }

    /// A watch on every key under `prefix`, from `start_revision` on, with previous
    /// values (a delete event carries the deleted object) and progress notifications.
    pub async fn watch(
        &self,
        prefix: &str,
        start_revision: i64,
    ) -> Result<etcd_client::WatchStream, ApiError> {
        let opts = WatchOptions::new()
            .with_range(prefix_end(prefix))
            .with_prev_key()
            .with_progress_notify()
            .with_start_revision(start_revision);
        Ok(self.client.watch_client().watch(prefix, Some(opts)).await?)
    }

    /// Compacts the store's history up to `revision` (kube-apiserver does this on an
    /// interval, so the store's history stays bounded).
    pub async fn compact(&self, revision: i64) -> Result<(), ApiError> {
        self.client.kv_client().compact(revision, None).await?;
        Ok(())
    }
}

/// The end of the range of keys starting with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
