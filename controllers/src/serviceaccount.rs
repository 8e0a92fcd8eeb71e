//! The service account controller: every active namespace has a `default`
//! ServiceAccount, created when the namespace appears and again if it is deleted, as
//! upstream's does. (Tokens for service accounts are not issued yet.)

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use crate::Error;

/// The service account every namespace gets.
const DEFAULT: &str = "default";

/// Runs the controller until the process ends.
pub async fn run(client: Client) {
    // A deleted `default` account brings its namespace back for a reconcile.
    let accounts = watcher::Config::default().fields(&format!("metadata.name={DEFAULT}"));
    Controller::new(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(Api::<ServiceAccount>::all(client.clone()), accounts, |sa| {
        sa.namespace().map(|ns| ObjectRef::<Namespace>::new(&ns))
    })
    .run(reconcile, error_policy, Arc::new(client))
    .for_each(|_| futures::future::ready(()))
    .await;
}

fn error_policy(ns: Arc<Namespace>, err: &Error, _: Arc<Client>) -> Action {
    tracing::warn!(namespace = ns.name_any(), error = %err, "creating the default service account failed");
    Action::requeue(Duration::from_secs(1))
}

async fn reconcile(ns: Arc<Namespace>, client: Arc<Client>) -> Result<Action, Error> {
    let terminating = ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
    if terminating {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let api: Api<ServiceAccount> = Api::namespaced((*client).clone(), &name);
    if api.get_opt(DEFAULT).await?.is_some() {
        return Ok(Action::await_change());
    }
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(DEFAULT.into()),
            namespace: Some(name.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &sa).await {
        Ok(_) => tracing::info!(namespace = %name, "created the default service account"),
        // Already made meanwhile, or the namespace began terminating: nothing to do.
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 403 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Action::await_change())
}

/// The token controller: a Secret of type `kubernetes.io/service-account-token` naming
/// a ServiceAccount (annotation `kubernetes.io/service-account.name`) gets a signed
/// token, the cluster CA and the namespace in its data, and the account's uid in its
/// annotations, as upstream's TokensController fills them. The apiserver accepts the
/// token while the account and the Secret exist.
pub mod tokens {
    use super::*;
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Patch, PatchParams};
    use serde_json::json;

    const TOKEN_TYPE: &str = "kubernetes.io/service-account-token";
    const NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";
    const UID_ANNOTATION: &str = "kubernetes.io/service-account.uid";

    /// What the controller signs with and hands out.
    pub struct Signer {
        key: ring::signature::EcdsaKeyPair,
        ca: Vec<u8>,
    }

    impl Signer {
        /// From `--service-account-private-key-file` (a PKCS#8 P-256 key in PEM, as the
        /// apiserver writes `sa.key`) and `--root-ca-file`.
        pub fn load(key: &std::path::Path, ca: &std::path::Path) -> Result<Signer, Error> {
            use base64::Engine;
            let read = |p: &std::path::Path| {
                std::fs::read(p).map_err(|e| Error::Config(format!("{}: {e}", p.display())))
            };
            let pem = String::from_utf8_lossy(&read(key)?).into_owned();
            let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
            let der = base64::engine::general_purpose::STANDARD
                .decode(body)
                .map_err(|e| Error::Config(format!("{}: {e}", key.display())))?;
            let key = ring::signature::EcdsaKeyPair::from_pkcs8(
                &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &der,
                &ring::rand::SystemRandom::new(),
            )
            .map_err(|e| Error::Config(format!("{}: {e}", key.display())))?;
            Ok(Signer { key, ca: read(ca)? })
        }

        /// A legacy service-account token (ES256 JWT) for `sa` through `secret`.
        fn token(&self, ns: &str, sa: &str, uid: &str, secret: &str) -> Result<String, Error> {
            use base64::Engine;
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let header = b64.encode(json!({"alg": "ES256", "typ": "JWT"}).to_string());
            let claims = b64.encode(
                json!({
                    "iss": "kubernetes/serviceaccount",
                    "kubernetes.io/serviceaccount/namespace": ns,
                    "kubernetes.io/serviceaccount/secret.name": secret,
                    "kubernetes.io/serviceaccount/service-account.name": sa,
                    "kubernetes.io/serviceaccount/service-account.uid": uid,
                    "sub": format!("system:serviceaccount:{ns}:{sa}"),
                })
                .to_string(),
            );
            let signed = format!("{header}.{claims}");
            let sig = self
                .key
                .sign(&ring::rand::SystemRandom::new(), signed.as_bytes())
                .map_err(|e| Error::Sync(format!("signing a token: {e}")))?;
            Ok(format!("{signed}.{}", b64.encode(sig.as_ref())))
        }
    }

    struct Ctx {
        client: Client,
        signer: Signer,
    }

    /// Runs the controller until the process ends.
    pub async fn run(client: Client, signer: Signer) {
        Controller::new(
            Api::<Secret>::all(client.clone()),
            watcher::Config::default(),
        )
        .run(reconcile, error_policy, Arc::new(Ctx { client, signer }))
        .for_each(|_| futures::future::ready(()))
        .await;
    }

    fn error_policy(s: Arc<Secret>, err: &Error, _: Arc<Ctx>) -> Action {
        tracing::warn!(namespace = s.namespace().unwrap_or_default(), secret = s.name_any(), error = %err, "filling a service account token");
        Action::requeue(Duration::from_secs(1))
    }

    async fn reconcile(secret: Arc<Secret>, ctx: Arc<Ctx>) -> Result<Action, Error> {
        if secret.type_.as_deref() != Some(TOKEN_TYPE) {
            return Ok(Action::await_change());
        }
        let annotations = secret.metadata.annotations.clone().unwrap_or_default();
        let Some(sa_name) = annotations.get(NAME_ANNOTATION) else {
            return Ok(Action::await_change());
        };
        if secret
            .data
            .as_ref()
            .is_some_and(|d| d.contains_key("token"))
        {
            return Ok(Action::await_change());
        }
        let ns = secret.namespace().unwrap_or_default();
        let Some(sa) = Api::<ServiceAccount>::namespaced(ctx.client.clone(), &ns)
            .get_opt(sa_name)
            .await?
        else {
            // The account may be created right after its Secret (one manifest).
            return Ok(Action::requeue(Duration::from_secs(2)));
        };
        let uid = sa.metadata.uid.clone().unwrap_or_default();
        let name = secret.name_any();
        let token = ctx.signer.token(&ns, sa_name, &uid, &name)?;
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let patch = json!({
            "metadata": {
                "resourceVersion": secret.resource_version(),
                "annotations": {UID_ANNOTATION: uid},
            },
            "data": {
                "token": b64(token.as_bytes()),
                "ca.crt": b64(&ctx.signer.ca),
                "namespace": b64(ns.as_bytes()),
            },
        });
        Api::<Secret>::namespaced(ctx.client.clone(), &ns)
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        tracing::info!(namespace = %ns, secret = %name, service_account = %sa_name, "filled service account token");
        Ok(Action::await_change())
    }
}
