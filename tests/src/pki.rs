//! The credentials the tests use, generated per test process as an
//! operator would: a cluster CA made with `skiff ca create` (every server
//! the harness starts is a founding server of it, so one administrator
//! certificate works with all of them), an administrator certificate
//! signed by it, and join tokens made with `skiff token create`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use skiff_client::{Client, ClientError, ClientTls};
use skiff_pki::{Ca, CertKey, Identity};

/// The test process's CA and administrator.
pub struct TestPki {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    /// A client configuration file without servers (`--server` names
    /// them): what `SKIFF_CONFIG` points at for CLI runs.
    pub admin_conf: PathBuf,
    pub admin: ClientTls,
    pub ca: Ca,
}

/// Made once per test process (and removed by a later one when this
/// process is gone).
pub fn test_pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| {
        crate::remove_stale_dirs("skiff-test-pki-");
        let dir = std::env::temp_dir().join(format!("skiff-test-pki-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let out = Command::new(crate::skiff_bin())
            .args(["ca", "create", "--dir"])
            .arg(&dir)
            .stderr(Stdio::inherit())
            .output()
            .expect("run skiff ca create");
        assert!(out.status.success(), "skiff ca create failed");
        let ca_cert = dir.join("ca.crt");
        let ca_key = dir.join("ca.key");
        let ca = Ca(CertKey {
            cert_pem: std::fs::read_to_string(&ca_cert).unwrap(),
            key_pem: std::fs::read_to_string(&ca_key).unwrap(),
        });
        let admin = ca
            .issue(
                &Identity::User("admin".into()),
                std::time::Duration::from_secs(24 * 3600),
            )
            .unwrap();
        let admin_conf = dir.join("admin.conf");
        write_conf(&admin_conf, &ca, &admin);
        TestPki {
            admin: ClientTls {
                token: None,
                ca_pem: ca.cert_pem().to_string(),
                identity: Some((admin.cert_pem, admin.key_pem)),
            },
            dir,
            ca_cert,
            ca_key,
            admin_conf,
            ca,
        }
    })
}

/// A client configuration file holding `who`'s certificate.
pub fn write_conf(path: &Path, ca: &Ca, who: &CertKey) {
    let block = |pem: &str| pem.lines().map(|l| format!("  {l}\n")).collect::<String>();
    let text = format!(
        "ca: |\n{}cert: |\n{}key: |\n{}",
        block(ca.cert_pem()),
        block(&who.cert_pem),
        block(&who.key_pem)
    );
    skiff_pki::files::write_private(path, text.as_bytes()).unwrap();
}

/// Connects to `url` as the administrator.
pub async fn connect(url: &str) -> Result<Client, ClientError> {
    Client::connect_with(url, Some(&test_pki().admin)).await
}

/// A `skiff` command that uses the administrator's credentials
/// (`SKIFF_CONFIG`), never the machine's `~/.skiff/config`.
pub fn skiff_command() -> Command {
    let mut c = Command::new(crate::skiff_bin());
    c.env("SKIFF_CONFIG", &test_pki().admin_conf)
        .env_remove("SKIFF_SERVER")
        .env_remove("SKIFF_TOKEN");
    c
}

/// A join token for `role` (`node` or `server`) from the server at `url`,
/// made with `skiff token create`.
pub fn join_token(url: &str, role: &str) -> String {
    let out = skiff_command()
        .args([
            "token", "create", "--role", role, "--ttl", "1h", "--server", url,
        ])
        .output()
        .expect("run skiff token create");
    assert!(
        out.status.success(),
        "skiff token create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
