//! The image calls of the client API (`skiff image ls|pull`), relayed to
//! the agents that hold the images.

use skiff_model::NodeStatus;
use skiff_proto::pb;
use tonic::Status;

use super::errors::{check_name, invalid};
use super::relay::agent_client;
use crate::ctx::Ctx;

/// Longest a pull through `skiff image pull` may take.
const PULL_LIMIT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// The images cached on one node, or on every node (a node that is down
/// or does not answer is listed with why).
pub(crate) async fn list(
    ctx: &Ctx,
    r: pb::ListNodeImagesRequest,
) -> Result<pb::ListNodeImagesResponse, Status> {
    let nodes: Vec<(String, String, bool)> = {
        let state = ctx.store.state();
        if !r.node.is_empty() {
            check_name("node", &r.node)?;
            let n = state
                .nodes
                .get(&r.node)
                .ok_or_else(|| Status::not_found(format!("node {:?} not found", r.node)))?;
            vec![(
                n.name.clone(),
                n.address.clone(),
                n.status == NodeStatus::Down,
            )]
        } else {
            state
                .nodes
                .values()
                .map(|n| {
                    (
                        n.name.clone(),
                        n.address.clone(),
                        n.status == NodeStatus::Down,
                    )
                })
                .collect()
        }
    };
    let mut out = Vec::new();
    for (node, address, down) in nodes {
        let answer = if down {
            Err("the node is down".to_string())
        } else {
            match agent_client(ctx, &address, &node).await {
                Ok(mut agent) => agent
                    .list_images(pb::ListImagesRequest {})
                    .await
                    .map(|r| r.into_inner().images)
                    .map_err(|e| e.message().to_string()),
                Err(e) => Err(e.message().to_string()),
            }
        };
        out.push(match answer {
            Ok(images) => pb::NodeImages {
                node,
                images,
                error: String::new(),
            },
            Err(error) => pb::NodeImages {
                node,
                images: Vec::new(),
                error,
            },
        });
    }
    Ok(pb::ListNodeImagesResponse { nodes: out })
}

/// Pulls a registry image on one node.
pub(crate) async fn pull(
    ctx: &Ctx,
    r: pb::PullNodeImageRequest,
) -> Result<pb::PullNodeImageResponse, Status> {
    check_name("node", &r.node)?;
    let image = skiff_model::ImageRef::parse(&r.image).map_err(|e| invalid("image", e))?;
    if image.registry.is_none() {
        return Err(invalid(
            "image",
            format!(
                "{:?} is an OCI layout on the nodes' disks; only registry images are pulled",
                r.image
            ),
        ));
    }
    let address = {
        let state = ctx.store.state();
        let n = state
            .nodes
            .get(&r.node)
            .ok_or_else(|| Status::not_found(format!("node {:?} not found", r.node)))?;
        if n.status == NodeStatus::Down {
            return Err(Status::unavailable(format!("node {} is down", r.node)));
        }
        n.address.clone()
    };
    // A namespace's logins, for a pull made in its name.
    let logins = if r.namespace.is_empty() {
        Vec::new()
    } else {
        skiff_model::check_dns_label(&r.namespace)
            .map_err(|rule| invalid("namespace", format!("{:?} {rule}", r.namespace)))?;
        let state = ctx.store.state();
        if !state.namespace_exists(&r.namespace) {
            return Err(Status::not_found(format!(
                "namespace {:?} not found",
                r.namespace
            )));
        }
        crate::registry_logins::opened(&ctx.secrets.current(), &state, &r.namespace)
            .into_iter()
            .map(|l| pb::RegistryLogin {
                registry: l.registry,
                username: l.username,
                password: l.password,
            })
            .collect()
    };
    let mut agent = agent_client(ctx, &address, &r.node).await?;
    let mut req = tonic::Request::new(pb::PullImageRequest {
        image: image.to_string(),
        namespace: r.namespace.clone(),
        logins,
    });
    req.set_timeout(PULL_LIMIT);
    let answer = agent.pull_image(req).await?.into_inner();
    tracing::info!(node = %r.node, image = %image, "image pulled on request");
    Ok(pb::PullNodeImageResponse {
        image: answer.image,
    })
}
