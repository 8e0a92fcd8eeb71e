//! Pod volumes, set up on the node before a container starts and handed to the runtime
//! as bind mounts: emptyDir (a directory under
//! `<root dir>/pods/<uid>/volumes/kubernetes.io~empty-dir/<name>`, living as long as
//! the pod), hostPath (with the `DirectoryOrCreate` / `FileOrCreate` types), and
//! configMap and secret (their keys written as files, read through the apiserver when
//! the container starts). The whole `<root dir>/pods/<uid>` goes with the pod.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use capstan_proto::cri as api;
use k8s_openapi::api::core::v1::{ConfigMap, Container, KeyToPath, Pod, Secret, Volume};
use kube::Api;

/// Why a volume could not be set up (shown as the container's waiting message).
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A `volumeMount` names no volume of the pod.
    #[error("volume \"{0}\" not found in the pod's volumes")]
    Missing(String),
    /// The node's filesystem refused.
    #[error("{path}: {source}")]
    Io {
        /// What was being created.
        path: PathBuf,
        /// Why not.
        source: std::io::Error,
    },
    /// A configMap or secret could not be read.
    #[error("{kind} \"{name}\" not found")]
    Source {
        /// `configmap` or `secret`.
        kind: &'static str,
        /// Its name.
        name: String,
    },
}

/// `<root dir>/pods/<uid>`, everything the node keeps for a pod.
pub fn pod_dir(root: &Path, uid: &str) -> PathBuf {
    root.join("pods").join(uid)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError + '_ {
    move |source| VolumeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `files` into `dir` (emptied first), as `items` maps them, or every key.
fn write_files(
    dir: &Path,
    files: BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
) -> Result<(), VolumeError> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let chosen: Vec<(String, &Vec<u8>)> = match items {
        Some(items) => items
            .iter()
            .filter_map(|i| files.get(&i.key).map(|v| (i.path.clone(), v)))
            .collect(),
        None => files.iter().map(|(k, v)| (k.clone(), v)).collect(),
    };
    for (rel, data) in chosen {
        // Keys are validated by the apiserver; a path may not climb out of the volume.
        if rel.split('/').any(|c| c == "..") {
            continue;
        }
        let p = dir.join(&rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&p, data).map_err(io(&p))?;
    }
    Ok(())
}

async fn prepare(
    client: &kube::Client,
    pod: &Pod,
    v: &Volume,
    root: &Path,
) -> Result<PathBuf, VolumeError> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let vols = pod_dir(root, &uid).join("volumes");
    if let Some(hp) = &v.host_path {
        let p = PathBuf::from(&hp.path);
        match hp.type_.as_deref() {
            Some("DirectoryOrCreate") => std::fs::create_dir_all(&p).map_err(io(&p))?,
            Some("FileOrCreate") if !p.exists() => {
                if let Some(parent) = p.parent() {
                    std::fs::create_dir_all(parent).map_err(io(parent))?;
                }
                std::fs::write(&p, b"").map_err(io(&p))?;
            }
            _ => {}
        }
        return Ok(p);
    }
    if let Some(cm) = &v.config_map {
        let name = cm.name.clone();
        let dir = vols.join("kubernetes.io~configmap").join(&v.name);
        let got = Api::<ConfigMap>::namespaced(client.clone(), &ns)
            .get_opt(&name)
            .await
            .ok()
            .flatten();
        let Some(got) = got else {
            if cm.optional == Some(true) {
                write_files(&dir, BTreeMap::new(), None)?;
                return Ok(dir);
            }
            return Err(VolumeError::Source {
                kind: "configmap",
                name,
            });
        };
        let mut files: BTreeMap<String, Vec<u8>> = got
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        files.extend(
            got.binary_data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0)),
        );
        write_files(&dir, files, cm.items.as_ref())?;
        return Ok(dir);
    }
    if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let dir = vols.join("kubernetes.io~secret").join(&v.name);
        let got = Api::<Secret>::namespaced(client.clone(), &ns)
            .get_opt(&name)
            .await
            .ok()
            .flatten();
        let Some(got) = got else {
            if s.optional == Some(true) {
                write_files(&dir, BTreeMap::new(), None)?;
                return Ok(dir);
            }
            return Err(VolumeError::Source {
                kind: "secret",
                name,
            });
        };
        let mut files: BTreeMap<String, Vec<u8>> = got
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        files.extend(
            got.string_data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes())),
        );
        write_files(&dir, files, s.items.as_ref())?;
        return Ok(dir);
    }
    // emptyDir, and (for now) any other kind: an empty directory that lives with the
    // pod.
    let dir = vols.join("kubernetes.io~empty-dir").join(&v.name);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    // World-writable, as the kubelet makes it, so any container user can write.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).map_err(io(&dir))?;
    Ok(dir)
}

/// The container's mounts, its volumes prepared first.
pub async fn mounts(
    client: &kube::Client,
    pod: &Pod,
    c: &Container,
    root: &Path,
) -> Result<Vec<api::Mount>, VolumeError> {
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let v = volumes
            .iter()
            .find(|v| v.name == m.name)
            .ok_or_else(|| VolumeError::Missing(m.name.clone()))?;
        let mut host = prepare(client, pod, v, root).await?;
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            if sub.split('/').any(|c| c == "..") {
                continue;
            }
            host = host.join(sub);
            if !host.exists() {
                std::fs::create_dir_all(&host).map_err(io(&host))?;
            }
        }
        out.push(api::Mount {
            container_path: m.mount_path.clone(),
            host_path: host.to_string_lossy().into_owned(),
            readonly: m.read_only.unwrap_or(false),
            ..Default::default()
        });
    }
    Ok(out)
}
