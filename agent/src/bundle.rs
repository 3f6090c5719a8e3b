//! Builds a container's OCI runtime spec (`config.json`) from an
//! allocation and its image, with oci-spec's builders.
//!
//! oci-spec fills unset fields from its `Default`s, some of which are not
//! safe (inheritable and ambient capabilities, no device rules). Every
//! security-relevant field is therefore set here explicitly: capabilities
//! (Docker's default set, adjusted by the task's `cap_add`/`cap_drop`,
//! with empty inheritable and ambient sets), `noNewPrivileges`, the
//! default seccomp profile ([`crate::seccomp`]), masked and read-only
//! paths, a deny-all device rule with the standard allow list, resource
//! and pids limits, and the root filesystem's writability. No AppArmor or
//! SELinux label is set: the hosts Skiff targets run neither by default.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use oci_spec::runtime::{
    get_default_maskedpaths, get_default_mounts, get_default_readonly_paths, Capability,
    LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroup,
    LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxMemoryBuilder, LinuxNamespace,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount,
    MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec,
    SpecBuilder, UserBuilder,
};
use skiff_model::lifecycle::effective_capabilities;
use skiff_model::{Allocation, NetworkMode};

use crate::image::ImageConfig;

/// Most processes one container may run, unless the job says otherwise.
pub const DEFAULT_PIDS_LIMIT: i64 = 4096;
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("nothing to run: the job sets no command and the image has no entrypoint or cmd")]
    NoCommand,
    #[error("network: bridge, but no bridge network was set up for it")]
    NoNetwork,
    #[error("image user {user:?} is not in the image's /etc/passwd")]
    UnknownUser { user: String },
    #[error("task.security: {0:?} is not a capability this runtime knows")]
    UnknownCapability(String),
    #[error("working directory {dir:?} (from the {from}) {rule}")]
    Workdir {
        dir: String,
        from: &'static str,
        rule: &'static str,
    },
    #[error("building the runtime spec: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
    #[error(transparent)]
    Gpu(#[from] crate::gpu::inject::InjectError),
}

/// The paths hidden from a container: runc's defaults and the power
/// capping counters (`/sys/devices/virtual/powercap`, whose energy
/// readings leak what other tenants compute), as Docker hides them.
fn masked_paths() -> Vec<String> {
    let mut paths = get_default_maskedpaths();
    paths.push("/sys/devices/virtual/powercap".into());
    paths
}

/// What the spec is built from.
pub struct BundleInput<'a> {
    pub alloc: &'a Allocation,
    pub container_id: &'a str,
    pub image: &'a ImageConfig,
    /// The container's own rootfs (for resolving the image's user).
    pub rootfs: &'a Path,
    /// What the container needs for its GPUs, when it has any.
    pub gpu_edits: Option<&'a crate::gpu::ContainerEdits>,
    /// `network: bridge`: the namespace set up for it, and its address.
    pub network: Option<&'a crate::network::Attachment>,
    /// The node's address (host part), for published ports' `SKIFF_ADDR_*`.
    pub node_host: &'a str,
}

/// The program and arguments, the way Kubernetes combines them: `command`
/// replaces the image's entrypoint, `args` replaces its cmd.
pub fn resolve_args(
    command: &[String],
    args: &[String],
    image: &ImageConfig,
) -> Result<Vec<String>, BundleError> {
    let out: Vec<String> = match (command.is_empty(), args.is_empty()) {
        (false, _) => command.iter().chain(args).cloned().collect(),
        (true, false) => image.entrypoint.iter().chain(args).cloned().collect(),
        (true, true) => image.entrypoint.iter().chain(&image.cmd).cloned().collect(),
    };
    if out.is_empty() {
        return Err(BundleError::NoCommand);
    }
    Ok(out)
}

/// The environment: the image's, then the job's (which wins), then the
/// variables Skiff sets: the allocation's identity, and for a replica of a
/// gang its rank and rendezvous (`SKIFF_RANK`, `SKIFF_WORLD_SIZE`, and
/// PyTorch's `RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`).
pub fn resolve_env(alloc: &Allocation, image: &ImageConfig) -> Vec<String> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for kv in &image.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        env.insert(k.to_string(), v.to_string());
    }
    env.entry("PATH".into())
        .or_insert_with(|| DEFAULT_PATH.into());
    for (k, v) in &alloc.task.env {
        env.insert(k.clone(), v.clone());
    }
    env.insert("SKIFF_ALLOC_ID".into(), alloc.id.clone());
    let (namespace, job) = skiff_model::split_job_key(&alloc.job);
    env.insert("SKIFF_JOB".into(), job.to_string());
    env.insert("SKIFF_NAMESPACE".into(), namespace.to_string());
    env.insert("SKIFF_NODE".into(), alloc.node.clone());
    env.insert("SKIFF_REPLICA".into(), alloc.replica.to_string());
    if alloc.gpus.is_empty() {
        // CUDA images say `all`; with NVIDIA's runtime hook that would
        // hand every GPU to a container that was given none.
        env.insert("NVIDIA_VISIBLE_DEVICES".into(), "void".into());
    }
    if let Some(g) = &alloc.gang {
        for (k, v) in g.env() {
            env.insert(k.into(), v);
        }
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Resolves the image's `User` (`uid`, `uid:gid`, `name`, `name:group`)
/// against the rootfs's `/etc/passwd` and `/etc/group`.
pub fn resolve_user(user: Option<&str>, rootfs: &Path) -> Result<(u32, u32), BundleError> {
    let user = user.unwrap_or("").trim();
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let lookup_passwd = |name: &str| {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && f[0] == name).then(|| (f[2].parse().ok(), f[3].parse().ok()))
        })
    };
    let (uid, default_gid) = match u.parse::<u32>() {
        Ok(uid) => (uid, None),
        Err(_) => match lookup_passwd(u) {
            Some((Some(uid), gid)) => (uid, gid),
            _ => return Err(BundleError::UnknownUser { user: user.into() }),
        },
    };
    let gid = match g {
        None => default_gid.unwrap_or(0),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let group = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
                group
                    .lines()
                    .find_map(|l| {
                        let f: Vec<&str> = l.split(':').collect();
                        (f.len() >= 3 && f[0] == g)
                            .then(|| f[2].parse().ok())
                            .flatten()
                    })
                    .ok_or_else(|| BundleError::UnknownUser { user: user.into() })?
            }
        },
    };
    Ok((uid, gid))
}

fn namespace(typ: LinuxNamespaceType) -> Result<LinuxNamespace, BundleError> {
    Ok(LinuxNamespaceBuilder::default().typ(typ).build()?)
}

fn device_rule(
    allow: bool,
    typ: LinuxDeviceType,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> Result<LinuxDeviceCgroup, BundleError> {
    let mut b = LinuxDeviceCgroupBuilder::default()
        .allow(allow)
        .typ(typ)
        .access(access);
    if let Some(m) = major {
        b = b.major(m);
    }
    if let Some(m) = minor {
        b = b.minor(m);
    }
    Ok(b.build()?)
}

/// Deny every device, then allow the ones every container needs.
fn device_rules() -> Result<Vec<LinuxDeviceCgroup>, BundleError> {
    use LinuxDeviceType::C;
    Ok(vec![
        device_rule(false, LinuxDeviceType::A, None, None, "rwm")?,
        device_rule(true, C, Some(1), Some(3), "rwm")?, // null
        device_rule(true, C, Some(1), Some(5), "rwm")?, // zero
        device_rule(true, C, Some(1), Some(7), "rwm")?, // full
        device_rule(true, C, Some(1), Some(8), "rwm")?, // random
        device_rule(true, C, Some(1), Some(9), "rwm")?, // urandom
        device_rule(true, C, Some(5), Some(0), "rwm")?, // tty
        device_rule(true, C, Some(5), Some(2), "rwm")?, // ptmx
        device_rule(true, C, Some(136), None, "rwm")?,  // pts
    ])
}

fn bind_ro(source: &str, dest: &str) -> Result<Mount, BundleError> {
    Ok(MountBuilder::default()
        .destination(dest)
        .typ("bind")
        .source(source)
        .options(vec![
            "rbind".to_string(),
            "ro".to_string(),
            "nosuid".to_string(),
            "nodev".to_string(),
        ])
        .build()?)
}

/// A container's runtime spec, its seccomp profile kept beside it: the
/// profile is shared by the node's containers and its JSON made once
/// ([`crate::seccomp::Profile`]), so a start neither copies nor
/// serialises its hundreds of syscall names.
#[derive(Debug)]
pub struct BuiltSpec {
    /// Everything but `linux.seccomp`.
    pub spec: Spec,
    pub seccomp: Arc<crate::seccomp::Profile>,
}

impl BuiltSpec {
    /// `config.json`: the spec's JSON with the profile's put into `linux`.
    pub fn to_json(&self) -> Result<Vec<u8>, BundleError> {
        let json = serde_json::to_vec(&self.spec).map_err(oci_spec::OciSpecError::from)?;
        // The only object under the key "linux" is the spec's own (inside
        // a string, the quotes of such a key would be escaped).
        const KEY: &[u8] = br#""linux":{"#;
        let at = json
            .windows(KEY.len())
            .position(|w| w == KEY)
            .map(|i| i + KEY.len())
            .ok_or_else(|| oci_spec::OciSpecError::Other("the spec has no linux section".into()))?;
        let mut out = Vec::with_capacity(json.len() + self.seccomp.json.len() + 12);
        out.extend_from_slice(&json[..at]);
        out.extend_from_slice(br#""seccomp":"#);
        out.extend_from_slice(&self.seccomp.json);
        if json.get(at) != Some(&b'}') {
            out.push(b',');
        }
        out.extend_from_slice(&json[at..]);
        Ok(out)
    }
}

/// Builds the runtime spec for one allocation.
pub fn build_spec(input: &BundleInput<'_>) -> Result<BuiltSpec, BundleError> {
    let alloc = input.alloc;
    let task = &alloc.task;
    let args = resolve_args(&task.command, &task.args, input.image)?;
    let (uid, gid) = match task.security.user {
        Some(u) => (u.uid, u.gid),
        None => resolve_user(input.image.user.as_deref(), input.rootfs)?,
    };
    let (cwd, from) = match (&task.workdir, &input.image.workdir) {
        (Some(dir), _) => (dir.clone(), "task"),
        (None, Some(dir)) if dir.starts_with('/') => (dir.clone(), "image config"),
        _ => ("/".to_string(), "default"),
    };
    // Checked again here: an image's config is not checked anywhere else.
    skiff_model::lifecycle::check_workdir(&cwd).map_err(|rule| BundleError::Workdir {
        dir: cwd.clone(),
        from,
        rule,
    })?;

    let cap_names = effective_capabilities(&task.security);
    let caps: HashSet<Capability> = cap_names
        .iter()
        .map(|c| {
            c.parse::<Capability>()
                .map_err(|_| BundleError::UnknownCapability(c.clone()))
        })
        .collect::<Result<_, _>>()?;
    // As many open files as Docker gives, but never above what the agent
    // itself may raise to (runc fails otherwise).
    let nofile = crate::sys::nofile_hard_limit().min(1 << 20);
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(UserBuilder::default().uid(uid).gid(gid).build()?)
        .args(args)
        .env({
            let mut env = resolve_env(alloc, input.image);
            let ip = input.network.and_then(|n| n.address.as_deref());
            if let Some(ip) = ip {
                env.push(format!("SKIFF_IP={ip}"));
            }
            for (k, v) in alloc.port_env(input.node_host, ip) {
                env.push(format!("{k}={v}"));
            }
            env
        })
        .cwd(cwd)
        .no_new_privileges(true)
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps)
                .inheritable(HashSet::new())
                .ambient(HashSet::new())
                .build()?,
        )
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .hard(nofile)
            .soft(nofile)
            .build()?])
        .build()?;

    let r = &task.resources;
    let memory = r.memory_bytes.min(i64::MAX as u64) as i64;
    let resources = LinuxResourcesBuilder::default()
        .devices(device_rules()?)
        .memory(
            LinuxMemoryBuilder::default()
                .limit(memory)
                .swap(memory)
                .build()?,
        )
        .cpu(
            LinuxCpuBuilder::default()
                .shares((r.cpu_millis * 1024 / 1000).max(2))
                .quota((r.cpu_millis * 100).min(i64::MAX as u64) as i64)
                .period(100_000u64)
                .build()?,
        )
        .pids(
            LinuxPidsBuilder::default()
                .limit(task.pids_limit.map_or(DEFAULT_PIDS_LIMIT, i64::from))
                .build()?,
        )
        .build()?;

    let mut namespaces = vec![
        namespace(LinuxNamespaceType::Pid)?,
        namespace(LinuxNamespaceType::Ipc)?,
        namespace(LinuxNamespaceType::Uts)?,
        namespace(LinuxNamespaceType::Mount)?,
        namespace(LinuxNamespaceType::Cgroup)?,
    ];
    let mut mounts = get_default_mounts();
    // /proc as Docker mounts it: nothing set-user-id, executable or a
    // device node is reached through it.
    for m in mounts
        .iter_mut()
        .filter(|m| m.destination() == Path::new("/proc"))
    {
        m.set_options(Some(vec!["nosuid".into(), "noexec".into(), "nodev".into()]));
    }
    match task.network {
        NetworkMode::None => namespaces.push(namespace(LinuxNamespaceType::Network)?),
        NetworkMode::Bridge => {
            let attached = input.network.ok_or(BundleError::NoNetwork)?;
            namespaces.push(
                LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::Network)
                    .path(attached.netns.clone())
                    .build()?,
            );
            // The node's DNS (cluster names, then the host's resolvers);
            // without it, names resolve as on the host.
            match &attached.resolv_conf {
                Some(own) => mounts.push(bind_ro(&own.to_string_lossy(), "/etc/resolv.conf")?),
                None if Path::new("/etc/resolv.conf").is_file() => {
                    mounts.push(bind_ro("/etc/resolv.conf", "/etc/resolv.conf")?);
                }
                None => {}
            }
        }
        NetworkMode::Host => {
            // Sharing the host's network means sharing how it resolves names.
            for f in ["/etc/resolv.conf", "/etc/hosts"] {
                if Path::new(f).is_file() {
                    mounts.push(bind_ro(f, f)?);
                }
            }
        }
    }
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources)
        .cgroups_path(format!("/skiff/{}", input.container_id))
        .masked_paths(masked_paths())
        .readonly_paths(get_default_readonly_paths())
        .build()?;
    let seccomp = crate::seccomp::profile(&cap_names)?;

    let mut hostname = format!(
        "{}-{}",
        skiff_model::split_job_key(&alloc.job).1,
        alloc.replica
    );
    hostname.truncate(63);
    let annotations: HashMap<String, String> = [
        ("io.skiff.alloc-id".to_string(), alloc.id.clone()),
        ("io.skiff.job".to_string(), alloc.job.clone()),
    ]
    .into();
    let mut spec = SpecBuilder::default()
        .version("1.0.2")
        .hostname(hostname)
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(task.security.read_only_rootfs)
                .build()?,
        )
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .annotations(annotations)
        .build()?;
    if let Some(edits) = input.gpu_edits {
        crate::gpu::inject::apply(&mut spec, edits)?;
    }
    Ok(BuiltSpec { spec, seccomp })
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_model::JobSpec;

    fn alloc(yaml_task: &str) -> Allocation {
        let spec = JobSpec::from_yaml(&format!("name: web\ntask: {yaml_task}")).unwrap();
        Allocation {
            create_index: 1,
            modify_index: 1,
            ..Allocation::new(
                "0123456789abcdef0123456789abcdef",
                "web",
                1,
                2,
                "n1",
                spec.task,
            )
        }
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["serve".into()],
            env: vec!["PATH=/bin".into(), "GREETING=image".into()],
            workdir: Some("/srv".into()),
            user: None,
        }
    }

    /// The spec of `a` with no network and no GPUs.
    fn plain(a: &Allocation, image: &ImageConfig, rootfs: &Path) -> Result<BuiltSpec, BundleError> {
        build_spec(&BundleInput {
            alloc: a,
            container_id: "sk-1",
            image,
            rootfs,
            gpu_edits: None,
            network: None,
            node_host: "127.0.0.1",
        })
    }

    /// The spec as `config.json` holds it.
    fn written(built: &BuiltSpec) -> Spec {
        serde_json::from_slice(&built.to_json().unwrap()).unwrap()
    }

    fn spec_for(a: &Allocation) -> Spec {
        let dir = tempfile::tempdir().unwrap();
        // A bridged task (the default) joins the namespace set up for it.
        let attached = crate::network::Attachment {
            netns: "/data/network/netns/x".into(),
            address: Some("10.88.0.9".into()),
            resolv_conf: None,
            publish: None,
        };
        build_spec(&BundleInput {
            alloc: a,
            container_id: "sk-1",
            image: &image(),
            rootfs: dir.path(),
            gpu_edits: None,
            network: (a.task.network == skiff_model::NetworkMode::Bridge).then_some(&attached),
            node_host: "127.0.0.1",
        })
        .map(|b| written(&b))
        .unwrap()
    }

    #[test]
    fn config_json_is_the_spec_with_the_shared_profile_in_its_linux_section() {
        let a = alloc(r#"{image: 'oci:/i', network: none, env: {X: '"linux":{'}}"#);
        let dir = tempfile::tempdir().unwrap();
        let built = plain(&a, &image(), dir.path()).unwrap();
        let mut whole = built.spec.clone();
        let mut linux = whole.linux().clone().unwrap();
        linux.set_seccomp(Some(built.seccomp.oci.clone()));
        whole.set_linux(Some(linux));
        assert_eq!(written(&built), whole);
        let env = whole.process().as_ref().unwrap().env().clone().unwrap();
        assert!(env.contains(&r#"X="linux":{"#.to_string()), "{env:?}");
    }

    #[test]
    fn a_bridged_container_joins_the_namespace_set_up_for_it() {
        let a = alloc("{image: 'oci:/i', network: bridge}");
        let dir = tempfile::tempdir().unwrap();
        let img = image();
        let input = |network| BundleInput {
            alloc: &a,
            container_id: "sk-1",
            image: &img,
            rootfs: dir.path(),
            gpu_edits: None,
            network,
            node_host: "127.0.0.1",
        };
        assert!(matches!(
            build_spec(&input(None)),
            Err(BundleError::NoNetwork)
        ));
        let attached = crate::network::Attachment {
            netns: "/data/network/netns/x".into(),
            address: Some("10.88.0.9".into()),
            resolv_conf: Some("/data/network/resolv/x.conf".into()),
            publish: None,
        };
        let spec = build_spec(&input(Some(&attached))).unwrap().spec;
        // It resolves names with the node's DNS.
        let resolv = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/etc/resolv.conf"))
            .unwrap()
            .clone();
        assert_eq!(
            resolv.source().as_deref(),
            Some(Path::new("/data/network/resolv/x.conf"))
        );
        let net = spec
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .find(|n| n.typ() == LinuxNamespaceType::Network)
            .cloned()
            .unwrap();
        assert_eq!(
            net.path().as_deref(),
            Some(Path::new("/data/network/netns/x"))
        );
        let env = spec.process().as_ref().unwrap().env().clone().unwrap();
        assert!(env.contains(&"SKIFF_IP=10.88.0.9".to_string()), "{env:?}");
    }

    #[test]
    fn a_working_directory_under_proc_is_refused_from_the_spec_and_the_image() {
        // From a spec: refused when the spec is read (the API), and again
        // here for a task that reached the agent some other way.
        let err =
            JobSpec::from_yaml("name: web\ntask: {image: 'oci:/i', workdir: /proc/self/fd/7}")
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("task.workdir: \"/proc/self/fd/7\" must not be under /proc"),
            "{err}"
        );
        let mut a = alloc("{image: 'oci:/i'}");
        a.task.workdir = Some("/proc/self/fd/7".into());
        let dir = tempfile::tempdir().unwrap();
        let built = plain(&a, &image(), dir.path());
        assert!(matches!(
            built,
            Err(BundleError::Workdir { from: "task", .. })
        ));
        // From an image's config, which nothing else checks.
        let a = alloc("{image: 'oci:/i'}");
        for bad in ["/proc/self/fd/7", "/srv/../proc/1/cwd", "//proc/./self/cwd"] {
            let img = ImageConfig {
                workdir: Some(bad.into()),
                ..image()
            };
            let built = plain(&a, &img, dir.path());
            match built {
                Err(
                    e @ BundleError::Workdir {
                        from: "image config",
                        ..
                    },
                ) => {
                    assert!(e.to_string().contains(bad), "{e}")
                }
                other => panic!("{bad}: {:?}", other.map(|_| ())),
            }
        }
    }

    #[test]
    fn proc_is_mounted_nosuid_noexec_nodev_and_powercap_is_masked() {
        let spec = spec_for(&alloc("{image: 'oci:/i'}"));
        let proc_mount = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/proc"))
            .expect("a /proc mount");
        let opts = proc_mount.options().clone().unwrap_or_default();
        for o in ["nosuid", "noexec", "nodev"] {
            assert!(opts.iter().any(|x| x == o), "{o} in {opts:?}");
        }
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux
            .masked_paths()
            .as_ref()
            .unwrap()
            .iter()
            .any(|p| p == "/sys/devices/virtual/powercap"));
    }

    #[test]
    fn command_and_args_combine_like_kubernetes() {
        let img = image();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            resolve_args(&[], &[], &img).unwrap(),
            s(&["/entry", "serve"])
        );
        assert_eq!(
            resolve_args(&[], &s(&["x"]), &img).unwrap(),
            s(&["/entry", "x"])
        );
        assert_eq!(
            resolve_args(&s(&["sh"]), &s(&["-c", "true"]), &img).unwrap(),
            s(&["sh", "-c", "true"])
        );
        assert!(matches!(
            resolve_args(&[], &[], &ImageConfig::default()),
            Err(BundleError::NoCommand)
        ));
    }

    #[test]
    fn the_job_env_wins_and_skiff_variables_are_set() {
        let a = alloc("{image: 'oci:/i', env: {GREETING: job}}");
        let env = resolve_env(&a, &image());
        assert!(env.contains(&"GREETING=job".to_string()));
        assert!(env.contains(&"PATH=/bin".to_string()));
        assert!(env.contains(&format!("SKIFF_ALLOC_ID={}", a.id)));
        assert!(env.contains(&"SKIFF_JOB=web".to_string()));
        assert!(env.contains(&"SKIFF_NODE=n1".to_string()));
        assert!(!env.iter().any(|e| e.starts_with("RANK=")), "not a gang");
        assert!(
            env.contains(&"NVIDIA_VISIBLE_DEVICES=void".to_string()),
            "no GPUs: none through NVIDIA's runtime either"
        );
    }

    #[test]
    fn a_gang_replica_gets_its_rank_and_the_rendezvous_of_rank_zero() {
        let mut a = alloc("{image: 'oci:/i', env: {RANK: mine}}");
        a.gang = Some(skiff_model::GangRank {
            rank: 2,
            world_size: 3,
            master_addr: "10.0.0.7".into(),
            master_port: 29500,
        });
        let env = resolve_env(&a, &image());
        for want in [
            "SKIFF_RANK=2",
            "SKIFF_WORLD_SIZE=3",
            "RANK=2",
            "WORLD_SIZE=3",
            "MASTER_ADDR=10.0.0.7",
            "MASTER_PORT=29500",
        ] {
            assert!(env.contains(&want.to_string()), "{want} missing in {env:?}");
        }
    }

    #[test]
    fn limits_and_lockdown_are_in_the_spec() {
        let a = alloc("{image: 'oci:/i', resources: {cpu: 250m, memory: 64Mi}}");
        let spec = spec_for(&a);
        let linux = spec.linux().as_ref().unwrap();
        let res = linux.resources().as_ref().unwrap();
        assert_eq!(res.memory().as_ref().unwrap().limit(), Some(64 << 20));
        assert_eq!(res.cpu().as_ref().unwrap().quota(), Some(25_000));
        assert_eq!(res.cpu().as_ref().unwrap().period(), Some(100_000));
        assert_eq!(res.pids().as_ref().unwrap().limit(), DEFAULT_PIDS_LIMIT);
        let devices = res.devices().as_ref().unwrap();
        assert!(!devices[0].allow(), "first rule denies every device");
        assert!(linux.seccomp().is_some(), "a seccomp profile is always set");
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(false));
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.no_new_privileges(), Some(true));
        let caps = process.capabilities().as_ref().unwrap();
        assert_eq!(caps.inheritable().as_ref().unwrap().len(), 0);
        assert_eq!(caps.ambient().as_ref().unwrap().len(), 0);
        assert!(!caps
            .bounding()
            .as_ref()
            .unwrap()
            .contains(&Capability::SysAdmin));
        assert_eq!(process.cwd(), "/srv");
        assert_eq!(
            linux.cgroups_path().as_ref().unwrap().to_str(),
            Some("/skiff/sk-1")
        );
        assert!(linux.masked_paths().as_ref().is_some_and(|m| !m.is_empty()));
    }

    #[test]
    fn security_options_change_user_capabilities_rootfs_and_pids() {
        let a = alloc(
            "{image: 'oci:/i', pids_limit: 64, security: {read_only_rootfs: true, user: '1000:50', cap_add: [SYS_TIME], cap_drop: [NET_RAW]}}",
        );
        let spec = spec_for(&a);
        let process = spec.process().as_ref().unwrap();
        assert_eq!((process.user().uid(), process.user().gid()), (1000, 50));
        let bounding = process
            .capabilities()
            .as_ref()
            .unwrap()
            .bounding()
            .clone()
            .unwrap();
        assert!(bounding.contains(&Capability::SysTime));
        assert!(!bounding.contains(&Capability::NetRaw));
        assert!(bounding.contains(&Capability::Chown));
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
        let linux = spec.linux().as_ref().unwrap();
        let pids = linux.resources().as_ref().unwrap().pids().as_ref().unwrap();
        assert_eq!(pids.limit(), 64);
        // The seccomp profile follows the capabilities.
        let seccomp = linux.seccomp().as_ref().unwrap();
        let allows = |call: &str| {
            seccomp.syscalls().as_ref().unwrap().iter().any(|s| {
                s.action() == oci_spec::runtime::LinuxSeccompAction::ScmpActAllow
                    && s.names().iter().any(|n| n == call)
            })
        };
        assert!(allows("settimeofday"));
        assert!(!allows("mount"));
    }

    #[test]
    fn network_none_gets_its_own_namespace_and_host_does_not() {
        let has_net = |a: &Allocation| {
            spec_for(a)
                .linux()
                .as_ref()
                .unwrap()
                .namespaces()
                .as_ref()
                .unwrap()
                .iter()
                .any(|n| n.typ() == LinuxNamespaceType::Network)
        };
        assert!(has_net(&alloc("{image: 'oci:/i', network: none}")));
        assert!(!has_net(&alloc("{image: 'oci:/i', network: host}")));
    }

    #[test]
    fn image_users_resolve_through_the_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nweb:x:1000:1001::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        assert_eq!(resolve_user(None, dir.path()).unwrap(), (0, 0));
        assert_eq!(resolve_user(Some("web"), dir.path()).unwrap(), (1000, 1001));
        assert_eq!(
            resolve_user(Some("web:staff"), dir.path()).unwrap(),
            (1000, 50)
        );
        assert_eq!(resolve_user(Some("7:8"), dir.path()).unwrap(), (7, 8));
        assert!(matches!(
            resolve_user(Some("ghost"), dir.path()),
            Err(BundleError::UnknownUser { .. })
        ));
    }
}
