//! Joining servers into one HA cluster, the k3s way.
//!
//! The first server (`--cluster-init`) keeps a join token in `<data-dir>/server/token`:
//! `K10<sha256 of the CA certificate>::server:<secret>`. A joining server
//! (`--server URL --token T`) fetches `/cacerts` from it without trusting the
//! connection, checks the certificate's hash against the token (so it knows it talks
//! to the right cluster before revealing anything), and then, over a connection
//! verified by that CA, asks `/v1-capstan/server-bootstrap` with the secret (basic
//! auth, user `server`, as k3s's) for the cluster CA's key and the service-account
//! key, and for its store member: the contacted server adds it as a learner through
//! the etcd Cluster API of its own store member and answers with the membership. The
//! joiner promotes itself to a voter once its store has caught up. Both endpoints are
//! served on the apiserver's port beside the API, as k3s serves them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The path of the bootstrap endpoint (k3s: `/v1-k3s/server-bootstrap`).
pub const BOOTSTRAP_PATH: &str = "/v1-capstan/server-bootstrap";
/// The agents' bootstrap endpoint: a kubelet client certificate, nothing more.
pub const AGENT_BOOTSTRAP_PATH: &str = "/v1-capstan/agent-bootstrap";
/// Where the store keeps each node's password hash (outside `/registry`, so no API
/// reads it).
const NODE_PASSWORD_PREFIX: &str = "/capstan/node-passwords/";
/// Where each server records the URL of its apiserver, for agents' load balancers
/// (k3s learns them from the `kubernetes` endpoints, which capstan does not keep).
const APISERVERS_PREFIX: &str = "/capstan/apiservers/";
/// Where agents refresh their list of servers.
pub const APISERVERS_PATH: &str = "/v1-capstan/apiservers";

/// Records this server's apiserver URL in the store, retrying until the store takes
/// it (a joining member becomes a voter first). `tls`: the store's client certificate.
pub async fn register_apiserver(
    store_url: &str,
    tls: &capstan_apiserver::storage::EtcdTls,
    name: &str,
    api_url: &str,
) {
    let key = format!("{APISERVERS_PREFIX}{name}");
    loop {
        let put = async {
            let opts = tls
                .options()
                .map_err(|e| etcd_client::Error::InvalidArgs(e.to_string()))?;
            let mut etcd = etcd_client::Client::connect([store_url], opts).await?;
            etcd.put(key.as_str(), api_url, None).await
        };
        match put.await {
            Ok(_) => return,
            Err(e) => {
                tracing::debug!(error = %e, "recording the apiserver URL; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Every server's apiserver URL, as recorded in the store.
async fn apiservers(s: &JoinState) -> Result<Vec<String>, JoinError> {
    Ok(named_apiservers(s)
        .await?
        .into_iter()
        .map(|(_, url)| url)
        .collect())
}

/// Every server's name and apiserver URL, as recorded in the store.
pub async fn named_apiservers(s: &JoinState) -> Result<Vec<(String, String)>, JoinError> {
    let got = s
        .store()
        .await?
        .get(
            APISERVERS_PREFIX,
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .map_err(|e| JoinError::Unavailable(e.to_string()))?;
    Ok(got
        .kvs()
        .iter()
        .filter_map(|kv| {
            let name = kv.key_str().ok()?.strip_prefix(APISERVERS_PREFIX)?;
            Some((name.to_string(), kv.value_str().ok()?.to_string()))
        })
        .collect())
}

/// A join token: the secret, and the CA hash that pins the cluster (absent in a bare
/// secret, which then trusts the first CA it is shown, as k3s does).
#[derive(Clone, Debug, PartialEq)]
pub struct Token {
    pub ca_hash: Option<String>,
    pub secret: String,
}

impl Token {
    /// Parses `K10<hash>::server:<secret>` or a bare secret.
    pub fn parse(s: &str) -> anyhow::Result<Token> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("K10") {
            let Some((hash, creds)) = rest.split_once("::") else {
                bail!("token: expected K10<ca-hash>::server:<secret>");
            };
            let secret = creds.split_once(':').map_or(creds, |(_, p)| p);
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) || secret.is_empty()
            {
                bail!("token: expected K10<ca-hash>::server:<secret>");
            }
            return Ok(Token {
                ca_hash: Some(hash.to_lowercase()),
                secret: secret.to_string(),
            });
        }
        if s.is_empty() || s.contains(char::is_whitespace) {
            bail!("token: empty or contains whitespace");
        }
        Ok(Token {
            ca_hash: None,
            secret: s.to_string(),
        })
    }

    /// The full form for the CA `ca_pem`.
    pub fn full(&self, ca_pem: &str) -> String {
        format!("K10{}::server:{}", ca_hash(ca_pem), self.secret)
    }
}

/// The hash a token pins: the SHA-256 of the CA bundle exactly as `/cacerts` serves it.
pub fn ca_hash(ca_pem: &str) -> String {
    hex(&Sha256::digest(ca_pem.as_bytes()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The token file of a server's data dir.
pub fn token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("server").join("token")
}

/// This server's token: the one in its data dir, else `given`, else a new random
/// secret; written (full form, mode 0600) so that later starts and joiners agree.
pub fn ensure_token(data_dir: &Path, given: Option<&Token>, ca_pem: &str) -> anyhow::Result<Token> {
    let path = token_path(data_dir);
    if let Ok(s) = std::fs::read_to_string(&path) {
        let have = Token::parse(&s).with_context(|| format!("{}", path.display()))?;
        if let Some(g) = given {
            if g.secret != have.secret {
                bail!(
                    "--token does not match the token this server was set up with ({})",
                    path.display()
                );
            }
        }
        return Ok(have);
    }
    let token = match given {
        Some(t) => t.clone(),
        None => Token {
            ca_hash: None,
            secret: hex(&rand::random::<[u8; 16]>()),
        },
    };
    write_secret(&path, &token.full(ca_pem))?;
    Ok(Token {
        ca_hash: Some(ca_hash(ca_pem)),
        ..token
    })
}

/// Writes `body` to `path` readable by the owner only (keys, tokens).
pub fn write_secret(path: &Path, body: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, body).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", path.display()))
}

/// What a joining server sends.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinRequest {
    /// Its name (store member and node).
    pub name: String,
    /// Its store member's peer URLs.
    pub peer_urls: Vec<String>,
}

/// What it gets back: the keys every server shares and its store membership.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bootstrap {
    pub ca_cert: String,
    pub ca_key: String,
    pub sa_key: String,
    /// The store's `--initial-cluster` for the new member: every started member and
    /// itself.
    pub initial_cluster: String,
    /// The new member's id (hex).
    pub member_id: String,
    /// The store's CA (`pki/etcd/ca.crt` and its key): the joiner issues its store
    /// member's and its apiserver's certificates from it. Empty from a server without
    /// store TLS.
    #[serde(default)]
    pub etcd_ca_cert: String,
    #[serde(default)]
    pub etcd_ca_key: String,
}

/// What an agent sends: its node name and its node password.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentRequest {
    pub name: String,
    pub password: String,
}

/// What an agent gets: the CA to trust and its kubelet client certificate.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentBootstrap {
    pub ca_cert: String,
    pub client_cert: String,
    pub client_key: String,
    /// Every server's apiserver URL, for the agent's load balancer.
    #[serde(default)]
    pub servers: Vec<String>,
}

/// The answer of the servers endpoint.
#[derive(Serialize, Deserialize)]
pub struct Servers {
    pub servers: Vec<String>,
}

/// What the join endpoints need on a running server.
pub struct JoinState {
    pub token: Token,
    /// The agents' own secret (`--agent-token`), which opens only the agent endpoint;
    /// without one, agents use the server token.
    pub agent_secret: Option<String>,
    /// Whether servers may join (an HA server; a single server's store cannot grow).
    pub servers_may_join: bool,
    pub ca_pem: String,
    pub pki_dir: PathBuf,
    /// The local store member's client URL (its Cluster API).
    pub store_url: String,
    /// The client certificate for it.
    pub store_tls: capstan_apiserver::storage::EtcdTls,
    /// Where the store's CA lives (`ca.crt`, `ca.key`), shipped to joiners.
    pub etcd_ca_dir: PathBuf,
}

impl JoinState {
    /// A client of the local store member, with the store's client certificate.
    async fn store(&self) -> Result<etcd_client::Client, JoinError> {
        let unavailable = |e: &dyn std::fmt::Display| JoinError::Unavailable(e.to_string());
        let opts = self.store_tls.options().map_err(|e| unavailable(&e))?;
        etcd_client::Client::connect([self.store_url.as_str()], opts)
            .await
            .map_err(|e| unavailable(&e))
    }
}

/// `/cacerts` (public, as k3s's) and the bootstrap endpoint (token-guarded).
pub fn routes(state: Arc<JoinState>) -> axum::Router {
    let mut r = axum::Router::new()
        .route(
            "/cacerts",
            axum::routing::get(|State(s): State<Arc<JoinState>>| async move { s.ca_pem.clone() }),
        )
        .route(AGENT_BOOTSTRAP_PATH, axum::routing::post(agent_bootstrap))
        .route(APISERVERS_PATH, axum::routing::post(list_apiservers));
    if state.servers_may_join {
        r = r.route(BOOTSTRAP_PATH, axum::routing::post(bootstrap));
    }
    r.with_state(state)
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    (code, Json(body)).into_response()
}

/// Whether the request carries the secret (basic auth `<user>:<secret>`). Compares
/// digests, so the time taken says nothing about how much of a guess was right.
fn authorized(headers: &HeaderMap, user: &str, secret: &str) -> bool {
    let Some(creds) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
    else {
        return false;
    };
    let want = format!("{user}:{secret}");
    Sha256::digest(&creds) == Sha256::digest(want.as_bytes())
}

async fn bootstrap(
    State(s): State<Arc<JoinState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !authorized(&headers, "server", &s.token.secret) {
        tracing::warn!("join request with a wrong token refused");
        return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    let req: JoinRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
    };
    if req.name.is_empty() || req.name.contains([',', '=']) || req.peer_urls.is_empty() {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "a join needs a name and peer URLs",
        );
    }
    match add_member(&s, &req).await {
        Ok(b) => Json(b).into_response(),
        Err(JoinError::Conflict(m)) => status(StatusCode::CONFLICT, "Conflict", &m),
        Err(JoinError::Unavailable(m)) => {
            status(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", &m)
        }
    }
}

/// Whether the request carries the agents' secret.
fn agent_authorized(s: &JoinState, headers: &HeaderMap) -> bool {
    match &s.agent_secret {
        Some(agent) => authorized(headers, "node", agent),
        None => authorized(headers, "node", &s.token.secret),
    }
}

/// The servers' apiserver URLs, for an agent holding the token.
async fn list_apiservers(State(s): State<Arc<JoinState>>, headers: HeaderMap) -> Response {
    if !agent_authorized(&s, &headers) {
        return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    match apiservers(&s).await {
        Ok(servers) => Json(Servers { servers }).into_response(),
        Err(JoinError::Conflict(m) | JoinError::Unavailable(m)) => {
            status(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", &m)
        }
    }
}

/// Issues a kubelet client certificate to an agent holding the agent token (or the
/// server token when there is no agent token) whose node password matches the one its
/// node name first came with.
async fn agent_bootstrap(
    State(s): State<Arc<JoinState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !agent_authorized(&s, &headers) {
        tracing::warn!("agent join with a wrong token refused");
        return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    let req: AgentRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
    };
    let valid_name = !req.name.is_empty()
        && req.name.len() <= 253
        && req
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !valid_name || req.password.is_empty() {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "an agent needs a node name (a DNS subdomain) and a node password",
        );
    }
    if let Err(e) = check_node_password(&s, &req).await {
        return match e {
            JoinError::Conflict(m) => status(StatusCode::FORBIDDEN, "Forbidden", &m),
            JoinError::Unavailable(m) => {
                status(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", &m)
            }
        };
    }
    let user = format!("system:node:{}", req.name);
    match capstan_apiserver::tls::issue_client_cert(&s.pki_dir, &user, Some("system:nodes")) {
        Ok((client_cert, client_key)) => {
            tracing::info!(node = %req.name, "agent joined: kubelet certificate issued");
            Json(AgentBootstrap {
                ca_cert: s.ca_pem.clone(),
                client_cert,
                client_key,
                servers: apiservers(&s).await.unwrap_or_default(),
            })
            .into_response()
        }
        Err(e) => status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            &e.to_string(),
        ),
    }
}

/// k3s's node-password check: the first agent to claim a node name records the hash
/// of its password (in the store, in one transaction); a later claim of the name must
/// bring the same password, so one agent cannot take over another's node.
async fn check_node_password(s: &JoinState, req: &AgentRequest) -> Result<(), JoinError> {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
    let unavailable = |e: &dyn std::fmt::Display| JoinError::Unavailable(e.to_string());
    let key = format!("{NODE_PASSWORD_PREFIX}{}", req.name);
    let hash = hex(&Sha256::digest(req.password.as_bytes()));
    let mut etcd = s.store().await?;
    let txn = Txn::new()
        .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key.as_str(), hash.as_str(), None)])
        .or_else([TxnOp::get(key.as_str(), None)]);
    let resp = etcd.txn(txn).await.map_err(|e| unavailable(&e))?;
    if resp.succeeded() {
        return Ok(());
    }
    let stored = resp.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
        _ => None,
    });
    if stored.as_deref() == Some(hash.as_bytes()) {
        Ok(())
    } else {
        tracing::warn!(node = %req.name, "agent join refused: node password mismatch");
        Err(JoinError::Conflict(format!(
            "Node password rejected, duplicate hostname or contents of <data-dir>/agent/node-password may not match server node-passwd entry for node {:?}",
            req.name
        )))
    }
}

/// Why the join endpoints cannot do what was asked (each becomes an HTTP status).
pub enum JoinError {
    /// The name or peer URLs belong to another running member.
    Conflict(String),
    /// The store cannot take the member now (no leader, another learner catching up).
    Unavailable(String),
}

impl std::fmt::Display for JoinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JoinError::Conflict(m) | JoinError::Unavailable(m) => f.write_str(m),
        }
    }
}

/// Adds the joiner as a learner through the local member's Cluster API; a member left
/// behind by an earlier attempt of the same server (same peer URLs, never started or
/// under the same name) is removed first.
async fn add_member(s: &JoinState, req: &JoinRequest) -> Result<Bootstrap, JoinError> {
    let unavailable = |e: &dyn std::fmt::Display| JoinError::Unavailable(e.to_string());
    let read = |name: &str| {
        std::fs::read_to_string(s.pki_dir.join(name))
            .map_err(|e| JoinError::Unavailable(format!("{name}: {e}")))
    };
    let (ca_key, sa_key) = (read("ca.key")?, read("sa.key")?);
    let read_etcd = |name: &str| {
        std::fs::read_to_string(s.etcd_ca_dir.join(name))
            .map_err(|e| JoinError::Unavailable(format!("etcd/{name}: {e}")))
    };
    let (etcd_ca_cert, etcd_ca_key) = (read_etcd("ca.crt")?, read_etcd("ca.key")?);
    let mut etcd = s.store().await?;
    let list = etcd.member_list().await.map_err(|e| unavailable(&e))?;
    for m in list.members() {
        let same_urls = m.peer_urls().iter().any(|u| req.peer_urls.contains(u));
        let same_name = m.name() == req.name;
        if same_urls && (m.name().is_empty() || same_name) {
            tracing::info!(name = %req.name, member = %format!("{:x}", m.id()), "replacing the member of an earlier join");
            etcd.member_remove(m.id())
                .await
                .map_err(|e| unavailable(&e))?;
        } else if same_urls || same_name {
            return Err(JoinError::Conflict(format!(
                "store member {:x} ({}, {:?}) already has this name or peer URL",
                m.id(),
                m.name(),
                m.peer_urls()
            )));
        }
    }
    let added = etcd
        .member_add(
            &req.peer_urls,
            Some(etcd_client::MemberAddOptions::new().with_is_learner()),
        )
        .await
        .map_err(|e| unavailable(&e))?;
    let id = added
        .member()
        .map(|m| m.id())
        .ok_or_else(|| unavailable(&"member add answered without the member"))?;
    let initial_cluster = added
        .member_list()
        .iter()
        .filter_map(|m| {
            let name = if m.id() == id { &req.name } else { m.name() };
            (!name.is_empty()).then(|| {
                m.peer_urls()
                    .iter()
                    .map(|u| format!("{name}={u}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
        })
        .collect::<Vec<_>>()
        .join(",");
    tracing::info!(name = %req.name, member = %format!("{id:x}"), peer_urls = ?req.peer_urls, "server joining: added its store member as a learner");
    Ok(Bootstrap {
        ca_cert: s.ca_pem.clone(),
        ca_key,
        sa_key,
        initial_cluster,
        member_id: format!("{id:x}"),
        etcd_ca_cert,
        etcd_ca_key,
    })
}

/// Asks the server at `url` to let this one join: fetches and checks its CA, then the
/// bootstrap data. Retries while the server is unreachable or busy (another join
/// catching up) for up to `patience`; a refused token fails at once.
pub async fn fetch_bootstrap(
    url: &str,
    token: &Token,
    req: &JoinRequest,
    patience: Duration,
) -> anyhow::Result<Bootstrap> {
    fetch(url, token, "server", BOOTSTRAP_PATH, req, patience).await
}

/// The servers' apiserver URLs, asked of `url` (an agent's refresh, so no patience).
pub async fn fetch_apiservers(url: &str, token: &Token) -> anyhow::Result<Vec<String>> {
    let s: Servers = fetch(
        url,
        token,
        "node",
        APISERVERS_PATH,
        &serde_json::json!({}),
        Duration::ZERO,
    )
    .await?;
    Ok(s.servers)
}

/// [`fetch_bootstrap`] for an agent: its kubelet certificate.
pub async fn fetch_agent_bootstrap(
    url: &str,
    token: &Token,
    req: &AgentRequest,
    patience: Duration,
) -> anyhow::Result<AgentBootstrap> {
    fetch(url, token, "node", AGENT_BOOTSTRAP_PATH, req, patience).await
}

async fn fetch<Req: Serialize, Resp: serde::de::DeserializeOwned>(
    url: &str,
    token: &Token,
    user: &str,
    path: &str,
    req: &Req,
    patience: Duration,
) -> anyhow::Result<Resp> {
    let target = Target::parse(url)?;
    let deadline = tokio::time::Instant::now() + patience;
    let body = serde_json::to_vec(req)?;
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", token.secret))
    );
    loop {
        let attempt = async {
            let (code, ca) = target.request("GET", "/cacerts", None, None).await?;
            if code != 200 {
                bail!("GET {url}/cacerts: HTTP {code}");
            }
            let ca = String::from_utf8(ca).context("/cacerts is not PEM")?;
            match &token.ca_hash {
                Some(h) if *h != ca_hash(&ca) => {
                    return Ok(Err(anyhow::anyhow!(
                        "the CA certificate of {url} does not match the token's hash: not the cluster the token is for"
                    )))
                }
                Some(_) => {}
                None => {
                    tracing::warn!(%url, "the token has no CA hash: trusting the CA the server presents")
                }
            }
            let (code, resp) = target
                .request("POST", path, Some(&ca), Some((&auth, body.clone())))
                .await?;
            let done: anyhow::Result<Resp> = match code {
                200 => Ok(serde_json::from_slice::<Resp>(&resp)
                    .context("reading the bootstrap answer")?),
                // Another join is catching up, or the store has no leader: try again.
                503 => bail!("{}", message(&resp)),
                401 => Err(anyhow::anyhow!(
                    "{url} refused the token (HTTP 401 Unauthorized)"
                )),
                // A server that is no HA server has no server join endpoint.
                404 if user == "server" => Err(anyhow::anyhow!(
                    "{url} takes no joining servers (it was not started with --cluster-init)"
                )),
                c => Err(anyhow::anyhow!("{url}: HTTP {c}: {}", message(&resp))),
            };
            anyhow::Ok(done)
        };
        match attempt.await {
            Ok(Ok(b)) => return Ok(b),
            Ok(Err(refused)) => return Err(refused),
            Err(e) if tokio::time::Instant::now() > deadline => {
                return Err(e.context(format!("joining through {url}")))
            }
            Err(e) => {
                tracing::info!(%url, error = %format!("{e:#}"), "join not possible yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}

/// An `https://host:port` server.
pub struct Target {
    pub host: String,
    pub port: u16,
}

impl Target {
    /// `https://host[:port]` (6443 by default).
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let rest = url
            .strip_prefix("https://")
            .with_context(|| format!("--server {url:?}: expected https://host:port"))?;
        let hostport = rest.split('/').next().unwrap_or(rest);
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => match p.parse::<u16>() {
                Ok(p) => (h, p),
                Err(_) => (hostport, 6443),
            },
            _ => (hostport, 6443),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            bail!("--server {url:?}: no host");
        }
        Ok(Target {
            host: host.to_string(),
            port,
        })
    }

    /// One HTTP/1.1 request; the server's certificate is verified against `ca` when
    /// given, else not at all (only for `/cacerts`, whose answer the token's hash
    /// checks).
    async fn request(
        &self,
        method: &str,
        path: &str,
        ca: Option<&str>,
        auth_body: Option<(&str, Vec<u8>)>,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        use http_body_util::BodyExt;
        let cfg = match ca {
            Some(pem) => {
                use rustls::pki_types::pem::PemObject;
                let mut roots = rustls::RootCertStore::empty();
                for c in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    roots.add(c.context("the cluster CA")?)?;
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(roots)
                    .with_no_client_auth()
            }
            None => capstan_client::tls::any_server_cert_client()?.with_no_client_auth(),
        };
        let name = rustls::pki_types::ServerName::try_from(self.host.clone())
            .with_context(|| format!("server name {:?}", self.host))?;
        let tcp = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .context("connect timed out")??;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("{}:{}", self.host, self.port));
        let body = match auth_body {
            Some((auth, body)) => {
                req = req
                    .header("authorization", auth)
                    .header("content-type", "application/json");
                body
            }
            None => Vec::new(),
        };
        let req = req.body(http_body_util::Full::new(bytes_of(body)))?;
        let resp = tokio::time::timeout(Duration::from_secs(30), send.send_request(req))
            .await
            .context("request timed out")??;
        let code = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes().to_vec();
        Ok((code, body))
    }
}

fn bytes_of(v: Vec<u8>) -> axum::body::Bytes {
    axum::body::Bytes::from(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_in_both_forms() {
        let hash = "ab".repeat(32);
        let t = Token::parse(&format!("K10{hash}::server:s3cret")).expect("full token");
        assert_eq!(t.ca_hash.as_deref(), Some(hash.as_str()));
        assert_eq!(t.secret, "s3cret");
        let bare = Token::parse("s3cret").expect("bare secret");
        assert_eq!(bare.ca_hash, None);
        assert!(Token::parse("K10abc::server:x").is_err());
        assert!(Token::parse("").is_err());
        assert_eq!(
            Token::parse(&t.full("pem")).expect("round trip").ca_hash,
            Some(ca_hash("pem"))
        );
    }
}
