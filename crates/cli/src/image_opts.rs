//! The flags of `skiff server`, `agent` and `dev` about images: how
//! registries are reached, and when the agent's image cache is collected.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::args::{parse_duration, parse_log_size};

/// How registries are reached: agents pull with these, servers resolve
/// tags with them (give both the same).
#[derive(Args, Clone)]
pub(crate) struct RegistryOpts {
    /// A registry (HOST:PORT) spoken to over plain HTTP instead of HTTPS;
    /// repeat for several. Only for registries on a trusted network.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    insecure_registries: Vec<String>,
    /// A registry's own CA, trusted for that registry only:
    /// HOST:PORT=PEM_FILE; repeat for several.
    #[arg(long = "registry-ca", value_name = "HOST:PORT=PEM_FILE")]
    registry_cas: Vec<String>,
    /// Registry credentials in Docker's config.json format (`auths`);
    /// never logged nor stored in specs.
    #[arg(long = "registry-auth", value_name = "FILE")]
    registry_auth: Option<PathBuf>,
    /// A pull-through cache asked first for REGISTRY's images (the
    /// registry itself is asked last): REGISTRY=URL, e.g.
    /// docker.io=https://mirror.lab:5000; repeat for several (tried in
    /// order). An http:// mirror needs --insecure-registry too.
    #[arg(long = "registry-mirror", value_name = "REGISTRY=URL")]
    registry_mirrors: Vec<String>,
}

impl RegistryOpts {
    pub(crate) fn config(&self) -> skiff_registry::AccessConfig {
        skiff_registry::AccessConfig {
            insecure: self.insecure_registries.clone(),
            cas: self.registry_cas.clone(),
            auth_file: self.registry_auth.clone(),
            mirrors: self.registry_mirrors.clone(),
            offline: false,
        }
    }
}

/// When unused images leave the agent's cache (like the kubelet's image
/// garbage collection).
#[derive(Args)]
pub(crate) struct ImageGcOpts {
    /// Percent use of the image cache's filesystem that starts image
    /// garbage collection (least recently used first).
    #[arg(long, default_value_t = 85, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(1..=100))]
    image_gc_high: u8,
    /// Percent use image garbage collection brings it down to.
    #[arg(long, default_value_t = 80, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(0..=99))]
    image_gc_low: u8,
    /// A cap on the image cache (unpacked images and pulled blobs), e.g.
    /// 50Gi: passing it also starts garbage collection.
    #[arg(long, value_name = "SIZE", value_parser = parse_log_size)]
    image_cache_size: Option<u64>,
    /// Images used within this long are never collected.
    #[arg(long, default_value = "2m", value_parser = parse_duration, hide = true)]
    image_gc_min_age: Duration,
    /// How often the image cache is checked.
    #[arg(long, default_value = "1m", value_parser = parse_duration, hide = true)]
    image_gc_every: Duration,
}

impl ImageGcOpts {
    pub(crate) fn policy(&self) -> anyhow::Result<skiff_agent::image::gc::GcPolicy> {
        if self.image_gc_low >= self.image_gc_high {
            anyhow::bail!(
                "--image-gc-low {} must be below --image-gc-high {}",
                self.image_gc_low,
                self.image_gc_high
            );
        }
        Ok(skiff_agent::image::gc::GcPolicy {
            high: self.image_gc_high,
            low: self.image_gc_low,
            cap: self.image_cache_size,
            min_age: self.image_gc_min_age,
        })
    }

    pub(crate) fn every(&self) -> Duration {
        self.image_gc_every.max(Duration::from_millis(100))
    }
}
