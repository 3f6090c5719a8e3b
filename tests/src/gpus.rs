//! Stand-ins for a GPU host, for `skiff agent --fake-gpus`: character
//! devices made with mknod (major 195, NVIDIA's, which has no driver on a
//! machine without GPUs, so opening one fails with ENXIO once the device
//! cgroup lets the container try), a stand-in `nvidia-smi` that lists the
//! GPU device nodes the container sees, and a stand-in library.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// NVIDIA's character device major.
pub const NVIDIA_MAJOR: u32 = 195;

/// The stand-in `nvidia-smi`: `-L` lists one line per GPU device node the
/// container was given, like the real one lists the GPUs it can see.
const NVIDIA_SMI: &str = "#!/bin/sh\n\
# Stand-in for nvidia-smi (Skiff's tests): one line per GPU device node.\n\
for d in /dev/nvidia[0-9]*; do\n\
  [ -e \"$d\" ] && echo \"GPU ${d#/dev/nvidia}: stand-in ($d)\"\n\
done\n";

/// A directory of stand-in device nodes and driver files, and the fake
/// inventory file that points at them.
pub struct FakeGpuHost {
    dir: tempfile::TempDir,
}

impl Default for FakeGpuHost {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeGpuHost {
    /// Makes the control devices (`nvidiactl`, `nvidia-uvm`) and the
    /// driver files (`nvidia-smi`, `libnvidia-ml.so.1`).
    pub fn new() -> FakeGpuHost {
        let h = FakeGpuHost {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        h.device("nvidiactl", NVIDIA_MAJOR, 255);
        h.device("nvidia-uvm", 511, 0);
        let smi = h.path("nvidia-smi");
        std::fs::write(&smi, NVIDIA_SMI).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&smi, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(h.path("libnvidia-ml.so.1"), b"stand-in library\n").unwrap();
        h
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A character device `name` with these numbers, made with mknod.
    pub fn device(&self, name: &str, major: u32, minor: u32) -> PathBuf {
        let p = self.path(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        let out = Command::new("mknod")
            .arg(&p)
            .args(["c", &major.to_string(), &minor.to_string()])
            .output()
            .expect("run mknod");
        assert!(
            out.status.success(),
            "mknod {}: {}",
            p.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        p
    }

    /// The YAML lines every fake file here shares: driver, control
    /// devices and driver files.
    pub fn common_yaml(&self) -> String {
        format!(
            "driver_version: 550.54.15\ncuda_version: \"12.4\"\n\
             control_devices: {{nvidiactl: {}, nvidia-uvm: {}}}\n\
             driver_files: [{}, {}]\n",
            self.path("nvidiactl").display(),
            self.path("nvidia-uvm").display(),
            self.path("nvidia-smi").display(),
            self.path("libnvidia-ml.so.1").display(),
        )
    }

    /// Writes the inventory file (`gpus.yaml`) and returns its path.
    pub fn write(&self, yaml: &str) -> PathBuf {
        let p = self.path("gpus.yaml");
        std::fs::write(&p, yaml).unwrap();
        p
    }

    /// Appends a health event (one JSON line) for the agent to read.
    pub fn inject(&self, event: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("gpus.yaml.events"))
            .unwrap();
        writeln!(f, "{event}").unwrap();
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// `GPU-00000000-0000-0000-0000-0000000000NN`-style UUIDs for tests.
pub fn test_uuid(node: u32, i: u32) -> String {
    format!("GPU-{node:08x}-0000-4000-8000-{i:012x}")
}
