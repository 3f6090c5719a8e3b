//! The test registry the image work stands on (Debian's docker-registry,
//! seeded by skopeo from umoci layouts), plain and with TLS and basic
//! auth, and registry references normalised as Docker does naming what
//! it serves.

use std::process::Command;

use skiff_model::registry_ref::RegistryRef;
use skiff_tests::registry::{Registry, RegistryOpts};
use skiff_tests::*;

#[test]
fn a_plain_registry_serves_one_image_under_two_tags_and_by_digest() {
    let layout = busybox_layout();
    let r = Registry::start(RegistryOpts {
        tls: false,
        user: None,
    });
    let v1 = r.push(layout, "team/busybox", "v1");
    let v2 = r.push(layout, "team/busybox", "v2");
    assert!(v1.starts_with("sha256:"), "{v1}");
    assert_eq!(v1, v2, "one image under two tags");
    let by_tag = RegistryRef::parse(&format!("{}/team/busybox:v1", r.addr)).unwrap();
    assert_eq!(by_tag.registry, r.addr);
    assert_eq!(r.digest(&by_tag.to_string()).unwrap(), v1);
    let mut by_digest = by_tag.pinned(&v1);
    by_digest.tag = None;
    assert_eq!(r.digest(&by_digest.to_string()).unwrap(), v1);
    let missing = r
        .digest(&format!("{}/team/busybox:nope", r.addr))
        .unwrap_err();
    assert!(missing.contains("manifest unknown"), "{missing}");
}

#[test]
fn a_tls_registry_with_basic_auth_takes_its_user_and_refuses_others() {
    let layout = busybox_layout();
    let r = Registry::start(RegistryOpts {
        tls: true,
        user: Some(("ana".into(), "s3cret".into())),
    });
    let digest = r.push(layout, "busybox", "latest");
    assert!(digest.starts_with("sha256:"), "{digest}");
    let ca_dir = r
        .ca_file
        .as_ref()
        .unwrap()
        .parent()
        .unwrap()
        .join("certs.d");
    let with = |creds: &str| {
        Command::new("skopeo")
            .args(["inspect", "--format", "{{.Digest}}"])
            .arg(format!("--cert-dir={}", ca_dir.display()))
            .arg(format!("--creds={creds}"))
            .arg(format!("docker://{}/busybox:latest", r.addr))
            .output()
            .unwrap()
    };
    let wrong = with("ana:wrong");
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("unauthorized"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    let right = with("ana:s3cret");
    assert_eq!(String::from_utf8_lossy(&right.stdout).trim(), digest);
    // Without the test CA the certificate is not trusted.
    let untrusted = Command::new("skopeo")
        .args(["inspect", "--creds=ana:s3cret"])
        .arg(format!("docker://{}/busybox:latest", r.addr))
        .output()
        .unwrap();
    assert!(!untrusted.status.success());
}
