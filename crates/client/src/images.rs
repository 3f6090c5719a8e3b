//! The image calls: what each node's cache holds, and pulls ahead of time.

use skiff_proto::pb;

use crate::{CachedImage, Client, ClientError, NodeImages};

impl Client {
    /// The images cached on `node`, or on every node when `None`, as their
    /// agents report them.
    pub async fn list_images(
        &mut self,
        node: Option<&str>,
    ) -> Result<Vec<NodeImages>, ClientError> {
        Ok(self
            .cluster
            .list_node_images(pb::ListNodeImagesRequest {
                node: node.unwrap_or_default().into(),
            })
            .await?
            .into_inner()
            .nodes)
    }

    /// Pulls a registry image on `node` ahead of its allocations: with
    /// `namespace`'s registry logins (the image is then held for that
    /// namespace), or the node's own credentials when empty.
    pub async fn pull_image(
        &mut self,
        node: &str,
        image: &str,
        namespace: &str,
    ) -> Result<Option<CachedImage>, ClientError> {
        Ok(self
            .cluster
            .pull_node_image(pb::PullNodeImageRequest {
                node: node.into(),
                image: image.into(),
                namespace: namespace.into(),
            })
            .await?
            .into_inner()
            .image)
    }
}
