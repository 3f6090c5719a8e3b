//! GPU series under NVIDIA DCGM exporter's names, types, units and labels
//! (`gpu`, `UUID`, `device`, `modelName`, `Hostname`, `pci_bus_id`), so
//! dashboards made for dcgm-exporter (Grafana's 12239) work on a Skiff
//! node that does not run it; an allocation holding the GPU adds
//! `namespace`, `job` and `alloc`. Read from the agent's latest NVML (or
//! fake) samples: nothing is asked of the driver at a scrape.
//!
//! For labs that do run dcgm-exporter, [`write_job_mapping`] keeps its
//! HPC job-mapping directory (`--hpc-job-mapping-dir`): one file per GPU
//! index listing the Skiff jobs on it, which it turns into an `hpc_job`
//! label.

use std::collections::BTreeMap;
use std::path::Path;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use skiff_metrics::Labels;
use skiff_model::{Gpu, GpuMetrics};

/// Who holds a GPU: the allocation's namespace, job and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub namespace: String,
    pub job: String,
    pub alloc: String,
}

/// What one scrape knows of the node's GPUs.
pub struct GpuView<'a> {
    pub hostname: &'a str,
    pub gpus: &'a [Gpu],
    pub samples: &'a [GpuMetrics],
    /// The last XID seen on each GPU (by UUID).
    pub last_xid: &'a BTreeMap<String, u64>,
    /// Who holds each GPU (by UUID).
    pub holders: &'a BTreeMap<String, Holder>,
}

fn gauges() -> Family<Labels, Gauge> {
    Family::default()
}

/// The DCGM families for `view` (GPUs without a sample are left out, as
/// dcgm-exporter leaves out what it cannot read); `None` on a node
/// without GPUs.
pub fn registry(view: &GpuView) -> Option<Registry> {
    if view.samples.is_empty() {
        return None;
    }
    let util = gauges();
    let mem_util = gauges();
    let fb_used = gauges();
    let fb_free = gauges();
    let temp = gauges();
    let power = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let xid = gauges();
    let sbe = Family::<Labels, Counter>::default();
    let dbe = Family::<Labels, Counter>::default();
    for s in view.samples {
        let Some(g) = view.gpus.iter().find(|g| g.uuid == s.uuid) else {
            continue;
        };
        let index = g.index.to_string();
        let device = format!("nvidia{}", g.index);
        let mut l = skiff_metrics::labels(&[
            ("gpu", &index),
            ("UUID", &g.uuid),
            ("pci_bus_id", &g.pci_bus_id),
            ("device", &device),
            ("modelName", &g.model),
            ("Hostname", view.hostname),
        ]);
        if let Some(h) = view.holders.get(&g.uuid) {
            l.extend(skiff_metrics::labels(&[
                ("namespace", &h.namespace),
                ("job", &h.job),
                ("alloc", &h.alloc),
            ]));
        }
        const MIB: u64 = 1024 * 1024;
        util.get_or_create(&l).set(s.utilization_pct.into());
        mem_util
            .get_or_create(&l)
            .set(s.memory_utilization_pct.into());
        fb_used
            .get_or_create(&l)
            .set((s.memory_used_bytes / MIB) as i64);
        fb_free
            .get_or_create(&l)
            .set((g.memory_bytes.saturating_sub(s.memory_used_bytes) / MIB) as i64);
        temp.get_or_create(&l).set(s.temperature_c.into());
        power.get_or_create(&l).set(f64::from(s.power_mw) / 1000.0);
        xid.get_or_create(&l)
            .set(view.last_xid.get(&g.uuid).copied().unwrap_or(0) as i64);
        sbe.get_or_create(&l).inc_by(s.ecc_corrected);
        dbe.get_or_create(&l).inc_by(s.ecc_uncorrected);
    }
    let mut reg = Registry::default();
    reg.register("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %)", util);
    reg.register(
        "DCGM_FI_DEV_MEM_COPY_UTIL",
        "Memory utilization (in %)",
        mem_util,
    );
    reg.register(
        "DCGM_FI_DEV_FB_USED",
        "Framebuffer memory used (in MiB)",
        fb_used,
    );
    reg.register(
        "DCGM_FI_DEV_FB_FREE",
        "Framebuffer memory free (in MiB)",
        fb_free,
    );
    reg.register("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C)", temp);
    reg.register("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W)", power);
    reg.register(
        "DCGM_FI_DEV_XID_ERRORS",
        "Value of the last XID error encountered",
        xid,
    );
    reg.register(
        "DCGM_FI_DEV_ECC_SBE_VOL",
        "Total number of single-bit volatile ECC errors",
        sbe,
    );
    reg.register(
        "DCGM_FI_DEV_ECC_DBE_VOL",
        "Total number of double-bit volatile ECC errors",
        dbe,
    );
    Some(reg)
}

/// The registry's text with DCGM's counter names: prometheus-client
/// writes a counter as `NAME_total`, and DCGM's `..._VOL_TOTAL` counters
/// are registered as `..._VOL` so that comes out right.
pub fn encode(reg: &Registry) -> String {
    skiff_metrics::encode(reg).replace("_VOL_total", "_VOL_TOTAL")
}

/// Writes dcgm-exporter's job-mapping files into `dir`: for each GPU
/// index of `index_of` (by UUID; a MIG instance counts under its GPU's),
/// a file named by the index listing the jobs (`NAMESPACE/JOB`) holding
/// it, one per line; a GPU nobody holds gets an empty file. Written only
/// where the content changes.
pub fn write_job_mapping(
    dir: &Path,
    index_of: &BTreeMap<String, u32>,
    holders: &BTreeMap<String, Holder>,
) -> std::io::Result<()> {
    let mut jobs: BTreeMap<u32, std::collections::BTreeSet<String>> = BTreeMap::new();
    for index in index_of.values() {
        jobs.entry(*index).or_default();
    }
    for (uuid, h) in holders {
        if let Some(i) = index_of.get(uuid) {
            jobs.entry(*i)
                .or_default()
                .insert(format!("{}/{}", h.namespace, h.job));
        }
    }
    std::fs::create_dir_all(dir)?;
    for (index, names) in jobs {
        let path = dir.join(index.to_string());
        let text: String = names.iter().map(|n| format!("{n}\n")).collect();
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            crate::shim::write_atomic(&path, text.as_bytes())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: u32, uuid: &str) -> Gpu {
        let mut g = Gpu::new(uuid, "NVIDIA H200", 80 * 1024 * 1024 * 1024);
        g.index = index;
        g.pci_bus_id = format!("00000000:0{index}:00.0");
        g
    }

    #[test]
    fn gpu_series_carry_dcgm_names_units_labels_and_the_holder() {
        let gpus = [gpu(0, "GPU-a"), gpu(1, "GPU-b")];
        let samples = [
            GpuMetrics {
                uuid: "GPU-a".into(),
                utilization_pct: 87,
                memory_used_bytes: 2048 * 1024 * 1024,
                temperature_c: 61,
                power_mw: 312_500,
                ecc_uncorrected: 2,
                ..GpuMetrics::default()
            },
            GpuMetrics {
                uuid: "GPU-b".into(),
                ..GpuMetrics::default()
            },
        ];
        let holders = BTreeMap::from([(
            "GPU-a".to_string(),
            Holder {
                namespace: "ml".into(),
                job: "train".into(),
                alloc: "a1".into(),
            },
        )]);
        let xid = BTreeMap::from([("GPU-a".to_string(), 79)]);
        let reg = registry(&GpuView {
            hostname: "n1",
            gpus: &gpus,
            samples: &samples,
            last_xid: &xid,
            holders: &holders,
        })
        .unwrap();
        let text = encode(&reg);
        let a = "gpu=\"0\",UUID=\"GPU-a\",pci_bus_id=\"00000000:00:00.0\",device=\"nvidia0\",modelName=\"NVIDIA H200\",Hostname=\"n1\",namespace=\"ml\",job=\"train\",alloc=\"a1\"";
        for line in [
            format!("DCGM_FI_DEV_GPU_UTIL{{{a}}} 87"),
            format!("DCGM_FI_DEV_FB_USED{{{a}}} 2048"),
            format!("DCGM_FI_DEV_FB_FREE{{{a}}} {}", 80 * 1024 - 2048),
            format!("DCGM_FI_DEV_GPU_TEMP{{{a}}} 61"),
            format!("DCGM_FI_DEV_POWER_USAGE{{{a}}} 312.5"),
            format!("DCGM_FI_DEV_XID_ERRORS{{{a}}} 79"),
            format!("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL{{{a}}} 2"),
            "# TYPE DCGM_FI_DEV_ECC_DBE_VOL_TOTAL counter".to_string(),
            "# TYPE DCGM_FI_DEV_GPU_UTIL gauge".to_string(),
            "DCGM_FI_DEV_GPU_UTIL{gpu=\"1\",UUID=\"GPU-b\",pci_bus_id=\"00000000:01:00.0\",device=\"nvidia1\",modelName=\"NVIDIA H200\",Hostname=\"n1\"} 0".to_string(),
        ] {
            assert!(text.contains(&line), "{line:?} in\n{text}");
        }
        assert!(!text.contains("_total"), "{text}");
        assert!(registry(&GpuView {
            hostname: "n1",
            gpus: &[],
            samples: &[],
            last_xid: &xid,
            holders: &holders,
        })
        .is_none());
    }

    #[test]
    fn job_mapping_files_list_each_gpus_jobs() {
        let d = tempfile::tempdir().unwrap();
        let index_of = BTreeMap::from([
            ("GPU-a".to_string(), 0),
            ("GPU-b".to_string(), 1),
            ("MIG-x".to_string(), 1),
        ]);
        let holder = |job: &str| Holder {
            namespace: "default".into(),
            job: job.into(),
            alloc: format!("{job}-1"),
        };
        let holders = BTreeMap::from([
            ("GPU-a".to_string(), holder("train")),
            ("MIG-x".to_string(), holder("infer")),
        ]);
        write_job_mapping(d.path(), &index_of, &holders).unwrap();
        let read = |n: &str| std::fs::read_to_string(d.path().join(n)).unwrap();
        assert_eq!(read("0"), "default/train\n");
        assert_eq!(read("1"), "default/infer\n");
        write_job_mapping(d.path(), &index_of, &BTreeMap::new()).unwrap();
        assert_eq!(read("0"), "");
    }
}
