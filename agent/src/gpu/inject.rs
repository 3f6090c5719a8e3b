//! Giving a container exactly its GPUs.
//!
//! What a container needs is described as *container edits*, in the shape
//! the Container Device Interface (CDI) uses: device nodes, mounts,
//! environment variables, hooks and extra groups. They come from one of two
//! places:
//!
//! - a CDI spec for `nvidia.com/gpu` in the CDI directories (written by
//!   `nvidia-ctk cdi generate`), when it describes every GPU the container
//!   was given: its edits are applied as they are;
//! - otherwise the inventory itself ([`own_edits`]): the GPUs' device nodes
//!   and the driver's control nodes, the driver's libraries and tools
//!   bind-mounted read-only under `/usr/local/nvidia`, and
//!   `NVIDIA_VISIBLE_DEVICES`/`CUDA_VISIBLE_DEVICES`.
//!
//! [`apply`] merges the edits into the runtime spec. Every device node
//! gets a device-cgroup rule that allows it, after the spec's deny-all
//! rule, so the container can open its own GPUs and no others.

use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Hook, HookBuilder, Hooks, LinuxDeviceBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType,
    MountBuilder, Spec,
};
use serde::Deserialize;

use super::{GpuDevice, Inventory};

/// Where the driver's libraries and tools appear in a container (the
/// paths NVIDIA's CUDA images already put on `LD_LIBRARY_PATH` and `PATH`).
pub const CONTAINER_LIB_DIR: &str = "/usr/local/nvidia/lib64";
pub const CONTAINER_BIN_DIR: &str = "/usr/local/nvidia/bin";

/// Mount options for the driver's files.
const DRIVER_MOUNT_OPTIONS: [&str; 4] = ["rbind", "ro", "nosuid", "nodev"];

/// A CDI spec file (only the fields Skiff uses).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CdiSpec {
    #[serde(default)]
    pub cdi_version: String,
    pub kind: String,
    #[serde(default)]
    pub devices: Vec<CdiDevice>,
    #[serde(default)]
    pub container_edits: ContainerEdits,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CdiDevice {
    pub name: String,
    #[serde(default)]
    pub container_edits: ContainerEdits,
}

/// What to change in a container's spec, in CDI's shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerEdits {
    /// `KEY=VALUE` entries; a later one replaces an earlier one.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub device_nodes: Vec<EditDevice>,
    #[serde(default)]
    pub mounts: Vec<EditMount>,
    #[serde(default)]
    pub hooks: Vec<EditHook>,
    #[serde(default, rename = "additionalGIDs")]
    pub additional_gids: Vec<u32>,
    /// Directories to add to search-path variables (`PATH`, ...): not a
    /// CDI field; Skiff's own edits use it for the driver's files.
    #[serde(skip)]
    pub search_paths: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EditDevice {
    /// Path in the container.
    pub path: String,
    /// The host's node to copy (default: `path`).
    #[serde(default)]
    pub host_path: Option<String>,
    /// `c`, `b`, `u` or `p`; read from the host node when absent.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub major: Option<i64>,
    #[serde(default)]
    pub minor: Option<i64>,
    #[serde(default)]
    pub file_mode: Option<u32>,
    /// Device-cgroup access (`rwm` when absent).
    #[serde(default)]
    pub permissions: Option<String>,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EditMount {
    pub host_path: String,
    pub container_path: String,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EditHook {
    /// `prestart`, `createRuntime`, `createContainer`, `startContainer`,
    /// `poststart` or `poststop`.
    pub hook_name: String,
    pub path: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub timeout: Option<i64>,
}

impl ContainerEdits {
    fn extend(&mut self, other: &ContainerEdits) {
        self.env.extend(other.env.iter().cloned());
        for d in &other.device_nodes {
            if !self.device_nodes.iter().any(|x| x.path == d.path) {
                self.device_nodes.push(d.clone());
            }
        }
        for m in &other.mounts {
            if !self
                .mounts
                .iter()
                .any(|x| x.container_path == m.container_path)
            {
                self.mounts.push(m.clone());
            }
        }
        self.hooks.extend(other.hooks.iter().cloned());
        for g in &other.additional_gids {
            if !self.additional_gids.contains(g) {
                self.additional_gids.push(*g);
            }
        }
        self.search_paths.extend(other.search_paths.iter().cloned());
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("GPU device {path}: {reason}")]
    Device { path: String, reason: String },
    #[error("GPU mount {path}: {reason}")]
    Mount { path: String, reason: String },
    #[error("GPU hook {path}: {reason}")]
    Hook { path: String, reason: String },
    #[error("building the runtime spec: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
}

/// The variables that tell CUDA and NVIDIA's tools which GPUs to use.
fn visible_devices_env(units: &[GpuDevice]) -> Vec<String> {
    let list = units
        .iter()
        .map(|u| u.gpu.uuid.as_str())
        .collect::<Vec<_>>()
        .join(",");
    vec![
        format!("NVIDIA_VISIBLE_DEVICES={list}"),
        format!("CUDA_VISIBLE_DEVICES={list}"),
    ]
}

/// Where a driver file goes in the container: libraries (anything with
/// `.so` in its name) under [`CONTAINER_LIB_DIR`], tools under
/// [`CONTAINER_BIN_DIR`], by their file name.
pub fn container_path_of(host: &Path) -> Option<PathBuf> {
    let name = host.file_name()?.to_str()?;
    let dir = if name.contains(".so") {
        CONTAINER_LIB_DIR
    } else {
        CONTAINER_BIN_DIR
    };
    Some(Path::new(dir).join(name))
}

/// The edits for `units` from the inventory alone.
pub fn own_edits(inventory: &Inventory, units: &[GpuDevice]) -> ContainerEdits {
    let mut edits = ContainerEdits::default();
    let mut seen = BTreeSet::new();
    let nodes = inventory
        .control_devices
        .iter()
        .chain(units.iter().flat_map(|u| u.devices.iter()));
    for d in nodes {
        if seen.insert(d.path.clone()) {
            edits.device_nodes.push(EditDevice {
                path: d.path.display().to_string(),
                host_path: Some(d.host_path.display().to_string()),
                ..Default::default()
            });
        }
    }
    let mut libs = false;
    let mut bins = false;
    for f in &inventory.driver_files {
        let Some(dest) = container_path_of(f) else {
            continue;
        };
        if dest.starts_with(CONTAINER_LIB_DIR) {
            libs = true;
        } else {
            bins = true;
        }
        edits.mounts.push(EditMount {
            host_path: f.display().to_string(),
            container_path: dest.display().to_string(),
            kind: Some("bind".into()),
            options: DRIVER_MOUNT_OPTIONS.iter().map(|s| s.to_string()).collect(),
        });
    }
    if bins {
        edits
            .search_paths
            .push(("PATH".into(), CONTAINER_BIN_DIR.into()));
    }
    if libs {
        edits
            .search_paths
            .push(("LD_LIBRARY_PATH".into(), CONTAINER_LIB_DIR.into()));
    }
    edits.env = visible_devices_env(units);
    edits
}

/// The CDI specs for NVIDIA GPUs in `dirs`, highest priority first (a
/// later directory wins, as the CDI spec says; files in name order).
fn nvidia_specs(dirs: &[PathBuf]) -> Vec<(PathBuf, CdiSpec)> {
    let mut out = Vec::new();
    for dir in dirs.iter().rev() {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                )
            })
            .collect();
        files.sort();
        for f in files {
            let Ok(text) = std::fs::read_to_string(&f) else {
                continue;
            };
            match serde_yaml_ng::from_str::<CdiSpec>(&text) {
                Ok(spec) if spec.kind == "nvidia.com/gpu" => out.push((f, spec)),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(file = %f.display(), error = %e, "ignoring an unreadable CDI spec")
                }
            }
        }
    }
    out
}

/// Whether a CDI device's nodes are exactly the unit's own.
fn same_nodes(d: &CdiDevice, u: &GpuDevice) -> bool {
    let mut theirs: Vec<&str> = d
        .container_edits
        .device_nodes
        .iter()
        .map(|n| n.path.as_str())
        .collect();
    let mut ours: Vec<&str> = u.devices.iter().filter_map(|n| n.path.to_str()).collect();
    theirs.sort_unstable();
    ours.sort_unstable();
    !ours.is_empty() && theirs == ours
}

/// The edits a CDI spec in `dirs` gives for `units`, when one describes
/// every one of them.
pub fn cdi_edits(dirs: &[PathBuf], units: &[GpuDevice]) -> Option<ContainerEdits> {
    if units.is_empty() {
        return None;
    }
    for (file, spec) in nvidia_specs(dirs) {
        let mut devices = Vec::with_capacity(units.len());
        for u in units {
            match u
                .cdi_names
                .iter()
                .enumerate()
                .find_map(|(i, n)| spec.devices.iter().find(|d| d.name == *n).map(|d| (i, d)))
            {
                // Named by its UUID, the entry is this unit's; named by its
                // index only if its device nodes are this unit's own (an
                // index names another GPU or MIG instance once the node was
                // re-partitioned and the spec not regenerated).
                Some((0, d)) => devices.push(d),
                Some((_, d)) if same_nodes(d, u) => devices.push(d),
                _ => break,
            }
        }
        if devices.len() != units.len() {
            tracing::warn!(
                file = %file.display(),
                "the CDI spec does not describe every GPU given to the container; using the inventory instead (regenerate it with nvidia-ctk cdi generate)"
            );
            continue;
        }
        let mut edits = spec.container_edits.clone();
        for d in devices {
            edits.extend(&d.container_edits);
        }
        edits.env.extend(visible_devices_env(units));
        tracing::debug!(file = %file.display(), "GPU edits from a CDI spec");
        return Some(edits);
    }
    None
}

fn device_type(kind: &str) -> Option<LinuxDeviceType> {
    Some(match kind {
        "c" | "u" => LinuxDeviceType::C,
        "b" => LinuxDeviceType::B,
        "p" => LinuxDeviceType::P,
        _ => return None,
    })
}

/// Type, major and minor of a device node: as the edit says, else read
/// from the host's node.
fn device_numbers(d: &EditDevice) -> Result<(LinuxDeviceType, i64, i64, u32), InjectError> {
    let err = |reason: String| InjectError::Device {
        path: d.path.clone(),
        reason,
    };
    let host = d.host_path.clone().unwrap_or_else(|| d.path.clone());
    let meta = std::fs::metadata(&host).ok();
    let from_host = |m: &std::fs::Metadata| -> Option<(LinuxDeviceType, i64, i64)> {
        let ft = m.file_type();
        let typ = if ft.is_char_device() {
            LinuxDeviceType::C
        } else if ft.is_block_device() {
            LinuxDeviceType::B
        } else {
            return None;
        };
        let rdev = m.rdev();
        Some((
            typ,
            i64::from(libc::major(rdev)),
            i64::from(libc::minor(rdev)),
        ))
    };
    let mode = d
        .file_mode
        .or_else(|| meta.as_ref().map(|m| m.mode() & 0o7777))
        .unwrap_or(0o666);
    match (d.kind.as_deref(), d.major, d.minor) {
        (Some(k), Some(major), Some(minor)) => {
            let typ = device_type(k).ok_or_else(|| err(format!("type {k:?} is not c, b or p")))?;
            Ok((typ, major, minor, mode))
        }
        _ => {
            let m = meta.ok_or_else(|| err(format!("{host} does not exist on this node")))?;
            let (typ, major, minor) =
                from_host(&m).ok_or_else(|| err(format!("{host} is not a device node")))?;
            Ok((typ, major, minor, mode))
        }
    }
}

fn hook(h: &EditHook) -> Result<Hook, InjectError> {
    let mut b = HookBuilder::default().path(&h.path);
    if !h.args.is_empty() {
        b = b.args(h.args.clone());
    }
    if !h.env.is_empty() {
        b = b.env(h.env.clone());
    }
    if let Some(t) = h.timeout {
        b = b.timeout(t);
    }
    Ok(b.build()?)
}

fn has_parent_dir(path: &str) -> bool {
    Path::new(path)
        .components()
        .any(|c| c == std::path::Component::ParentDir)
}

fn set_env(env: &mut Vec<String>, entry: &str) {
    let key = entry.split_once('=').map_or(entry, |(k, _)| k);
    env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
    env.push(entry.to_string());
}

fn add_search_path(env: &mut Vec<String>, var: &str, dir: &str) {
    let current = env
        .iter()
        .find_map(|e| e.strip_prefix(var).and_then(|r| r.strip_prefix('=')))
        .map(str::to_string);
    let value = match current {
        Some(v) if v.split(':').any(|d| d == dir) => return,
        Some(v) if !v.is_empty() => format!("{v}:{dir}"),
        _ => dir.to_string(),
    };
    set_env(env, &format!("{var}={value}"));
}

/// Merges `edits` into `spec`: device nodes with their cgroup rules,
/// mounts, environment, hooks and groups.
pub fn apply(spec: &mut Spec, edits: &ContainerEdits) -> Result<(), InjectError> {
    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut devices = linux.devices().clone().unwrap_or_default();
    let mut resources = linux.resources().clone().unwrap_or_default();
    let mut rules = resources.devices().clone().unwrap_or_default();
    for d in &edits.device_nodes {
        if !d.path.starts_with("/dev/") || has_parent_dir(&d.path) {
            return Err(InjectError::Device {
                path: d.path.clone(),
                reason: "must be a path under /dev (without ..)".into(),
            });
        }
        let (typ, major, minor, mode) = device_numbers(d)?;
        // A negative number is runc's wildcard: an allow rule for every
        // device of the type. Never from a GPU spec.
        if major < 0 || minor < 0 {
            return Err(InjectError::Device {
                path: d.path.clone(),
                reason: format!("major {major} and minor {minor} must not be negative"),
            });
        }
        let mut dev = LinuxDeviceBuilder::default()
            .path(&d.path)
            .typ(typ)
            .major(major)
            .minor(minor)
            .file_mode(mode)
            .uid(d.uid.unwrap_or(0))
            .gid(d.gid.unwrap_or(0));
        if typ == LinuxDeviceType::P {
            dev = dev.major(0).minor(0);
        }
        devices.retain(|x| x.path() != Path::new(&d.path));
        devices.push(dev.build()?);
        if typ != LinuxDeviceType::P {
            rules.push(
                LinuxDeviceCgroupBuilder::default()
                    .allow(true)
                    .typ(typ)
                    .major(major)
                    .minor(minor)
                    .access(d.permissions.clone().unwrap_or_else(|| "rwm".into()))
                    .build()?,
            );
        }
    }
    resources.set_devices(Some(rules));
    linux.set_resources(Some(resources));
    linux.set_devices(Some(devices));
    spec.set_linux(Some(linux));

    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for m in &edits.mounts {
        if !m.container_path.starts_with('/') || has_parent_dir(&m.container_path) {
            return Err(InjectError::Mount {
                path: m.container_path.clone(),
                reason: "the container path must be absolute, without ..".into(),
            });
        }
        if m.kind.as_deref().is_some_and(|k| k != "bind") {
            return Err(InjectError::Mount {
                path: m.container_path.clone(),
                reason: "only bind mounts of the driver's files are applied".into(),
            });
        }
        if !Path::new(&m.host_path).exists() {
            return Err(InjectError::Mount {
                path: m.host_path.clone(),
                reason: "does not exist on this node".into(),
            });
        }
        // Whatever the spec says, the driver's files are read-only, with
        // no device nodes or set-uid programs through them.
        let mut options: Vec<String> = m
            .options
            .iter()
            .filter(|o| !matches!(o.as_str(), "rw" | "suid" | "dev"))
            .cloned()
            .collect();
        for o in DRIVER_MOUNT_OPTIONS {
            if !options.iter().any(|x| x == o) {
                options.push(o.to_string());
            }
        }
        mounts.retain(|x| x.destination() != Path::new(&m.container_path));
        mounts.push(
            MountBuilder::default()
                .destination(&m.container_path)
                .source(&m.host_path)
                .typ("bind")
                .options(options)
                .build()?,
        );
    }
    spec.set_mounts(Some(mounts));

    if !edits.hooks.is_empty() {
        let mut hooks: Hooks = spec.hooks().clone().unwrap_or_default();
        for h in &edits.hooks {
            let built = hook(h)?;
            // `prestart` is deprecated in the runtime spec, but CDI specs
            // may still name it and runc still runs it.
            #[allow(deprecated)]
            let list = match h.hook_name.as_str() {
                "prestart" => hooks.prestart_mut(),
                "createRuntime" => hooks.create_runtime_mut(),
                "createContainer" => hooks.create_container_mut(),
                "startContainer" => hooks.start_container_mut(),
                "poststart" => hooks.poststart_mut(),
                "poststop" => hooks.poststop_mut(),
                other => {
                    return Err(InjectError::Hook {
                        path: h.path.clone(),
                        reason: format!("{other:?} is not a hook name"),
                    })
                }
            };
            list.get_or_insert_with(Vec::new).push(built);
        }
        spec.set_hooks(Some(hooks));
    }

    if let Some(mut process) = spec.process().clone() {
        let mut env = process.env().clone().unwrap_or_default();
        for e in &edits.env {
            set_env(&mut env, e);
        }
        for (var, dir) in &edits.search_paths {
            add_search_path(&mut env, var, dir);
        }
        process.set_env(Some(env));
        if !edits.additional_gids.is_empty() {
            let mut user = process.user().clone();
            let mut gids = user.additional_gids().clone().unwrap_or_default();
            for g in &edits.additional_gids {
                if !gids.contains(g) {
                    gids.push(*g);
                }
            }
            user.set_additional_gids(Some(gids));
            process.set_user(user);
        }
        spec.set_process(Some(process));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::DeviceNode;
    use skiff_model::Gpu;

    fn unit(uuid: &str, index: u32) -> GpuDevice {
        GpuDevice {
            gpu: Gpu {
                index,
                ..Gpu::new(uuid, "A100", 80 << 30)
            },
            devices: vec![DeviceNode::same(format!("/dev/nvidia{index}"))],
            cdi_names: vec![uuid.to_string(), index.to_string()],
        }
    }

    #[test]
    fn driver_files_go_under_usr_local_nvidia() {
        assert_eq!(
            container_path_of(Path::new("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1")),
            Some(PathBuf::from("/usr/local/nvidia/lib64/libnvidia-ml.so.1"))
        );
        assert_eq!(
            container_path_of(Path::new("/usr/bin/nvidia-smi")),
            Some(PathBuf::from("/usr/local/nvidia/bin/nvidia-smi"))
        );
    }

    #[test]
    fn own_edits_list_control_nodes_once_and_the_driver_read_only() {
        let inv = Inventory {
            control_devices: vec![DeviceNode::same("/dev/nvidiactl")],
            driver_files: vec![
                PathBuf::from("/usr/lib/libcuda.so.1"),
                PathBuf::from("/usr/bin/nvidia-smi"),
            ],
            ..Default::default()
        };
        let units = [unit("GPU-a", 0), unit("GPU-c", 2)];
        let e = own_edits(&inv, &units);
        let paths: Vec<&str> = e.device_nodes.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, ["/dev/nvidiactl", "/dev/nvidia0", "/dev/nvidia2"]);
        assert_eq!(
            e.env,
            [
                "NVIDIA_VISIBLE_DEVICES=GPU-a,GPU-c",
                "CUDA_VISIBLE_DEVICES=GPU-a,GPU-c"
            ]
        );
        assert!(e
            .mounts
            .iter()
            .all(|m| m.options.contains(&"ro".to_string())));
        assert_eq!(e.search_paths.len(), 2);
    }

    fn spec_with_env(env: &[&str]) -> Spec {
        let mut spec = Spec::default();
        let mut p = spec.process().clone().unwrap();
        p.set_env(Some(env.iter().map(|s| s.to_string()).collect()));
        spec.set_process(Some(p));
        spec
    }

    #[test]
    fn applying_edits_adds_devices_with_allow_rules_mounts_env_and_hooks() {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("libnvidia-ml.so.1");
        std::fs::write(&lib, b"x").unwrap();
        let edits = ContainerEdits {
            env: vec!["NVIDIA_VISIBLE_DEVICES=GPU-a".into()],
            device_nodes: vec![
                EditDevice {
                    path: "/dev/nvidia0".into(),
                    kind: Some("c".into()),
                    major: Some(195),
                    minor: Some(0),
                    ..Default::default()
                },
                // Numbers read from the host's node.
                EditDevice {
                    path: "/dev/nvidiactl".into(),
                    host_path: Some("/dev/null".into()),
                    ..Default::default()
                },
            ],
            mounts: vec![EditMount {
                host_path: lib.display().to_string(),
                container_path: "/usr/local/nvidia/lib64/libnvidia-ml.so.1".into(),
                kind: None,
                options: vec![],
            }],
            hooks: vec![EditHook {
                hook_name: "createContainer".into(),
                path: "/usr/bin/nvidia-cdi-hook".into(),
                args: vec!["nvidia-cdi-hook".into(), "update-ldcache".into()],
                ..Default::default()
            }],
            additional_gids: vec![44],
            search_paths: vec![("PATH".into(), CONTAINER_BIN_DIR.into())],
        };
        let mut spec = spec_with_env(&["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=all"]);
        apply(&mut spec, &edits).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let devs = linux.devices().as_ref().unwrap();
        assert_eq!(devs.len(), 2);
        assert_eq!((devs[0].major(), devs[0].minor()), (195, 0));
        assert_eq!((devs[1].major(), devs[1].minor()), (1, 3), "from /dev/null");
        let rules = linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .as_ref()
            .unwrap();
        assert!(rules
            .iter()
            .any(|r| r.allow() && r.major() == Some(195) && r.minor() == Some(0)));
        let mounts = spec.mounts().as_ref().unwrap();
        let m = mounts
            .iter()
            .find(|m| m.destination() == Path::new("/usr/local/nvidia/lib64/libnvidia-ml.so.1"))
            .unwrap();
        assert!(m.options().as_ref().unwrap().contains(&"ro".to_string()));
        let hooks = spec.hooks().as_ref().unwrap();
        assert_eq!(hooks.create_container().as_ref().unwrap().len(), 1);
        let p = spec.process().as_ref().unwrap();
        let env = p.env().as_ref().unwrap();
        assert!(env.contains(&"NVIDIA_VISIBLE_DEVICES=GPU-a".to_string()));
        assert!(!env.contains(&"NVIDIA_VISIBLE_DEVICES=all".to_string()));
        assert!(env.contains(&"PATH=/bin:/usr/local/nvidia/bin".to_string()));
        assert_eq!(p.user().additional_gids().as_ref().unwrap(), &[44]);
    }

    #[test]
    fn a_missing_device_or_mount_source_is_an_error_naming_it() {
        let mut spec = spec_with_env(&[]);
        let edits = ContainerEdits {
            device_nodes: vec![EditDevice {
                path: "/dev/nvidia9".into(),
                host_path: Some("/nonexistent/nvidia9".into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let err = apply(&mut spec, &edits).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/nvidia9 does not exist"), "{err}");
        let edits = ContainerEdits {
            device_nodes: vec![EditDevice {
                path: "/dev/nvidia9".into(),
                host_path: Some("/etc/hostname".into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let err = apply(&mut spec, &edits).unwrap_err().to_string();
        assert!(err.contains("is not a device node"), "{err}");
    }

    const CDI: &str = r#"
cdiVersion: 0.5.0
kind: nvidia.com/gpu
devices:
- name: "0"
  containerEdits:
    deviceNodes:
    - {path: /dev/nvidia0, type: c, major: 195, minor: 0}
- name: GPU-b
  containerEdits:
    deviceNodes:
    - {path: /dev/nvidia1, type: c, major: 195, minor: 1}
containerEdits:
  env: [NVIDIA_VISIBLE_DEVICES=void]
  deviceNodes:
  - {path: /dev/nvidiactl, type: c, major: 195, minor: 255}
  hooks:
  - {hookName: createContainer, path: /usr/bin/nvidia-cdi-hook, args: [nvidia-cdi-hook, update-ldcache]}
"#;

    #[test]
    fn a_cdi_spec_covering_every_gpu_is_used_by_uuid_or_index() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nvidia.yaml"), CDI).unwrap();
        std::fs::write(dir.path().join("other.yaml"), "kind: vendor.com/x\n").unwrap();
        let dirs = [dir.path().to_path_buf()];
        let e = cdi_edits(&dirs, &[unit("GPU-a", 0), unit("GPU-b", 1)]).unwrap();
        let paths: Vec<&str> = e.device_nodes.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, ["/dev/nvidiactl", "/dev/nvidia0", "/dev/nvidia1"]);
        assert_eq!(e.hooks.len(), 1);
        // Skiff's variables come last, so they win over the spec's `void`.
        assert_eq!(
            e.env.last().map(String::as_str),
            Some("CUDA_VISIBLE_DEVICES=GPU-a,GPU-b")
        );
        // A GPU the spec does not know: the inventory's edits are used.
        assert!(cdi_edits(&dirs, &[unit("GPU-z", 7)]).is_none());
        assert!(cdi_edits(&[], &[unit("GPU-a", 0)]).is_none());
        // Index 0 is now another device (re-partitioned, spec stale): its
        // entry names nodes that are not this unit's, so it is not used.
        let mut moved = unit("GPU-a", 0);
        moved.devices = vec![DeviceNode::same("/dev/nvidia3")];
        assert!(cdi_edits(&dirs, &[moved]).is_none());
    }

    #[test]
    fn cdi_edits_cannot_widen_device_access_or_write_the_driver() {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("libcuda.so.1");
        std::fs::write(&lib, b"x").unwrap();
        let wildcard = ContainerEdits {
            device_nodes: vec![EditDevice {
                path: "/dev/nvidia0".into(),
                kind: Some("c".into()),
                major: Some(-1),
                minor: Some(-1),
                ..Default::default()
            }],
            ..Default::default()
        };
        let err = apply(&mut spec_with_env(&[]), &wildcard)
            .unwrap_err()
            .to_string();
        assert!(err.contains("must not be negative"), "{err}");
        let escape = ContainerEdits {
            device_nodes: vec![EditDevice {
                path: "/dev/../etc/x".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let err = apply(&mut spec_with_env(&[]), &escape)
            .unwrap_err()
            .to_string();
        assert!(err.contains("without .."), "{err}");
        let writable = ContainerEdits {
            mounts: vec![EditMount {
                host_path: lib.display().to_string(),
                container_path: "/usr/lib/libcuda.so.1".into(),
                kind: Some("bind".into()),
                options: vec!["rw".into(), "bind".into()],
            }],
            ..Default::default()
        };
        let mut spec = spec_with_env(&[]);
        apply(&mut spec, &writable).unwrap();
        let m = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/usr/lib/libcuda.so.1"))
            .unwrap();
        let opts = m.options().as_ref().unwrap();
        assert!(!opts.contains(&"rw".to_string()), "{opts:?}");
        for o in ["ro", "nosuid", "nodev"] {
            assert!(opts.contains(&o.to_string()), "{opts:?}");
        }
    }
}
