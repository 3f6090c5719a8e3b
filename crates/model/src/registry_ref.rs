//! Image references to a registry, read and normalised the way Docker
//! does (distribution's reference grammar): `alpine:3.20` is
//! `docker.io/library/alpine:3.20`, `user/app` is `docker.io/user/app:latest`,
//! `registry.lab:5000/team/train:v3` names its registry, and a digest
//! (`@sha256:...`) pins the bytes. The first block of the registry work
//! (issue 18); specs still take only `oci:` layouts until pulls land.

use std::fmt;

/// The registry a reference without one names.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// Longest repository name, registry included (distribution's limit).
const MAX_NAME: usize = 255;
/// Longest tag.
const MAX_TAG: usize = 128;

/// A normalised reference to an image in a registry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RegistryRef {
    /// `host[:port]`, `docker.io` by default.
    pub registry: String,
    /// Path components, `library/` added for Docker Hub's official images.
    pub repository: String,
    /// `latest` when neither a tag nor a digest is given.
    pub tag: Option<String>,
    /// `sha256:<64 hex>` (or sha384/sha512): the bytes, whatever the tag.
    pub digest: Option<String>,
}

impl RegistryRef {
    /// Reads `[registry/]path[:tag][@digest]`; the error names the rule.
    pub fn parse(text: &str) -> Result<RegistryRef, String> {
        let bad = |why: &str| format!("{text:?} is not an image reference: {why}");
        if text.is_empty() {
            return Err(bad("it is empty"));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((r, d)) => (r, Some(check_digest(d).map_err(|w| bad(&w))?)),
            None => (text, None),
        };
        // A tag follows the last ':' unless a '/' comes after it (then the
        // ':' was a registry's port).
        let (name, tag) = match rest.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, Some(t)),
            _ => (rest, None),
        };
        if let Some(t) = tag {
            check_tag(t).map_err(|w| bad(&w))?;
        }
        let (registry, path) = split_registry(name);
        if path.is_empty() {
            return Err(bad("it names no repository"));
        }
        for part in path.split('/') {
            check_component(part).map_err(|w| bad(&w))?;
        }
        let repository = if registry == DEFAULT_REGISTRY && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        if registry.len() + 1 + repository.len() > MAX_NAME {
            return Err(bad(&format!("its name is over {MAX_NAME} characters")));
        }
        if path.len() == 64 && path.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(
                "a 64-hex-digit name looks like an image id, not a repository",
            ));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        };
        Ok(RegistryRef {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The same image pinned to `digest` (the tag is kept for display).
    pub fn pinned(&self, digest: &str) -> RegistryRef {
        RegistryRef {
            digest: Some(digest.to_string()),
            ..self.clone()
        }
    }
}

impl fmt::Display for RegistryRef {
    /// The full form: `registry/repository[:tag][@digest]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Docker Hub's other names, as `config.json` files and references
/// spell them.
const DOCKER_HUB_ALIASES: &[&str] = &["index.docker.io", "registry-1.docker.io"];

/// A registry as logins name it: `HOST[:PORT]` (Docker Hub's other names
/// become `docker.io`), or why not.
pub fn check_registry_host(name: &str) -> Result<String, String> {
    let name = if DOCKER_HUB_ALIASES.contains(&name) {
        DEFAULT_REGISTRY
    } else {
        name
    };
    let (host, port) = match name.rsplit_once(':') {
        Some((h, _)) if !h.ends_with(']') && h.contains(':') => (name, None),
        Some((h, p)) => (h, Some(p)),
        None => (name, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && (host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            || (host.starts_with('[') && host.ends_with(']')))
        && !host.starts_with(['.', '-']);
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    if host_ok && port_ok {
        Ok(name.to_string())
    } else {
        Err(format!(
            "{name:?} must be a registry's HOST[:PORT] as image references name it (no scheme, no path), e.g. registry.lab:5000 or docker.io"
        ))
    }
}

/// A registry user name: 1 to 256 characters, no control characters and
/// no ':' (basic authentication ends the name at the first one).
pub fn check_registry_username(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > 256 {
        return Err("must be 1 to 256 characters".into());
    }
    if name.chars().any(|c| c.is_control() || c == ':') {
        return Err("must hold no control characters and no ':'".into());
    }
    Ok(())
}

/// Docker's rule: the first component is a registry when it is
/// `localhost`, holds a `.` or a `:`, or has an uppercase letter; else
/// the name is on Docker Hub. `index.docker.io` is `docker.io`.
fn split_registry(name: &str) -> (String, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first == "localhost"
                || first.contains('.')
                || first.contains(':')
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            let registry = if first == "index.docker.io" {
                DEFAULT_REGISTRY
            } else {
                first
            };
            (registry.to_string(), rest)
        }
        _ => (DEFAULT_REGISTRY.to_string(), name),
    }
}

/// A path component: lowercase letters and digits, joined by one `.`,
/// one or two `_`, or any number of `-`.
fn check_component(part: &str) -> Result<(), String> {
    let b = part.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok = !b.is_empty() && alnum(b[0]) && alnum(b[b.len() - 1]) && {
        let mut i = 0;
        let mut good = true;
        while i < b.len() {
            if alnum(b[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < b.len() && !alnum(b[i]) {
                i += 1;
            }
            let sep = &part[start..i];
            good &= sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
        }
        good
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "repository part {part:?} must be lowercase letters and digits joined by '.', '_', '__' or '-'"
        ))
    }
}

fn check_tag(tag: &str) -> Result<(), String> {
    let b = tag.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    if b.is_empty()
        || b.len() > MAX_TAG
        || !word(b[0])
        || !b.iter().all(|&c| word(c) || c == b'.' || c == b'-')
    {
        return Err(format!(
            "tag {tag:?} must be 1 to {MAX_TAG} letters, digits, '_', '.' or '-', not starting with '.' or '-'"
        ));
    }
    Ok(())
}

/// A digest as references write it (`sha256:` and 64 lowercase hex
/// digits, or sha384/sha512), or why not.
pub fn check_digest(d: &str) -> Result<String, String> {
    let (alg, hex) = d
        .split_once(':')
        .ok_or_else(|| format!("digest {d:?} must be ALGORITHM:HEX"))?;
    let want = match alg {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => {
            return Err(format!(
                "digest algorithm {alg:?} is not sha256, sha384 or sha512"
            ))
        }
    };
    if hex.len() != want
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!("a {alg} digest is {want} lowercase hex digits"));
    }
    Ok(d.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_names_a_registry_as_references_do() {
        assert_eq!(
            check_registry_host("registry.lab:5000").unwrap(),
            "registry.lab:5000"
        );
        assert_eq!(check_registry_host("index.docker.io").unwrap(), "docker.io");
        assert_eq!(
            check_registry_host("127.0.0.1:5000").unwrap(),
            "127.0.0.1:5000"
        );
        assert_eq!(check_registry_host("[::1]:5000").unwrap(), "[::1]:5000");
        for bad in [
            "",
            "https://r.lab",
            "r.lab/v2",
            "r.lab:0",
            "r.lab:99999",
            "-r",
            "r lab",
        ] {
            let e = check_registry_host(bad).unwrap_err();
            assert!(e.contains("HOST[:PORT]"), "{bad}: {e}");
        }
        check_registry_username("alice").unwrap();
        assert!(check_registry_username("a:b").unwrap_err().contains("':'"));
        assert!(check_registry_username("").is_err());
        assert!(check_registry_username("a\nb").is_err());
    }

    fn norm(text: &str) -> String {
        RegistryRef::parse(text)
            .unwrap_or_else(|e| panic!("{e}"))
            .to_string()
    }

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn references_are_normalised_as_docker_does() {
        assert_eq!(norm("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(norm("alpine:3.20"), "docker.io/library/alpine:3.20");
        assert_eq!(
            norm("docker.io/library/alpine:3.20"),
            "docker.io/library/alpine:3.20"
        );
        assert_eq!(norm("docker.io/alpine"), "docker.io/library/alpine:latest");
        assert_eq!(
            norm("index.docker.io/pytorch/pytorch:2.4.0-cuda12.1"),
            "docker.io/pytorch/pytorch:2.4.0-cuda12.1"
        );
        assert_eq!(
            norm("pytorch/pytorch:2.4.0-cuda12.1"),
            "docker.io/pytorch/pytorch:2.4.0-cuda12.1"
        );
        assert_eq!(
            norm("registry.lab:5000/team/train:v3"),
            "registry.lab:5000/team/train:v3"
        );
        assert_eq!(norm("localhost/app"), "localhost/app:latest");
        assert_eq!(norm("127.0.0.1:5000/app"), "127.0.0.1:5000/app:latest");
        assert_eq!(
            norm("nvcr.io/nvidia/pytorch:24.05-py3"),
            "nvcr.io/nvidia/pytorch:24.05-py3"
        );
        assert_eq!(
            norm(&format!("alpine@{D}")),
            format!("docker.io/library/alpine@{D}")
        );
        assert_eq!(
            norm(&format!("alpine:3.20@{D}")),
            format!("docker.io/library/alpine:3.20@{D}")
        );
        let r = RegistryRef::parse("registry.lab:5000/team/train").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("registry.lab:5000", "team/train", Some("latest"))
        );
        assert_eq!(r.pinned(D).digest.as_deref(), Some(D));
    }

    #[test]
    fn bad_references_are_refused_naming_the_rule() {
        for (text, rule) in [
            ("", "empty"),
            ("Alpine", "lowercase"),
            ("alpine:", "tag"),
            ("alpine:-x", "tag"),
            ("alpine@sha256:abc", "64 lowercase hex"),
            ("alpine@md5:0123", "not sha256"),
            ("a//b", "repository part"),
            ("a__-b", "repository part"),
            ("registry.lab:5000/", "no repository"),
            (
                "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "image id",
            ),
        ] {
            let e = RegistryRef::parse(text).unwrap_err();
            assert!(e.contains(rule), "{text:?}: {e}");
        }
        let long = format!("x/{}", "a".repeat(300));
        assert!(RegistryRef::parse(&long).unwrap_err().contains("255"));
    }
}
