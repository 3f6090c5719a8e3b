//! Resolving a registry tag to its digest when a job is applied (Docker
//! Swarm's `--resolve-image`): the version records the digest, so every
//! replica of a version runs the same bytes and a tag moved later never
//! splits a rollout; applying the same spec after the tag moved resolves
//! again and makes a new version. When the registry cannot be reached the
//! spec keeps the tag and the apply says so (the nodes pull the tag).
//! Registries are reached as the agents reach them
//! (`skiff_registry::RegistryAccess`, from the same flags).

use std::time::Duration;

use oci_client::Reference;
use skiff_model::JobSpec;
use skiff_registry::RegistryAccess;

/// How long an apply waits for the registry.
const RESOLVE_LIMIT: Duration = Duration::from_secs(10);

/// Pins `spec`'s registry image to the digest its tag names now; returns
/// the note for the person applying (empty when there was nothing to
/// resolve). `current` is the image of the job's version as stored: when
/// the registry cannot be reached and it names the same tag, pinned (by
/// these servers earlier, or by the first node that pulled it), its
/// digest is kept, so applying the same spec again changes nothing.
/// `logins` are the job's namespace's (each for its registry only).
pub async fn resolve(
    access: &RegistryAccess,
    logins: &[skiff_registry::Login],
    spec: &mut JobSpec,
    current: Option<&skiff_model::registry_ref::RegistryRef>,
) -> String {
    let Some(image) = spec.task.image.registry.as_mut() else {
        return String::new();
    };
    if image.digest.is_some() || access.offline() {
        return String::new();
    }
    let shown = image.to_string();
    let mut digest = Err(String::new());
    // Mirrors first, as the agents pull: the first that answers wins.
    for source in access.sources(&image.registry) {
        let mut asked = image.clone();
        asked.registry = source.clone();
        let found = async {
            let reference: Reference = asked.to_string().parse().map_err(|e| format!("{e}"))?;
            let login = logins.iter().find(|l| l.is_for(&source));
            let client = access
                .client_for(&source, login)
                .map_err(|e| e.to_string())?;
            let auth = access.auth_for(&source, login);
            tokio::time::timeout(
                RESOLVE_LIMIT,
                client.fetch_manifest_digest(&reference, &auth),
            )
            .await
            .map_err(|_| format!("no answer within {RESOLVE_LIMIT:?}"))?
            .map_err(|e| e.to_string())
        }
        .await;
        match found {
            Ok(d) => {
                digest = Ok(d);
                break;
            }
            Err(e) if source != image.registry => {
                tracing::warn!(image = %shown, mirror = %source, error = %e, "a registry mirror could not resolve a tag; trying the next");
                digest = Err(format!("mirror {source}: {e}"));
            }
            Err(e) => digest = Err(e),
        }
    }
    match digest {
        Ok(d) => {
            image.digest = Some(d.clone());
            format!("image {shown} resolved to {d}")
        }
        Err(why) => {
            tracing::warn!(image = %shown, error = %why, "could not resolve an image tag");
            let same_tag = current.filter(|c| {
                c.registry == image.registry
                    && c.repository == image.repository
                    && c.tag == image.tag
            });
            match same_tag.and_then(|c| c.digest.clone()) {
                Some(d) => {
                    image.digest = Some(d.clone());
                    format!(
                        "image {shown} not resolved to a digest ({why}); keeping {d}, which the job's version already pins"
                    )
                }
                None => format!(
                    "image {shown} not resolved to a digest ({why}); the first node to pull it pins the version to the digest it gets"
                ),
            }
        }
    }
}
