//! `skiff dev`: a server and an agent in one process, as a developer
//! starts it on one machine, on a free loopback port.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{log_file, remove_containers, skiff_bin};

/// A `skiff dev` process; dropping it kills it and removes the containers
/// its agent left.
pub struct DevProc {
    pub data_dir: PathBuf,
    /// The client API's address (host:port).
    pub addr: String,
    child: Option<Child>,
    log: PathBuf,
    /// The bridge the harness gave it, removed when it is dropped.
    own_bridge: Option<String>,
}

impl DevProc {
    /// Starts `skiff dev` with `--api 127.0.0.1:0` and `extra` arguments,
    /// and waits until the server wrote the address it listens on. Its
    /// HOME is DATA_DIR/home, so the `~/.skiff/config` it writes is its
    /// own.
    pub fn start(data_dir: &Path, extra: &[&str]) -> DevProc {
        crate::require_container_host();
        std::fs::create_dir_all(data_dir).unwrap();
        let addr_file = data_dir.join("server").join("api.addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = data_dir.join("dev.log");
        // A bridge and subnet of its own, unless the test names them.
        let slot = crate::net::net_slot();
        let bridge = crate::net::slot_bridge('d', slot);
        let own: Vec<String> = if extra.contains(&"--bridge") {
            Vec::new()
        } else {
            vec![
                "--bridge".into(),
                bridge.clone(),
                "--network-subnet".into(),
                crate::net::slot_subnets(slot).1,
                "--dns-upstream".into(),
                "none".into(),
            ]
        };
        let child = Command::new(skiff_bin())
            .args([
                "dev",
                "--api",
                "127.0.0.1:0",
                "--metrics-addr",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(crate::test_image_roots(extra))
            .args(&own)
            .args(extra)
            .env("HOME", data_dir.join("home"))
            .stdout(Stdio::null())
            .stderr(log_file(&log))
            .spawn()
            .expect("spawn skiff dev");
        let mut dev = DevProc {
            own_bridge: (!own.is_empty()).then_some(bridge),
            data_dir: data_dir.to_path_buf(),
            addr: String::new(),
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        dev.addr = loop {
            if let Ok(a) = std::fs::read_to_string(&addr_file) {
                break a.trim().to_string();
            }
            assert!(
                Instant::now() < deadline && dev.is_running(),
                "skiff dev did not start; its log:\n{}",
                dev.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        dev
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The administrator's credentials the server wrote.
    pub fn admin_conf(&self) -> PathBuf {
        self.data_dir.join("server").join("admin.conf")
    }

    /// The `~/.skiff/config` `skiff dev` wrote for its user.
    pub fn user_config(&self) -> PathBuf {
        self.data_dir.join("home").join(".skiff").join("config")
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for DevProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        remove_containers(&self.data_dir.join("agent"));
        if let Some(b) = &self.own_bridge {
            crate::net::remove_bridge(b);
        }
    }
}
