//! Pod volumes, set up on the node before a container starts and handed to the runtime
//! as bind mounts: emptyDir (a directory under
//! `<root dir>/pods/<uid>/volumes/kubernetes.io~empty-dir/<name>`, living as long as
//! the pod), hostPath (with the `DirectoryOrCreate` / `FileOrCreate` types), and the
//! volumes whose files the kubelet writes: configMap and secret (their keys, read
//! through the apiserver when the container starts), downwardAPI (the pod's own fields)
//! and projected (any of those in one directory). The whole `<root dir>/pods/<uid>` goes
//! with the pod.
//!
//! Written files go in as upstream's atomic writer puts them: the payload in a
//! timestamped `..<time>` directory, a `..data` symlink to it swapped by a rename, and
//! each top-level name a symlink through `..data`. So a container never sees half a
//! payload, and rewriting the volume for one container's start does not pull the
//! directory from under another container that has it mounted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use capstan_proto::cri as api;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, Volume,
};
use kube::Api;

use super::env::Allocatable;

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
    /// An `items` entry names a key its configMap or secret lacks (upstream's words).
    #[error("{0}")]
    Key(String),
    /// A downward API file names a field or resource the kubelet cannot give.
    #[error("{0}")]
    Field(String),
    /// A projected source this node cannot produce.
    #[error("projected volume \"{volume}\": {source_kind} sources are not supported by this node")]
    Unsupported {
        volume: String,
        source_kind: &'static str,
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

/// A source's keys: name to content.
type Payload = BTreeMap<String, Vec<u8>>;

/// A volume's files: relative path to content and permission bits.
type Files = BTreeMap<String, (Vec<u8>, u32)>;

/// The mode of written files when the volume sets no `defaultMode` (upstream's 0644).
const DEFAULT_MODE: u32 = 0o644;

/// A `defaultMode` or item `mode` as permission bits, `default` when unset.
fn file_mode(m: Option<i32>, default: u32) -> u32 {
    m.and_then(|m| u32::try_from(m).ok()).unwrap_or(default)
}

/// `files` as `items` maps them (a key to a path), or every key; an item whose key is
/// missing fails unless the source is `optional`. `kind` words the failure as upstream's
/// (`configmap references non-existent config key: k`).
fn pick(
    files: Payload,
    items: Option<&Vec<KeyToPath>>,
    optional: bool,
    missing: impl Fn(&str) -> String,
    mode: u32,
) -> Result<Files, VolumeError> {
    let Some(items) = items else {
        return Ok(files.into_iter().map(|(k, v)| (k, (v, mode))).collect());
    };
    let mut out = Files::new();
    for i in items {
        match files.get(&i.key) {
            Some(v) => {
                let m = file_mode(i.mode, mode);
                out.insert(i.path.clone(), (v.clone(), m));
            }
            None if optional => {}
            None => return Err(VolumeError::Key(missing(&i.key))),
        }
    }
    Ok(out)
}

/// Writes `payload` into `dir` the atomic writer's way (see the module documentation);
/// an unchanged payload leaves the directory as it is.
fn write_atomic(dir: &Path, payload: &Files) -> Result<(), VolumeError> {
    use std::os::unix::fs::PermissionsExt;
    // Paths are validated by the apiserver; none may climb out of the volume, nor
    // start with `..`, the writer's own names (as upstream's writer refuses them).
    let payload: Files = payload
        .iter()
        .filter(|(rel, _)| {
            !rel.is_empty()
                && !rel.starts_with('/')
                && !rel.starts_with("..")
                && !rel.split('/').any(|c| c == "..")
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let data = dir.join("..data");
    if read_payload(&data, &payload) {
        return Ok(());
    }
    let stamp = chrono::Utc::now()
        .format("..%Y_%m_%d_%H_%M_%S.%f")
        .to_string();
    let fresh = dir.join(&stamp);
    for (rel, (content, mode)) in &payload {
        let p = fresh.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&p, content).map_err(io(&p))?;
        let perms = std::fs::Permissions::from_mode(mode & 0o7777);
        std::fs::set_permissions(&p, perms).map_err(io(&p))?;
    }
    std::fs::create_dir_all(&fresh).map_err(io(&fresh))?;
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &data).map_err(io(&data))?;
    let top: BTreeSet<&str> = payload
        .keys()
        .filter_map(|rel| rel.split('/').next())
        .collect();
    for name in &top {
        let link = dir.join(name);
        match std::fs::symlink_metadata(&link) {
            Ok(m) if m.file_type().is_symlink() => continue,
            // A plain file or directory, as an older node wrote the volume.
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&link).map_err(io(&link))?,
            Ok(_) => std::fs::remove_file(&link).map_err(io(&link))?,
            Err(_) => {}
        }
        std::os::unix::fs::symlink(Path::new("..data").join(name), &link).map_err(io(&link))?;
    }
    // What the previous payload had and this one has not, and its directory.
    for entry in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = if name.starts_with("..") {
            name != "..data" && name != stamp
        } else {
            !top.contains(name.as_str())
        };
        if stale {
            let p = entry.path();
            let _ = if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
    Ok(())
}

/// Whether `data` (a volume's `..data`) holds exactly `payload`.
fn read_payload(data: &Path, payload: &Files) -> bool {
    fn walk(base: &Path, dir: &Path, out: &mut Files) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            if p.is_dir() {
                walk(base, &p, out)?;
            } else {
                let rel = p
                    .strip_prefix(base)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .into_owned();
                let mode = std::fs::metadata(&p)?.permissions().mode() & 0o7777;
                out.insert(rel, (std::fs::read(&p)?, mode));
            }
        }
        Ok(())
    }
    let mut have = Files::new();
    data.exists() && walk(data, data, &mut have).is_ok() && &have == payload
}

/// The keys of a ConfigMap (`data` and `binaryData`) or Secret (`data`, and
/// `stringData` not yet merged into it) as files; None if it does not exist.
async fn source_files(client: &kube::Client, ns: &str, source: Keyed<'_>) -> Option<Payload> {
    match source {
        Keyed::ConfigMap(name) => {
            let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
                .get_opt(name)
                .await
                .ok()
                .flatten()?;
            let text = cm
                .data
                .into_iter()
                .flatten()
                .map(|(k, v)| (k, v.into_bytes()));
            let binary = cm.binary_data.into_iter().flatten().map(|(k, v)| (k, v.0));
            Some(text.chain(binary).collect())
        }
        Keyed::Secret(name) => {
            let secret = Api::<Secret>::namespaced(client.clone(), ns)
                .get_opt(name)
                .await
                .ok()
                .flatten()?;
            let data = secret.data.into_iter().flatten().map(|(k, v)| (k, v.0));
            let text = secret
                .string_data
                .into_iter()
                .flatten()
                .map(|(k, v)| (k, v.into_bytes()));
            Some(data.chain(text).collect())
        }
    }
}

/// A map as the downward API writes it: `key="value"` lines in key order, the value
/// quoted as Go's `%q` does, no newline after the last.
fn format_map(m: Option<&BTreeMap<String, String>>) -> String {
    let quote = |v: &str| {
        let mut q = String::from("\"");
        for ch in v.chars() {
            match ch {
                '"' => q.push_str("\\\""),
                '\\' => q.push_str("\\\\"),
                '\n' => q.push_str("\\n"),
                '\t' => q.push_str("\\t"),
                '\r' => q.push_str("\\r"),
                c if c.is_control() => q.push_str(&format!("\\x{:02x}", c as u32)),
                c => q.push(c),
            }
        }
        q.push('"');
        q
    };
    m.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The files of a downward API volume (or projected source).
fn downward_files(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    node: &Allocatable,
    mode: u32,
) -> Result<Files, VolumeError> {
    let mut out = Files::new();
    for item in items {
        let value = if let Some(f) = &item.field_ref {
            match f.field_path.as_str() {
                "metadata.labels" => format_map(pod.metadata.labels.as_ref()),
                "metadata.annotations" => format_map(pod.metadata.annotations.as_ref()),
                path => super::env::pod_field(pod, path)
                    .ok_or_else(|| VolumeError::Field(format!("unsupported fieldPath: {path}")))?,
            }
        } else if let Some(r) = &item.resource_field_ref {
            let containers = pod.spec.iter().flat_map(|s| s.containers.iter());
            let named = r.container_name.as_deref().unwrap_or_default();
            let Some(c) = containers.clone().find(|c| c.name == named) else {
                return Err(VolumeError::Field(format!(
                    "container {named} not found in the pod for resourceFieldRef {}",
                    r.resource
                )));
            };
            super::env::resource_field_ref(pod, c, r, node)
                .map_err(|e| VolumeError::Field(e.to_string()))?
        } else {
            continue;
        };
        let m = file_mode(item.mode, mode);
        out.insert(item.path.clone(), (value.into_bytes(), m));
    }
    Ok(out)
}

/// A ConfigMap or Secret a volume (or projected source) takes its files from.
#[derive(Clone, Copy)]
enum Keyed<'a> {
    ConfigMap(&'a str),
    Secret(&'a str),
}

/// The files of a ConfigMap or Secret as `items` picks them; none if it is missing and
/// `optional`, else upstream's not-found error.
async fn keyed_files(
    client: &kube::Client,
    ns: &str,
    source: Keyed<'_>,
    items: Option<&Vec<KeyToPath>>,
    optional: Option<bool>,
    mode: u32,
) -> Result<Files, VolumeError> {
    let optional = optional == Some(true);
    let (kind, name) = match source {
        Keyed::ConfigMap(name) => ("configmap", name),
        Keyed::Secret(name) => ("secret", name),
    };
    match source_files(client, ns, source).await {
        Some(files) => pick(
            files,
            items,
            optional,
            |k| match source {
                Keyed::ConfigMap(_) => format!("configmap references non-existent config key: {k}"),
                Keyed::Secret(_) => format!("secret references non-existent secret key: {k}"),
            },
            mode,
        ),
        None if optional => Ok(Files::new()),
        None => Err(VolumeError::Source {
            kind,
            name: name.to_string(),
        }),
    }
}

async fn prepare(
    client: &kube::Client,
    pod: &Pod,
    v: &Volume,
    root: &Path,
    node: &Allocatable,
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
    // A volume's `defaultMode`, for files whose item sets no `mode`.
    let mode = |m: Option<i32>| file_mode(m, DEFAULT_MODE);
    if let Some(cm) = &v.config_map {
        let dir = vols.join("kubernetes.io~configmap").join(&v.name);
        let source = Keyed::ConfigMap(&cm.name);
        let (items, m) = (cm.items.as_ref(), mode(cm.default_mode));
        let files = keyed_files(client, &ns, source, items, cm.optional, m).await?;
        write_atomic(&dir, &files)?;
        return Ok(dir);
    }
    if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let dir = vols.join("kubernetes.io~secret").join(&v.name);
        let source = Keyed::Secret(&name);
        let (items, m) = (s.items.as_ref(), mode(s.default_mode));
        let files = keyed_files(client, &ns, source, items, s.optional, m).await?;
        write_atomic(&dir, &files)?;
        return Ok(dir);
    }
    if let Some(d) = &v.downward_api {
        let dir = vols.join("kubernetes.io~downward-api").join(&v.name);
        let items = d.items.as_deref().unwrap_or_default();
        let files = downward_files(pod, items, node, mode(d.default_mode))?;
        write_atomic(&dir, &files)?;
        return Ok(dir);
    }
    if let Some(p) = &v.projected {
        let dir = vols.join("kubernetes.io~projected").join(&v.name);
        let mut files = Files::new();
        let m = mode(p.default_mode);
        for source in p.sources.iter().flatten() {
            if let Some(cm) = &source.config_map {
                let keyed = Keyed::ConfigMap(&cm.name);
                let items = cm.items.as_ref();
                files.extend(keyed_files(client, &ns, keyed, items, cm.optional, m).await?);
            } else if let Some(sec) = &source.secret {
                let keyed = Keyed::Secret(&sec.name);
                let items = sec.items.as_ref();
                files.extend(keyed_files(client, &ns, keyed, items, sec.optional, m).await?);
            } else if let Some(d) = &source.downward_api {
                let items = d.items.as_deref().unwrap_or_default();
                files.extend(downward_files(pod, items, node, m)?);
            } else if source.service_account_token.is_some() {
                return Err(VolumeError::Unsupported {
                    volume: v.name.clone(),
                    source_kind: "serviceAccountToken",
                });
            } else if source.cluster_trust_bundle.is_some() {
                return Err(VolumeError::Unsupported {
                    volume: v.name.clone(),
                    source_kind: "clusterTrustBundle",
                });
            }
        }
        write_atomic(&dir, &files)?;
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

/// Writes every configMap, secret, downwardAPI and projected volume of a running pod
/// again from the API (the others have nothing to update); the first failure is
/// returned, after the rest were tried.
pub async fn refresh(
    client: &kube::Client,
    pod: &Pod,
    root: &Path,
    node: &Allocatable,
) -> Result<(), VolumeError> {
    let mut first = Ok(());
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let written = v.config_map.is_some()
            || v.secret.is_some()
            || v.downward_api.is_some()
            || v.projected.is_some();
        if written {
            if let Err(e) = prepare(client, pod, v, root, node).await {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
    }
    first
}

/// The container's mounts, its volumes prepared first.
pub async fn mounts(
    client: &kube::Client,
    pod: &Pod,
    c: &Container,
    root: &Path,
    node: &Allocatable,
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
        let mut host = prepare(client, pod, v, root, node).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(kv: &[(&str, &str)]) -> Payload {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn files(kv: &[(&str, &str)], mode: u32) -> Files {
        kv.iter()
            .map(|(k, v)| (k.to_string(), (v.as_bytes().to_vec(), mode)))
            .collect()
    }

    #[test]
    fn the_atomic_writer_swaps_payloads_in_the_same_directory() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("vol");
        write_atomic(
            &dir,
            &files(&[("a", "1"), ("sub/b", "2"), ("../x", "no")], 0o644),
        )
        .expect("first payload");
        let inode = std::fs::metadata(&dir).expect("dir").ino();
        assert_eq!(std::fs::read_to_string(dir.join("a")).expect("a"), "1");
        assert_eq!(std::fs::read_to_string(dir.join("sub/b")).expect("b"), "2");
        assert!(std::fs::symlink_metadata(dir.join("a"))
            .expect("a")
            .file_type()
            .is_symlink());
        assert!(!tmp.path().join("x").exists(), "nothing outside the volume");
        let stamps = |d: &Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(d)
                .expect("list")
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let first = stamps(&dir);
        // The same payload again changes nothing.
        write_atomic(&dir, &files(&[("a", "1"), ("sub/b", "2")], 0o644)).expect("same payload");
        assert_eq!(stamps(&dir), first);
        // A new mode is a new payload: `defaultMode: 0400`, as for an ssh key.
        write_atomic(&dir, &files(&[("a", "1"), ("sub/b", "2")], 0o400)).expect("new mode");
        assert_ne!(stamps(&dir), first);
        let mode = std::fs::metadata(dir.join("a")).expect("a").mode() & 0o7777;
        assert_eq!(mode, 0o400);
        // A new payload: changed, added and removed keys; one payload directory left.
        write_atomic(&dir, &files(&[("a", "10"), ("c", "3")], 0o644)).expect("second payload");
        assert_eq!(std::fs::metadata(&dir).expect("dir").ino(), inode);
        assert_eq!(std::fs::read_to_string(dir.join("a")).expect("a"), "10");
        assert_eq!(std::fs::read_to_string(dir.join("c")).expect("c"), "3");
        assert!(!dir.join("sub").exists());
        let names = stamps(&dir);
        assert_eq!(names.len(), 4, "{names:?}");
        assert!(names.iter().any(|n| n == "..data"), "{names:?}");
        assert!(
            names.iter().filter(|n| n.starts_with("..2")).count() == 1,
            "{names:?}"
        );
    }

    #[test]
    fn items_pick_keys_and_a_missing_one_fails_unless_optional() {
        let files = payload(&[("k", "v"), ("other", "o")]);
        let items = vec![
            KeyToPath {
                key: "k".into(),
                path: "dir/file".into(),
                mode: None,
            },
            KeyToPath {
                key: "other".into(),
                path: "secret".into(),
                mode: Some(0o600),
            },
        ];
        let missing = |k: &str| format!("configmap references non-existent config key: {k}");
        let got = pick(files.clone(), Some(&items), false, missing, 0o644).expect("picks");
        let want = Files::from([
            ("dir/file".to_string(), (b"v".to_vec(), 0o644)),
            ("secret".to_string(), (b"o".to_vec(), 0o600)),
        ]);
        assert_eq!(got, want);
        let absent = vec![KeyToPath {
            key: "nope".into(),
            path: "p".into(),
            mode: None,
        }];
        let err = pick(files.clone(), Some(&absent), false, missing, 0o644).expect_err("fails");
        assert_eq!(
            err.to_string(),
            "configmap references non-existent config key: nope"
        );
        assert_eq!(
            pick(files, Some(&absent), true, missing, 0o644).expect("optional"),
            Files::new()
        );
    }

    #[test]
    fn maps_are_written_as_the_downward_api_writes_them() {
        let m = BTreeMap::from([
            ("b".to_string(), "say \"hi\"\n".to_string()),
            ("a".to_string(), "x".to_string()),
        ]);
        assert_eq!(format_map(Some(&m)), "a=\"x\"\nb=\"say \\\"hi\\\"\\n\"");
        assert_eq!(format_map(None), "");
    }
}
