//! Authentication: who is asking. Client certificates signed by the cluster CA (the
//! TLS layer verifies them; CN is the user, O the groups) and static bearer tokens from
//! `--token-auth-file` (kube-apiserver's CSV format: `token,user,uid,"group1,group2"`).
//! Service-account tokens (JWTs the controller-manager signs with the key pair in the
//! cert dir) are the third way in.
//! Every way yields a [`UserInfo`], which the RBAC authorizer (`rbac.rs`) decides on;
//! every authenticated user is also in `system:authenticated`. Anonymous requests get
//! 401 (kube-apiserver's `--anonymous-auth=false`).

use std::collections::HashMap;
use std::path::Path;

use crate::error::ApiError;

/// An authenticated user: what the authorizer decides on (upstream's `user.Info`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub groups: Vec<String>,
}

/// The group of every authenticated user.
pub const AUTHENTICATED: &str = "system:authenticated";

impl UserInfo {
    /// The user with `system:authenticated` added (once), as upstream's
    /// AuthenticatedGroupAdder does after any authenticator succeeds.
    pub fn authenticated(mut self) -> UserInfo {
        if !self.groups.iter().any(|g| g == AUTHENTICATED) {
            self.groups.push(AUTHENTICATED.into());
        }
        self
    }
}

/// Static bearer tokens.
#[derive(Default)]
pub struct Tokens {
    by_token: HashMap<String, UserInfo>,
}

impl Tokens {
    /// Parses a token file. Lines are `token,user,uid[,"g1,g2"]`; `#` starts a comment.
    pub fn load(path: &Path) -> Result<Tokens, ApiError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ApiError::Setup(format!("{}: {e}", path.display())))?;
        let mut by_token = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields = split_csv(line);
            if fields.len() < 3 {
                return Err(ApiError::Setup(format!(
                    "{}: line {}: expected token,user,uid[,groups]",
                    path.display(),
                    n + 1
                )));
            }
            let groups = fields
                .get(3)
                .map(|g| {
                    g.split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            by_token.insert(
                fields[0].clone(),
                UserInfo {
                    name: fields[1].clone(),
                    groups,
                },
            );
        }
        Ok(Tokens { by_token })
    }

    /// The user a bearer token stands for.
    pub fn user(&self, token: &str) -> Option<UserInfo> {
        self.by_token.get(token).cloned()
    }
}

/// CSV fields with double-quoted fields (which may contain commas).
fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_groups_may_hold_commas() {
        assert_eq!(
            split_csv(r#"t0k,alice,1,"dev,ops""#),
            vec!["t0k", "alice", "1", "dev,ops"]
        );
    }
}

/// The claims of a legacy service-account token (a token Secret's `data.token`).
#[derive(Debug, serde::Deserialize)]
pub struct ServiceAccountClaims {
    pub iss: String,
    pub sub: String,
    #[serde(rename = "kubernetes.io/serviceaccount/namespace")]
    pub namespace: String,
    #[serde(rename = "kubernetes.io/serviceaccount/secret.name")]
    pub secret_name: String,
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.name")]
    pub service_account: String,
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.uid")]
    pub service_account_uid: String,
}

/// The issuer of legacy service-account tokens.
pub const SA_ISSUER: &str = "kubernetes/serviceaccount";

/// Checks a bearer token's ES256 signature against the service-account key and returns
/// its claims; whether the account and its Secret still exist is the caller's check.
/// Hand-written rather than a JWT crate: one algorithm, one key, three dots, and
/// `ring` (already here for TLS) does the cryptography.
pub fn verify_service_account_token(key: &[u8], token: &str) -> Option<ServiceAccountClaims> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = token.split('.');
    let (h, p, sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let header: serde_json::Value = serde_json::from_slice(&b64.decode(h).ok()?).ok()?;
    if header.get("alg").and_then(serde_json::Value::as_str) != Some("ES256") {
        return None;
    }
    let signed = &token[..h.len() + 1 + p.len()];
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, key)
        .verify(signed.as_bytes(), &b64.decode(sig).ok()?)
        .ok()?;
    let claims: ServiceAccountClaims = serde_json::from_slice(&b64.decode(p).ok()?).ok()?;
    let sub = format!(
        "system:serviceaccount:{}:{}",
        claims.namespace, claims.service_account
    );
    (claims.iss == SA_ISSUER && claims.sub == sub).then_some(claims)
}

impl ServiceAccountClaims {
    /// The user a valid token authenticates as, with upstream's groups.
    pub fn user(&self) -> UserInfo {
        UserInfo {
            name: self.sub.clone(),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{}", self.namespace),
                "system:authenticated".into(),
            ],
        }
    }
}
