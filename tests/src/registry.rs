//! A real OCI registry for the image tests: Debian's `docker-registry`
//! (the CNCF distribution registry) on a loopback port, plain or with TLS
//! from a test CA and htpasswd basic auth, seeded with `skopeo copy` from
//! layouts built by umoci. Stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How the registry is reached.
pub struct RegistryOpts {
    /// Serve HTTPS with a certificate from a fresh test CA.
    pub tls: bool,
    /// Require this user and password (htpasswd, bcrypt).
    pub user: Option<(String, String)>,
}

pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The test CA's certificate (PEM file) when `tls`.
    pub ca_file: Option<PathBuf>,
    user: Option<(String, String)>,
    dir: tempfile::TempDir,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl Registry {
    pub fn start(opts: RegistryOpts) -> Registry {
        Registry::start_on(&format!("127.0.0.1:{}", free_port()), opts)
    }

    /// [`Registry::start`] on a given loopback address.
    pub fn start_on(addr: &str, opts: RegistryOpts) -> Registry {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let addr = addr.to_string();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        let mut ca_file = None;
        if opts.tls {
            let ca = skiff_pki::Ca::generate(Duration::from_secs(3600)).expect("a test CA");
            let leaf = ca
                .issue_for_host(
                    "registry",
                    &["127.0.0.1".parse().expect("an address")],
                    Duration::from_secs(3600),
                )
                .expect("a registry certificate");
            let (cert, key, ca_pem) = (
                dir.path().join("cert.pem"),
                dir.path().join("key.pem"),
                dir.path().join("ca.pem"),
            );
            std::fs::write(&cert, &leaf.cert_pem).expect("cert written");
            std::fs::write(&key, &leaf.key_pem).expect("key written");
            std::fs::write(&ca_pem, ca.cert_pem()).expect("CA written");
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
            ca_file = Some(ca_pem);
        }
        if let Some((user, pass)) = &opts.user {
            let file = dir.path().join("htpasswd");
            let st = Command::new("htpasswd")
                .args(["-Bbc"])
                .arg(&file)
                .args([user, pass])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("htpasswd runs (apache2-utils)");
            assert!(st.success(), "htpasswd failed");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: skiff-test\n    path: {}\n",
                file.display()
            ));
        }
        let config_file = dir.path().join("config.yml");
        std::fs::write(&config_file, config).expect("config written");
        let child = spawn(dir.path());
        let registry = Registry {
            child,
            addr,
            ca_file,
            user: opts.user,
            dir,
        };
        registry.wait_listening();
        registry
    }

    fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&self.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "the registry did not listen on {}: {}",
                self.addr,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the registry, keeping what it stores.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same address, with what it stored.
    pub fn restart(&mut self) {
        self.stop();
        self.child = spawn(self.dir.path());
        self.wait_listening();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// skopeo's flags to reach this registry as `side` (`src` or `dest`).
    fn skopeo_flags(&self, side: &str) -> Vec<String> {
        let mut flags = Vec::new();
        match &self.ca_file {
            // skopeo takes a directory of `*.crt` CAs.
            Some(ca) => {
                let certs = self.dir.path().join("certs.d");
                std::fs::create_dir_all(&certs).expect("certs dir");
                std::fs::copy(ca, certs.join("ca.crt")).expect("CA copied");
                flags.push(format!("--{side}-cert-dir={}", certs.display()));
            }
            None => flags.push(format!("--{side}-tls-verify=false")),
        }
        if let Some((u, p)) = &self.user {
            flags.push(format!("--{side}-creds={u}:{p}"));
        }
        flags
    }

    /// Pushes the layout's `latest` as `repo:tag`; returns its manifest
    /// digest as the registry has it.
    pub fn push(&self, layout: &Path, repo: &str, tag: &str) -> String {
        self.push_tag(layout, "latest", repo, tag)
    }

    /// Pushes the layout's `from` tag (a manifest, or an index with every
    /// manifest it lists) as `repo:tag`; returns the digest the registry
    /// has for it.
    pub fn push_tag(&self, layout: &Path, from: &str, repo: &str, tag: &str) -> String {
        let out = Command::new("skopeo")
            .args(["copy", "--all"])
            .args(self.skopeo_flags("dest"))
            .arg(format!("oci:{}:{from}", layout.display()))
            .arg(format!("docker://{}/{repo}:{tag}", self.addr))
            .output()
            .expect("skopeo runs");
        assert!(
            out.status.success(),
            "skopeo copy to {repo}:{tag} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        self.digest(&format!("{}/{repo}:{tag}", self.addr))
            .expect("the pushed image resolves")
    }

    /// Where the registry keeps the bytes of blob `digest` (to damage
    /// them).
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The manifest digest `reference` resolves to, as skopeo reads it.
    pub fn digest(&self, reference: &str) -> Result<String, String> {
        let out = Command::new("skopeo")
            .arg("inspect")
            .args(
                self.skopeo_flags("src")
                    .into_iter()
                    .map(|f| f.replace("--src-", "--")),
            )
            .args(["--format", "{{.Digest}}"])
            .arg(format!("docker://{reference}"))
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

fn spawn(dir: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("registry.log"))
        .expect("log file");
    Command::new("docker-registry")
        .arg("serve")
        .arg(dir.join("config.yml"))
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("docker-registry runs (Debian's docker-registry package)")
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback TCP proxy in front of a registry that passes what the
/// registry sends at most `bytes_per_sec` per connection, so a test can
/// act while a pull is under way. Stops accepting when dropped.
pub struct SlowProxy {
    /// `127.0.0.1:PORT`, to name as the registry.
    pub addr: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    served: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl SlowProxy {
    pub fn start(upstream: &str, bytes_per_sec: u64) -> SlowProxy {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("its address").to_string();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let served = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (upstream, stopping, counted) = (upstream.to_string(), stop.clone(), served.clone());
        std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                let _ = client.set_nonblocking(false);
                let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                let (mut c_in, mut s_out) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                // Requests go up as they come.
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_in, &mut s_out);
                    let _ = s_out.shutdown(std::net::Shutdown::Write);
                });
                // Answers come down slowly.
                let (mut s_in, mut c_out, stopping, counted) =
                    (server, client, stopping.clone(), counted.clone());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while !stopping.load(Ordering::Relaxed) {
                        let n = match s_in.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if c_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        counted.fetch_add(n as u64, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_micros(
                            n as u64 * 1_000_000 / bytes_per_sec.max(1),
                        ));
                    }
                    let _ = c_out.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        SlowProxy { addr, stop, served }
    }

    /// Bytes passed from the registry to its clients so far.
    pub fn served(&self) -> u64 {
        self.served.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
