//! The cluster's PKI and the HTTPS listener's TLS configuration.
//!
//! On first start the apiserver generates a CA, a serving certificate for every
//! address it is reached on, and an admin client certificate (`CN=admin`,
//! `O=system:masters`, as kubeadm's admin.conf) and the client certificate it shows
//! kubelets (`apiserver-kubelet-client`), and writes them to `--cert-dir`; later
//! starts reuse them, so a kubeconfig written once keeps working across restarts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::error::ApiError;

/// Paths of the PEM files under the cert dir.
#[derive(Clone)]
pub struct Pki {
    pub dir: PathBuf,
    pub ca_pem: String,
    pub serving_cert_pem: String,
    pub serving_key_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
    /// The client certificate the apiserver presents to kubelets (kubeadm's
    /// `apiserver-kubelet-client`), and its key: the files under the cert dir.
    pub kubelet_client_cert: PathBuf,
    pub kubelet_client_key: PathBuf,
    /// The service-account token verification key: an uncompressed P-256 point, the
    /// public half of `sa.key` (kube-apiserver's `--service-account-key-file`), whose
    /// private half the controller-manager signs tokens with.
    pub sa_public_key: Vec<u8>,
}

fn pki_err(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::Setup(format!("{what}: {e}"))
}

fn read(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name)).ok()
}

fn write(dir: &Path, name: &str, body: &str, secret: bool) -> Result<(), ApiError> {
    let path = dir.join(name);
    std::fs::write(&path, body).map_err(|e| pki_err(&path.display().to_string(), e))?;
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| pki_err(&path.display().to_string(), e))?;
    }
    Ok(())
}

fn params(cn: &str, org: Option<&str>, sans: &[String]) -> Result<CertificateParams, ApiError> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(|e| pki_err("params", e))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    if let Some(o) = org {
        dn.push(DnType::OrganizationName, o);
    }
    p.distinguished_name = dn;
    for san in sans {
        p.subject_alt_names
            .push(match san.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    san.clone()
                        .try_into()
                        .map_err(|e| pki_err("subject alt name", e))?,
                ),
            });
    }
    Ok(p)
}

/// How long a leaf certificate (serving, admin, kubelet client) is issued for.
const LEAF_VALIDITY_SECS: i64 = 365 * 86400;

/// Leaf certificates closer than this to their expiry are re-issued at start, as k3s
/// renews its certificates.
const RENEW_BEFORE: std::time::Duration = std::time::Duration::from_secs(90 * 86400);

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// How long until the PEM certificate expires (zero if it has); None if it cannot be
/// read (then it is kept, as before renewal existed).
fn expires_in(pem: &str) -> Option<std::time::Duration> {
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()?
        .ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let left = cert.validity().not_after.timestamp() - unix_now();
    Some(std::time::Duration::from_secs(
        u64::try_from(left).unwrap_or(0),
    ))
}

/// The leaf certificates of the cert dir (`<name>.crt` and `.key`), which
/// `capstan certificate rotate` moves aside for the next start to re-issue; the CA and
/// the service-account key stay.
pub const LEAF_CERTIFICATES: &[&str] = &["apiserver", "admin", "apiserver-kubelet-client"];

/// Loads the PKI from `dir`, generating whatever is missing. `hosts` are the names and
/// addresses the serving certificate must be valid for.
pub fn ensure_pki(dir: &Path, hosts: &[String]) -> Result<Pki, ApiError> {
    std::fs::create_dir_all(dir).map_err(|e| pki_err(&dir.display().to_string(), e))?;
    let (ca_pem, ca_key_pem) = match (read(dir, "ca.crt"), read(dir, "ca.key")) {
        (Some(c), Some(k)) => (c, k),
        _ => {
            let key = KeyPair::generate().map_err(|e| pki_err("ca key", e))?;
            let mut p = params("capstan-ca", None, &[])?;
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let cert = p.self_signed(&key).map_err(|e| pki_err("ca cert", e))?;
            write(dir, "ca.crt", &cert.pem(), false)?;
            write(dir, "ca.key", &key.serialize_pem(), true)?;
            (cert.pem(), key.serialize_pem())
        }
    };
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| pki_err("ca.key", e))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|e| pki_err("ca.crt", e))?;
    let leaf = |name: &str,
                cn: &str,
                org: Option<&str>,
                sans: &[String],
                usage: ExtendedKeyUsagePurpose|
     -> Result<(String, String), ApiError> {
        let (crt, keyf) = (format!("{name}.crt"), format!("{name}.key"));
        if let (Some(c), Some(k)) = (read(dir, &crt), read(dir, &keyf)) {
            match expires_in(&c) {
                Some(left) if left < RENEW_BEFORE => {
                    tracing::warn!(certificate = %dir.join(&crt).display(), days_left = left.as_secs() / 86400,
                        "certificate expires within 90 days; renewing it from the CA");
                }
                _ => return Ok((c, k)),
            }
        }
        let key = KeyPair::generate().map_err(|e| pki_err(name, e))?;
        let mut p = params(cn, org, sans)?;
        let now = unix_now();
        // An hour back for clocks behind ours; a year, as k3s issues them.
        p.not_before =
            time::OffsetDateTime::from_unix_timestamp(now - 3600).map_err(|e| pki_err(name, e))?;
        p.not_after = time::OffsetDateTime::from_unix_timestamp(now + LEAF_VALIDITY_SECS)
            .map_err(|e| pki_err(name, e))?;
        p.extended_key_usages = vec![usage];
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let cert = p.signed_by(&key, &issuer).map_err(|e| pki_err(name, e))?;
        write(dir, &crt, &cert.pem(), false)?;
        write(dir, &keyf, &key.serialize_pem(), true)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let mut sans: Vec<String> = vec![
        "localhost".into(),
        "127.0.0.1".into(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        "kubernetes.default.svc.cluster.local".into(),
    ];
    for h in hosts {
        if !sans.contains(h) {
            sans.push(h.clone());
        }
    }
    let (serving_cert_pem, serving_key_pem) = leaf(
        "apiserver",
        "kube-apiserver",
        None,
        &sans,
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (admin_cert_pem, admin_key_pem) = leaf(
        "admin",
        "admin",
        Some("system:masters"),
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    // As kubeadm's: in system:masters, so a kubelet authorizing its callers lets it in.
    leaf(
        "apiserver-kubelet-client",
        "kube-apiserver-kubelet-client",
        Some("system:masters"),
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    let sa_key_pem = match read(dir, "sa.key") {
        Some(k) => k,
        None => {
            let key = KeyPair::generate().map_err(|e| pki_err("sa.key", e))?;
            write(dir, "sa.key", &key.serialize_pem(), true)?;
            key.serialize_pem()
        }
    };
    let sa_public_key = KeyPair::from_pem(&sa_key_pem)
        .map_err(|e| pki_err("sa.key", e))?
        .public_key_raw()
        .to_vec();
    Ok(Pki {
        sa_public_key,
        dir: dir.to_path_buf(),
        ca_pem,
        serving_cert_pem,
        serving_key_pem,
        admin_cert_pem,
        admin_key_pem,
        kubelet_client_cert: dir.join("apiserver-kubelet-client.crt"),
        kubelet_client_key: dir.join("apiserver-kubelet-client.key"),
    })
}

impl Pki {
    /// A kubeconfig for the admin user against `server` (an `https://` URL).
    pub fn admin_kubeconfig(&self, server: &str) -> String {
        self.admin_kubeconfig_listing(server, &[])
    }

    /// [`Self::admin_kubeconfig`] that also lists `others` (name, URL): one cluster and
    /// one context `capstan-<name>` each, so that with `server` down `kubectl --context
    /// capstan-<name>` reaches another server of an HA control plane. The current
    /// context stays `capstan`, on `server`.
    pub fn admin_kubeconfig_listing(&self, server: &str, others: &[(String, String)]) -> String {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let ca = b64(&self.ca_pem);
        let entries: Vec<(String, &str)> = std::iter::once(("capstan".to_string(), server))
            .chain(
                others
                    .iter()
                    .map(|(n, u)| (format!("capstan-{n}"), u.as_str())),
            )
            .collect();
        let mut out = String::from("apiVersion: v1\nkind: Config\nclusters:\n");
        for (name, url) in &entries {
            out.push_str(&format!(
                "- name: {name:?}\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\n"
            ));
        }
        out.push_str(&format!(
            "users:\n- name: admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n",
            b64(&self.admin_cert_pem),
            b64(&self.admin_key_pem)
        ));
        for (name, _) in &entries {
            out.push_str(&format!(
                "- name: {name:?}\n  context:\n    cluster: {name:?}\n    user: admin\n"
            ));
        }
        out.push_str("current-context: capstan\n");
        out
    }

    /// The listener's TLS config: our serving cert; client certs optional (bearer
    /// tokens are the other way in) but, when presented, verified against our CA.
    /// ALPN offers h2 first, as kube-apiserver does.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, ApiError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots
                .add(c.map_err(|e| pki_err("ca.crt", e))?)
                .map_err(|e| pki_err("ca.crt", e))?;
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| pki_err("client verifier", e))?;
        let certs = CertificateDer::pem_slice_iter(self.serving_cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pki_err("apiserver.crt", e))?;
        let key = PrivateKeyDer::from_pem_slice(self.serving_key_pem.as_bytes())
            .map_err(|e| pki_err("apiserver.key", e))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| pki_err("tls", e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| pki_err("tls", e))?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

/// The user a verified client certificate names: CN is the user name, O entries the
/// groups (Kubernetes' x509 authenticator).
pub fn user_from_cert(der: &[u8]) -> Option<crate::auth::UserInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    Some(crate::auth::UserInfo { name, groups })
}

/// A client certificate and key (PEM) for `cn` in group `org`, signed by the CA in
/// `dir` and not written anywhere: the components' own identities
/// (`system:kube-controller-manager`, `system:kube-scheduler`, `system:node:<name>` in
/// `system:nodes`), as kubeadm issues them into their kubeconfigs.
pub fn issue_client_cert(
    dir: &Path,
    cn: &str,
    org: Option<&str>,
) -> Result<(String, String), ApiError> {
    let ca_pem = read(dir, "ca.crt").ok_or_else(|| pki_err("ca.crt", "missing"))?;
    let ca_key_pem = read(dir, "ca.key").ok_or_else(|| pki_err("ca.key", "missing"))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| pki_err("ca.key", e))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|e| pki_err("ca.crt", e))?;
    let key = KeyPair::generate().map_err(|e| pki_err(cn, e))?;
    let mut p = params(cn, org, &[])?;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let cert = p.signed_by(&key, &issuer).map_err(|e| pki_err(cn, e))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A kubeconfig for `user` with a client certificate against `server`.
pub fn client_kubeconfig(
    ca_pem: &str,
    server: &str,
    user: &str,
    cert_pem: &str,
    key_pem: &str,
) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: capstan\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: {user:?}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: capstan\n  context:\n    cluster: capstan\n    user: {user:?}\ncurrent-context: capstan\n",
        b64(ca_pem),
        b64(cert_pem),
        b64(key_pem)
    )
}

/// The store's certificates under `<cert-dir>/etcd/` (k3s keeps them in
/// `server/tls/etcd/`): a CA of their own, so no certificate of the cluster CA (admin,
/// nodes, components) reaches the store; the member's client-port serving certificate,
/// its peer certificate (serving and dialing), and the apiserver's client certificate.
pub struct EtcdPki {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub peer_cert: PathBuf,
    pub peer_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// Loads the store's PKI from `<dir>/etcd`, generating what is missing; `hosts` are the
/// names and addresses the member's certificates must be valid for. A joining server
/// gets the CA (certificate and key) from the cluster and issues its own member
/// certificates here.
pub fn ensure_etcd_pki(dir: &Path, hosts: &[String]) -> Result<EtcdPki, ApiError> {
    let dir = dir.join("etcd");
    std::fs::create_dir_all(&dir).map_err(|e| pki_err(&dir.display().to_string(), e))?;
    let (ca_pem, ca_key_pem) = match (read(&dir, "ca.crt"), read(&dir, "ca.key")) {
        (Some(c), Some(k)) => (c, k),
        _ => {
            let key = KeyPair::generate().map_err(|e| pki_err("etcd ca key", e))?;
            let mut p = params("capstan-etcd-ca", None, &[])?;
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let cert = p
                .self_signed(&key)
                .map_err(|e| pki_err("etcd ca cert", e))?;
            write(&dir, "ca.crt", &cert.pem(), false)?;
            write(&dir, "ca.key", &key.serialize_pem(), true)?;
            (cert.pem(), key.serialize_pem())
        }
    };
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| pki_err("etcd/ca.key", e))?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|e| pki_err("etcd/ca.crt", e))?;
    let mut sans: Vec<String> = vec!["localhost".into(), "127.0.0.1".into()];
    for h in hosts {
        if !sans.contains(h) {
            sans.push(h.clone());
        }
    }
    let leaf = |name: &str,
                cn: &str,
                sans: &[String],
                usages: Vec<ExtendedKeyUsagePurpose>|
     -> Result<(PathBuf, PathBuf), ApiError> {
        let (crt, keyf) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        if crt.exists() && keyf.exists() {
            return Ok((crt, keyf));
        }
        let key = KeyPair::generate().map_err(|e| pki_err(name, e))?;
        let mut p = params(cn, None, sans)?;
        p.extended_key_usages = usages;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let cert = p.signed_by(&key, &issuer).map_err(|e| pki_err(name, e))?;
        write(&dir, &format!("{name}.crt"), &cert.pem(), false)?;
        write(&dir, &format!("{name}.key"), &key.serialize_pem(), true)?;
        Ok((crt, keyf))
    };
    use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    // Both usages, as etcd's member certificates: a member also dials with them.
    let (server_cert, server_key) =
        leaf("server", "etcd-server", &sans, vec![ServerAuth, ClientAuth])?;
    let (peer_cert, peer_key) = leaf("peer", "etcd-peer", &sans, vec![ServerAuth, ClientAuth])?;
    // kubeadm's name for the apiserver's etcd client certificate.
    let (client_cert, client_key) = leaf(
        "client",
        "kube-apiserver-etcd-client",
        &[],
        vec![ClientAuth],
    )?;
    Ok(EtcdPki {
        ca_cert: dir.join("ca.crt"),
        server_cert,
        server_key,
        peer_cert,
        peer_key,
        client_cert,
        client_key,
    })
}
