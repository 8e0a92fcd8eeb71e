//! `capstan etcd-snapshot save|ls|delete`, as k3s's: on-demand snapshots of a running
//! server's store, taken through the etcd Maintenance API (the stream `etcdctl
//! snapshot save` stores, checksummed), kept as files `<name>-<node>-<unix time>` in
//! `<data-dir>/server/db/snapshots`. `capstan server --cluster-reset
//! --cluster-reset-restore-path <file>` restores one (`server.rs`).

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The flags every `etcd-snapshot` command takes (k3s's names).
#[derive(clap::Args)]
pub struct Common {
    /// The server's data dir.
    #[arg(long, default_value = "/var/lib/capstan", global = true)]
    data_dir: PathBuf,
    /// Where snapshots are kept (default: `<data-dir>/server/db/snapshots`).
    #[arg(long, alias = "etcd-snapshot-dir", global = true)]
    dir: Option<PathBuf>,
}

impl Common {
    fn dir(&self) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| default_dir(&self.data_dir))
    }
}

/// `<data-dir>/server/db/snapshots`, k3s's place for them.
pub fn default_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("server").join("db").join("snapshots")
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Take a snapshot of the running server's store now.
    Save {
        /// The snapshot's name; the file is `<name>-<node>-<unix time>`.
        #[arg(long, default_value = "on-demand")]
        name: String,
        /// This server's node name (default: the hostname).
        #[arg(long)]
        node_name: Option<String>,
        /// The server's store client port (`capstan server --store-client-port`).
        #[arg(long, default_value_t = 2379)]
        store_client_port: u16,
    },
    /// List the snapshots in the snapshot dir.
    #[command(alias = "list")]
    Ls,
    /// Delete snapshots by name.
    #[command(alias = "rm")]
    Delete {
        /// Snapshot names (as `ls` shows them).
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// The `etcd-snapshot` subcommand.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let dir = a.common.dir();
    match a.command {
        Command::Save {
            name,
            node_name,
            store_client_port,
        } => {
            let node = match node_name {
                Some(n) => n,
                None => crate::server::hostname()?,
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .context("the clock is before 1970")?
                .as_secs();
            let file_name = format!("{name}-{node}-{now}");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let path = dir.join(&file_name);
            // The server's store speaks TLS to certificates of its own CA; this
            // command shows the apiserver's client certificate, as k3s's does.
            let etcd = a.common.data_dir.join("pki").join("etcd");
            let tls = capstan_apiserver::storage::EtcdTls {
                ca_file: Some(etcd.join("ca.crt")),
                cert_file: Some(etcd.join("client.crt")),
                key_file: Some(etcd.join("client.key")),
            };
            let options = tls
                .options()
                .with_context(|| format!("the store's client certificate in {}", etcd.display()))?;
            let endpoint = format!("https://127.0.0.1:{store_client_port}");
            save(&endpoint, options, &path).await?;
            println!("Snapshot {file_name} saved.");
            tracing::info!(snapshot = %path.display(), "snapshot saved");
            Ok(())
        }
        Command::Ls => {
            let rows = list(&dir)?;
            println!("{:<40} {:<80} {:>10} Created", "Name", "Location", "Size");
            for r in rows {
                println!(
                    "{:<40} {:<80} {:>10} {}",
                    r.name,
                    format!("file://{}", r.path.display()),
                    r.size,
                    r.created
                );
            }
            Ok(())
        }
        Command::Delete { names } => {
            for n in names {
                // A name, never a path: nothing outside the snapshot dir is removed.
                anyhow::ensure!(
                    !n.contains('/') && n != ".." && n != ".",
                    "{n}: not a snapshot name"
                );
                let path = dir.join(&n);
                std::fs::remove_file(&path)
                    .with_context(|| format!("deleting snapshot {}", path.display()))?;
                println!("Snapshot {n} deleted.");
            }
            Ok(())
        }
    }
}

/// Streams a snapshot from the store at `endpoint` into `path`, through a temporary
/// file renamed into place once complete, so a failed save leaves nothing a restore
/// could take for a snapshot.
pub async fn save(
    endpoint: &str,
    options: Option<etcd_client::ConnectOptions>,
    path: &Path,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut client = etcd_client::Client::connect([endpoint], options)
        .await
        .with_context(|| format!("connecting to the store at {endpoint}"))?;
    let mut stream = client
        .snapshot()
        .await
        .with_context(|| format!("snapshot from {endpoint}"))?;
    let part = path.with_extension("part");
    let mut f =
        std::fs::File::create(&part).with_context(|| format!("creating {}", part.display()))?;
    let streamed = async {
        while let Some(resp) = stream.message().await.context("receiving the snapshot")? {
            f.write_all(resp.blob())
                .with_context(|| format!("writing {}", part.display()))?;
        }
        f.sync_all()
            .with_context(|| format!("writing {}", part.display()))?;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = streamed {
        let _ = std::fs::remove_file(&part);
        return Err(e);
    }
    std::fs::rename(&part, path).with_context(|| format!("renaming to {}", path.display()))
}

/// One snapshot file.
pub struct Entry {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    /// RFC 3339, from the time in the name (else the file's modification time).
    pub created: String,
}

/// The snapshots in `dir`, oldest first (none when it does not exist).
pub fn list(dir: &Path) -> anyhow::Result<Vec<Entry>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.with_context(|| format!("reading {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let meta = e.metadata()?;
        if !meta.is_file() || name.ends_with(".part") {
            continue;
        }
        let secs = name
            .rsplit('-')
            .next()
            .and_then(|t| t.parse::<i64>().ok())
            .or_else(|| {
                meta.modified()
                    .ok()
                    .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
                    .and_then(|d| i64::try_from(d.as_secs()).ok())
            })
            .unwrap_or_default();
        let created = chrono::DateTime::from_timestamp(secs, 0)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        out.push((
            secs,
            Entry {
                name,
                path: e.path(),
                size: meta.len(),
                created,
            },
        ));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)));
    Ok(out.into_iter().map(|(_, e)| e).collect())
}
