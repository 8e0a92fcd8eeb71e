//! `capstan certificate rotate`, as k3s's: with the server stopped, the leaf
//! certificates (the apiserver's serving certificate, the admin and the kubelet client
//! certificates) are moved into `<data-dir>/server/tls-<unix time>`, and the next
//! start of `capstan server` issues new ones from the same CA (which stays, with the
//! service-account key), so kubeconfigs that trust the CA keep working. Certificates
//! within 90 days of expiry are also renewed at every start (`apiserver::tls`).

use std::path::PathBuf;

use anyhow::Context;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Move the server's leaf certificates aside; the next start re-issues them from
    /// the cluster CA.
    Rotate {
        /// The server's data dir.
        #[arg(long, default_value = "/var/lib/capstan")]
        data_dir: PathBuf,
        /// Only these certificates (`api-server`, `admin`, `apiserver-kubelet-client`);
        /// repeatable or comma-separated (default: all of them).
        #[arg(long, short = 's', value_delimiter = ',')]
        service: Vec<String>,
    },
}

pub fn run(c: Command) -> anyhow::Result<()> {
    let Command::Rotate { data_dir, service } = c;
    let pki = data_dir.join("pki");
    anyhow::ensure!(
        pki.join("ca.crt").is_file(),
        "{}: no cluster CA here (is --data-dir the server's?)",
        pki.display()
    );
    let mut files: Vec<&str> = Vec::new();
    for s in &service {
        let file = match s.as_str() {
            "api-server" | "apiserver" => "apiserver",
            "admin" => "admin",
            "apiserver-kubelet-client" => "apiserver-kubelet-client",
            other => anyhow::bail!(
                "--service {other}: not one of api-server, admin, apiserver-kubelet-client"
            ),
        };
        files.push(file);
    }
    if files.is_empty() {
        files = capstan_apiserver::tls::LEAF_CERTIFICATES.to_vec();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs();
    let backup = data_dir.join("server").join(format!("tls-{now}"));
    std::fs::create_dir_all(&backup).with_context(|| format!("creating {}", backup.display()))?;
    for f in files {
        for ext in ["crt", "key"] {
            let name = format!("{f}.{ext}");
            let from = pki.join(&name);
            if from.exists() {
                std::fs::rename(&from, backup.join(&name))
                    .with_context(|| format!("moving {} aside", from.display()))?;
            }
        }
    }
    println!(
        "Successfully backed up certificates to {}, please restart capstan server to rotate certificates",
        backup.display()
    );
    Ok(())
}
