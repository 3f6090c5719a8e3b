//! Where `oci:` layouts may be read from: under the node's image roots
//! (`--image-roots`, which the agent reports when it registers), or under
//! the paths the policy of the allocation's namespace allows (which the
//! servers send with the node's allocations). The servers check the same
//! at admission; the agent checks again before it reads a layout, after
//! resolving symbolic links, so a link inside a root cannot lead out.
//! The servers send each namespace's registry logins the same way; they
//! are kept here, in memory only, for that namespace's pulls.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// The node's roots and the latest namespace policies; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ImagePolicy {
    /// `None`: every path is allowed (unit tests of the reconciler).
    roots: Option<Arc<Vec<PathBuf>>>,
    by_namespace: Arc<RwLock<BTreeMap<String, Vec<PathBuf>>>>,
    logins: Arc<RwLock<BTreeMap<String, Vec<skiff_registry::Login>>>>,
}

impl ImagePolicy {
    pub fn new(roots: Vec<PathBuf>) -> ImagePolicy {
        ImagePolicy {
            roots: Some(Arc::new(roots)),
            by_namespace: Arc::default(),
            logins: Arc::default(),
        }
    }

    /// Allows everything (tests that are not about images).
    pub fn unrestricted() -> ImagePolicy {
        ImagePolicy::default()
    }

    /// The node's roots, as it reports them.
    pub fn roots(&self) -> Vec<String> {
        self.roots
            .iter()
            .flat_map(|r| r.iter())
            .map(|p| p.display().to_string())
            .collect()
    }

    /// The paths each namespace's policy allows, as the servers last sent.
    pub fn set_namespaces(&self, paths: BTreeMap<String, Vec<String>>) {
        let paths = paths
            .into_iter()
            .map(|(ns, list)| (ns, list.into_iter().map(PathBuf::from).collect()))
            .collect();
        *self.by_namespace.write().unwrap_or_else(|p| p.into_inner()) = paths;
    }

    /// The registry logins of each namespace, as the servers last sent.
    pub fn set_logins(&self, logins: BTreeMap<String, Vec<skiff_registry::Login>>) {
        *self.logins.write().unwrap_or_else(|p| p.into_inner()) = logins;
    }

    /// Who asks for an image for an allocation of namespace `ns`.
    pub fn asker(&self, ns: &str) -> super::grants::Asker {
        super::grants::Asker {
            namespace: Some(ns.to_string()),
            logins: self
                .logins
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(ns)
                .cloned()
                .unwrap_or_default(),
        }
    }

    /// Checks that the layout at `layout` may be read for a job of
    /// namespace `ns`; the error says where layouts may be.
    /// Returns the layout's path with its links resolved: read it from
    /// there.
    pub fn check(&self, layout: &Path, ns: &str) -> Result<PathBuf, String> {
        let Some(roots) = &self.roots else {
            return Ok(layout.to_path_buf());
        };
        let extra = self
            .by_namespace
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(ns)
            .cloned()
            .unwrap_or_default();
        // Links resolved: what counts is where the bytes are.
        let real = std::fs::canonicalize(layout)
            .map_err(|e| format!("image layout {}: {e}", layout.display()))?;
        let allowed = roots
            .iter()
            .chain(&extra)
            .any(|root| std::fs::canonicalize(root).is_ok_and(|root| real.starts_with(root)));
        if allowed {
            return Ok(real);
        }
        let mut places: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        places.extend(extra.iter().map(|r| r.display().to_string()));
        Err(format!(
            "image layout {} is outside this node's image roots and the paths namespace {ns:?} may use ({}); the node's --image-roots or the namespace's policy.image_paths must include it",
            real.display(),
            places.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_must_be_under_a_root_after_links_are_resolved() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("images");
        let outside = tmp.path().join("elsewhere");
        std::fs::create_dir_all(root.join("bb")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let policy = ImagePolicy::new(vec![root.clone()]);
        policy.check(&root.join("bb"), "default").unwrap();
        let err = policy.check(&root.join("link"), "default").unwrap_err();
        assert!(err.contains("outside this node's image roots"), "{err}");
        policy.check(&outside, "lab").unwrap_err();
        policy.set_namespaces([("lab".to_string(), vec![outside.display().to_string()])].into());
        policy.check(&outside, "lab").unwrap();
        policy.check(&outside, "default").unwrap_err();
        ImagePolicy::unrestricted().check(&outside, "x").unwrap();
    }
}
