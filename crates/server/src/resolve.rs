//! Resolving a registry tag to its digest when a job is applied (Docker
//! Swarm's `--resolve-image`): the version records the digest, so every
//! replica of a version runs the same bytes and a tag moved later never
//! splits a rollout; applying the same spec after the tag moved resolves
//! again and makes a new version. When the registry cannot be reached the
//! spec keeps the tag and the apply says so (the nodes pull the tag).

use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use skiff_model::JobSpec;

/// How long an apply waits for the registry.
const RESOLVE_LIMIT: Duration = Duration::from_secs(10);

/// How the servers reach registries (their `--insecure-registry` flags,
/// the same as the agents').
#[derive(Debug, Clone, Default)]
pub struct RegistryAccess {
    /// `host:port` of registries spoken to over plain HTTP.
    pub insecure: Vec<String>,
    /// Never contact a registry: tags are left as they are (the fuzz
    /// harness, whose inputs name any host).
    pub offline: bool,
}

impl RegistryAccess {
    fn client(&self) -> Result<Client, String> {
        skiff_pki::use_tls13_only();
        let config = ClientConfig {
            protocol: if self.insecure.is_empty() {
                ClientProtocol::Https
            } else {
                ClientProtocol::HttpsExcept(self.insecure.clone())
            },
            read_timeout: Some(RESOLVE_LIMIT),
            connect_timeout: Some(RESOLVE_LIMIT),
            ..Default::default()
        };
        Client::try_from(config).map_err(|e| e.to_string())
    }

    /// Pins `spec`'s registry image to the digest its tag names now;
    /// returns the note for the person applying (empty when there was
    /// nothing to resolve).
    pub async fn resolve(&self, spec: &mut JobSpec) -> String {
        let Some(image) = spec.task.image.registry.as_mut() else {
            return String::new();
        };
        if image.digest.is_some() || self.offline {
            return String::new();
        }
        let shown = image.to_string();
        let digest = async {
            let reference: Reference = shown.parse().map_err(|e| format!("{e}"))?;
            let client = self.client()?;
            tokio::time::timeout(
                RESOLVE_LIMIT,
                client.fetch_manifest_digest(&reference, &RegistryAuth::Anonymous),
            )
            .await
            .map_err(|_| format!("no answer within {RESOLVE_LIMIT:?}"))?
            .map_err(|e| e.to_string())
        }
        .await;
        match digest {
            Ok(d) => {
                image.digest = Some(d.clone());
                format!("image {shown} resolved to {d}")
            }
            Err(why) => {
                tracing::warn!(image = %shown, error = %why, "could not resolve an image tag");
                format!(
                    "image {shown} not resolved to a digest ({why}); each node pulls the tag as it finds it"
                )
            }
        }
    }
}
