//! Resources, GPUs (inventory, samples, links) and ports across the wire.

use skiff_model as m;
use skiff_model::FieldError;

use super::WireError;
use crate::pb;

// ---- resources -------------------------------------------------------------

impl From<m::Resources> for pb::Resources {
    fn from(r: m::Resources) -> Self {
        pb::Resources {
            cpu_millis: r.cpu_millis,
            memory_bytes: r.memory_bytes,
            gpus: r.gpus,
        }
    }
}

impl From<pb::Resources> for m::Resources {
    fn from(r: pb::Resources) -> Self {
        m::Resources::new(r.cpu_millis, r.memory_bytes).with_gpus(r.gpus)
    }
}

// ---- GPUs ------------------------------------------------------------------

impl From<&m::Gpu> for pb::Gpu {
    fn from(g: &m::Gpu) -> Self {
        pb::Gpu {
            uuid: g.uuid.clone(),
            model: g.model.clone(),
            memory_bytes: g.memory_bytes,
            healthy: g.healthy,
            health_reason: g.health_reason.clone(),
            index: g.index,
            compute_capability: g.compute_capability.clone(),
            pci_bus_id: g.pci_bus_id.clone(),
            pcie_generation: g.pcie_generation,
            pcie_width: g.pcie_width,
            power_limit_mw: g.power_limit_mw,
            max_sm_clock_mhz: g.max_sm_clock_mhz,
            max_memory_clock_mhz: g.max_memory_clock_mhz,
            numa_node: g.numa_node,
            mig_enabled: g.mig_enabled,
            mig_profile: g.mig_profile.clone(),
            parent: g.parent.clone(),
            nvlink_peers: g.nvlink_peers.clone(),
        }
    }
}

impl From<pb::Gpu> for m::Gpu {
    fn from(g: pb::Gpu) -> Self {
        m::Gpu {
            uuid: g.uuid,
            model: g.model,
            memory_bytes: g.memory_bytes,
            healthy: g.healthy,
            health_reason: g.health_reason,
            index: g.index,
            compute_capability: g.compute_capability,
            pci_bus_id: g.pci_bus_id,
            pcie_generation: g.pcie_generation,
            pcie_width: g.pcie_width,
            power_limit_mw: g.power_limit_mw,
            max_sm_clock_mhz: g.max_sm_clock_mhz,
            max_memory_clock_mhz: g.max_memory_clock_mhz,
            numa_node: g.numa_node,
            mig_enabled: g.mig_enabled,
            mig_profile: g.mig_profile,
            parent: g.parent,
            nvlink_peers: g.nvlink_peers,
        }
    }
}

impl From<&m::GpuMetrics> for pb::GpuMetrics {
    fn from(g: &m::GpuMetrics) -> Self {
        pb::GpuMetrics {
            uuid: g.uuid.clone(),
            utilization_pct: g.utilization_pct,
            memory_utilization_pct: g.memory_utilization_pct,
            memory_used_bytes: g.memory_used_bytes,
            temperature_c: g.temperature_c,
            power_mw: g.power_mw,
            ecc_corrected: g.ecc_corrected,
            ecc_uncorrected: g.ecc_uncorrected,
            throttle_reasons: g.throttle_reasons.clone(),
        }
    }
}

impl From<pb::GpuMetrics> for m::GpuMetrics {
    fn from(g: pb::GpuMetrics) -> Self {
        m::GpuMetrics {
            uuid: g.uuid,
            utilization_pct: g.utilization_pct,
            memory_utilization_pct: g.memory_utilization_pct,
            memory_used_bytes: g.memory_used_bytes,
            temperature_c: g.temperature_c,
            power_mw: g.power_mw,
            ecc_corrected: g.ecc_corrected,
            ecc_uncorrected: g.ecc_uncorrected,
            throttle_reasons: g.throttle_reasons,
        }
    }
}

impl From<&m::GpuLink> for pb::GpuLink {
    fn from(l: &m::GpuLink) -> Self {
        pb::GpuLink {
            a: l.a.clone(),
            b: l.b.clone(),
            level: match l.level {
                m::LinkLevel::NvLink => pb::LinkLevel::Nvlink,
                m::LinkLevel::PcieSwitch => pb::LinkLevel::PcieSwitch,
                m::LinkLevel::Numa => pb::LinkLevel::Numa,
                m::LinkLevel::System => pb::LinkLevel::System,
            } as i32,
        }
    }
}

/// A GPU link off the wire; an unknown level is an error naming `path`.
pub fn gpu_link_from_wire(l: pb::GpuLink, path: &str) -> Result<m::GpuLink, WireError> {
    let level = match pb::LinkLevel::try_from(l.level) {
        Ok(pb::LinkLevel::Nvlink) => m::LinkLevel::NvLink,
        Ok(pb::LinkLevel::PcieSwitch) => m::LinkLevel::PcieSwitch,
        Ok(pb::LinkLevel::Numa) => m::LinkLevel::Numa,
        Ok(pb::LinkLevel::System | pb::LinkLevel::Unspecified) => m::LinkLevel::System,
        Err(_) => {
            return Err(WireError::one(
                &format!("{path}.level"),
                format!("{} is not a link level", l.level),
            ))
        }
    };
    Ok(m::GpuLink {
        a: l.a,
        b: l.b,
        level,
    })
}

pub(super) fn ports_from_wire(
    ports: Vec<u32>,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> Vec<u16> {
    let mut out = Vec::with_capacity(ports.len());
    for (i, p) in ports.into_iter().enumerate() {
        match u16::try_from(p) {
            Ok(p) => out.push(p),
            Err(_) => errors.push(FieldError::new(
                format!("{path}[{i}]"),
                format!("{p} must be a port number from 1 to 65535"),
            )),
        }
    }
    out
}
