//! The start pipeline of one run: image -> root filesystem -> bundle
//! (the runtime spec) -> shim. Each step's error becomes the message the
//! servers see for a container that failed to start.

use std::time::Instant;

use skiff_model::Allocation;

use super::event::Settings;
use crate::bundle::{build_spec, BundleInput};
use crate::image::ImageStore;
use crate::paths::{container_id, Paths};
use crate::rootfs;
use crate::runtime::Runtime;
use crate::shim::ShimArgs;

/// Prepares the image, writes the bundle and starts the container.
/// Answers the digest pulled when the task names a registry image by tag
/// only (the servers pin the version to it), and the container's address
/// on the bridge.
pub async fn start<R: Runtime>(
    runtime: &R,
    paths: &Paths,
    images: &ImageStore,
    settings: &Settings,
    alloc: &Allocation,
) -> Result<super::event::StartedRun, String> {
    let t0 = Instant::now();
    let deadline = settings.image_timeout;
    let (prepared, pulled) = tokio::time::timeout(deadline, prepare_image(images, settings, alloc))
        .await
        .map_err(|_| {
            format!(
                "image {}: not prepared within {:?} (the agent's --image-timeout)",
                alloc.task.image, deadline
            )
        })??;

    let bundle = paths.bundle(&alloc.id).map_err(|e| e.to_string())?;
    let rootfs = bundle.join("rootfs");
    let (src, b, mode) = (prepared.rootfs.clone(), bundle.clone(), settings.rootfs);
    let p = paths.clone();
    let kind = tokio::task::spawn_blocking(move || {
        rootfs::release(&p, &b)
            .map_err(|e| format!("removing the old bundle {}: {e}", b.display()))?;
        p.create_dir_all(&b)
            .map_err(|e| format!("creating {}: {e}", b.display()))?;
        rootfs::prepare(&src, &b, mode).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| format!("rootfs preparation panicked: {e}"))??;
    let t_rootfs = Instant::now();

    let cid = container_id(&alloc.id);
    // Exactly the GPUs the servers gave it: their device nodes, the
    // driver's files and the variables that name them.
    let gpu_edits = if alloc.gpus.is_empty() {
        None
    } else {
        let node = settings
            .gpus
            .as_ref()
            .ok_or_else(|| "this node has no GPUs".to_string())?;
        Some(node.edits_for(&alloc.gpus)?)
    };
    // Its own namespace on the node's bridge (torn down by the cleanup
    // of this run).
    let network = match alloc.task.network {
        skiff_model::NetworkMode::Bridge => {
            let net = settings.network.as_ref().ok_or_else(|| {
                "network: bridge, but this agent has no bridge network".to_string()
            })?;
            // Published ports: host port to container port (a plain
            // `resources.ports` entry to the same port inside, TCP).
            use crate::network::Mapping;
            let published: Vec<Mapping> = alloc
                .task
                .resources
                .ports
                .iter()
                .map(|&p| Mapping {
                    host: p,
                    container: p,
                    protocol: skiff_model::ports::Protocol::Tcp,
                })
                .chain(alloc.published().iter().filter_map(|p| {
                    Some(Mapping {
                        host: p.host?,
                        container: p.container,
                        protocol: p.protocol,
                    })
                }))
                .collect();
            Some(
                net.setup(
                    &alloc.id,
                    skiff_model::split_job_key(&alloc.job).0,
                    &published,
                )
                .await
                .map_err(|e| format!("network: {e}"))?,
            )
        }
        _ => None,
    };
    let t_network = Instant::now();
    let built = build_spec(&BundleInput {
        alloc,
        container_id: &cid,
        image: &prepared.config,
        rootfs: &rootfs,
        gpu_edits: gpu_edits.as_ref(),
        network: network.as_ref(),
        node_host: &settings.node_host,
    })
    .map_err(|e| e.to_string())?;
    let cgroup = built
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().clone())
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    // 0600: it holds the environment's values.
    let json = built
        .to_json()
        .map_err(|e| format!("writing config.json: {e}"))?;
    crate::shim::write_private(&bundle.join("config.json"), &json)
        .map_err(|e| format!("writing config.json: {e}"))?;

    let log_dir = paths.log_dir(&alloc.id).map_err(|e| e.to_string())?;
    paths
        .create_dir_all(&log_dir)
        .map_err(|e| format!("creating {}: {e}", log_dir.display()))?;
    let state_dir = paths.state_dir(&alloc.id).map_err(|e| e.to_string())?;
    paths
        .remove_dir_all(&state_dir)
        .map_err(|e| format!("removing {}: {e}", state_dir.display()))?;
    let t_spec = Instant::now();
    let args = ShimArgs {
        id: cid,
        bundle,
        state_dir,
        runtime: settings.runtime_binary.clone(),
        runtime_root: paths.runtime_root(),
        log_dir,
        log_max_size: settings.log_max_size,
        log_max_files: settings.log_max_files,
        cgroup,
    };
    // Published ports are forwarded while the container starts (portmap
    // touches only the node's rules); the start counts once both are done.
    let publish = async {
        match (
            &settings.network,
            network.as_ref().and_then(|n| n.publish.as_ref()),
        ) {
            (Some(net), Some(p)) => net
                .publish(p)
                .await
                .map_err(|e| format!("network: publishing ports: {e}")),
            _ => Ok(()),
        }
    };
    let (started, published) = tokio::join!(runtime.start(&args), publish);
    let result = match (started, published) {
        (Ok(()), Ok(())) => Ok(super::event::StartedRun {
            pulled,
            address: network.and_then(|n| n.address),
        }),
        (Err(e), _) => Err(e.to_string()),
        // The container runs unreachable: this start failed, and its
        // cleanup removes both.
        (Ok(()), Err(e)) => Err(e),
    };
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1000.0;
    let done = Instant::now();
    tracing::debug!(
        alloc = %alloc.id,
        ?kind,
        image_and_rootfs_ms = ms(t0, t_rootfs),
        network_ms = ms(t_rootfs, t_network),
        spec_ms = ms(t_network, t_spec),
        shim_ms = ms(t_spec, done),
        "start phases"
    );
    result
}

/// The image's root filesystem, unpacked in the node's cache: a layout is
/// checked against the image roots at the moment of use and read from
/// where the check found it (links resolved, so a link swapped in later is
/// not followed out of a root); a registry image is pulled into the
/// node's content store first.
async fn prepare_image(
    images: &ImageStore,
    settings: &Settings,
    alloc: &Allocation,
) -> Result<(crate::image::PreparedImage, Option<String>), String> {
    let unpinned = alloc
        .task
        .image
        .registry
        .as_ref()
        .is_some_and(|r| r.digest.is_none());
    let mut image_ref = alloc.task.image.clone();
    let images = images.clone();
    let shown = alloc.task.image.to_string();
    // Each start is a use of the image, for the image garbage collector.
    let cache = crate::image::gc::ImageCache::new(images.root());
    let reference = shown.clone();
    let record = move |manifest: &str, tree: &std::path::Path, top: &str, blobs| {
        if let Err(e) = cache.record_use(&reference, top, manifest, blobs, tree) {
            tracing::warn!(image = %reference, error = %e, "could not record the image's use");
        }
    };
    let mut pulled = None;
    let unpacked = if let Some(reference) = image_ref.registry.clone() {
        let puller = settings.registry.clone();
        let asker = settings
            .images
            .asker(skiff_model::split_job_key(&alloc.job).0);
        let top = puller
            .pull(&reference, alloc.task.pull, &asker)
            .await
            .map_err(|e| e.to_string())?;
        if unpinned {
            pulled = Some(top.digest().to_string());
        }
        tokio::task::spawn_blocking(move || {
            let blobs = puller.blobs_of(&top);
            // Recorded before unpacking (no tree yet), so the collector
            // never takes its blobs for unreferenced ones.
            let manifest = match blobs.get(1) {
                Some(m) if crate::image::registry::is_index(top.media_type()) => m.clone(),
                _ => top.digest().to_string(),
            };
            let top_digest = top.digest().to_string();
            let no_tree_yet = images.root().join("rootfs").join(".not-yet");
            record(&manifest, &no_tree_yet, &top_digest, blobs.clone());
            let prepared = images.unpack(&puller.source()?, &top)?;
            record(
                &prepared.manifest_digest,
                &prepared.rootfs,
                &top_digest,
                blobs,
            );
            Ok::<_, crate::image::ImageError>(prepared)
        })
        .await
    } else {
        let ns = skiff_model::split_job_key(&alloc.job).0;
        let real = settings
            .images
            .check(std::path::Path::new(&image_ref.path), ns)?;
        image_ref.path = real.display().to_string();
        tokio::task::spawn_blocking(move || {
            let prepared = images.prepare(&image_ref)?;
            let m = &prepared.manifest_digest;
            record(m, &prepared.rootfs, m, Vec::new());
            Ok::<_, crate::image::ImageError>(prepared)
        })
        .await
    };
    let prepared = unpacked
        .map_err(|e| format!("image preparation panicked: {e}"))?
        .map_err(|e| format!("image {shown}: {e}"))?;
    Ok((prepared, pulled))
}
