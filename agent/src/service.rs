//! The agent's own gRPC API (`AgentApi`), which servers relay to: logs,
//! exec, and GPU resets.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use skiff_proto::pb;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::gpu::GpuNode;
use crate::logs::stream_logs;
use crate::paths::valid_alloc_id;
use crate::paths::{container_id, Paths};
use crate::runtime::Runtime;

pub struct AgentService<R: Runtime> {
    paths: Paths,
    runtime: Arc<R>,
    gpus: Arc<GpuNode>,
    images: Option<ImageTools>,
}

/// What the image calls need: the puller, the unpacked cache, and what
/// the reconciler says is in use.
#[derive(Clone)]
pub struct ImageTools {
    pub puller: Arc<crate::image::registry::Puller>,
    pub store: crate::image::ImageStore,
    pub in_use: crate::image::gc::InUse,
}

impl<R: Runtime> AgentService<R> {
    pub fn new(paths: Paths, runtime: Arc<R>, gpus: Arc<GpuNode>) -> Self {
        AgentService {
            paths,
            runtime,
            gpus,
            images: None,
        }
    }

    /// Serves the image calls too.
    pub fn with_images(mut self, images: ImageTools) -> Self {
        self.images = Some(images);
        self
    }

    fn image_tools(&self) -> Result<&ImageTools, Status> {
        self.images
            .as_ref()
            .ok_or_else(|| Status::unimplemented("this agent serves no image calls"))
    }
}

impl ImageTools {
    /// What the reconciler last said is in use (nothing before it has).
    fn in_use_now(&self) -> std::collections::HashSet<String> {
        self.in_use
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default()
    }
}

fn cached_image(
    record: crate::image::gc::ImageRecord,
    size: u64,
    in_use: &std::collections::HashSet<String>,
) -> pb::CachedImage {
    pb::CachedImage {
        in_use: record.in_use(in_use),
        reference: record.reference,
        digest: record.top,
        manifest: record.manifest,
        size_bytes: size,
        last_used_ms: record.last_used_ms,
    }
}

/// How long a reset waits for the servers to take the new registration.
const RESET_WAIT: Duration = Duration::from_secs(20);

fn check_id(id: &str) -> Result<(), Status> {
    if valid_alloc_id(id) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "alloc_id: {id:?} must be 32 lowercase hex digits"
        )))
    }
}

type LogStream = Pin<Box<dyn Stream<Item = Result<pb::AgentLogsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<R: Runtime> pb::agent_api_server::AgentApi for AgentService<R> {
    type LogsStream = LogStream;

    async fn logs(
        &self,
        req: Request<pb::AgentLogsRequest>,
    ) -> Result<Response<LogStream>, Status> {
        let r = req.into_inner();
        check_id(&r.alloc_id)?;
        if !self.paths.log_dir(&r.alloc_id).is_ok_and(|d| d.is_dir()) {
            return Err(Status::not_found(format!(
                "no logs for allocation {} on this node (it may not have started yet)",
                r.alloc_id
            )));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(stream_logs(self.paths.clone(), r, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn reset_gpu(
        &self,
        req: Request<pb::ResetGpuRequest>,
    ) -> Result<Response<pb::ResetGpuResponse>, Status> {
        let uuid = req.into_inner().uuid;
        let Some((was, generation)) = self.gpus.reset(&uuid) else {
            return Err(Status::not_found(format!("this node has no GPU {uuid:?}")));
        };
        // Answer once the servers know: the GPU is offered again when the
        // caller hears back.
        if !self.gpus.wait_registered(generation, RESET_WAIT).await {
            return Err(Status::deadline_exceeded(format!(
                "GPU {uuid} is healthy on the node, but the servers did not take the new registration within {}s",
                RESET_WAIT.as_secs()
            )));
        }
        Ok(Response::new(pb::ResetGpuResponse {
            uuid,
            was_unhealthy: was.is_some(),
            reason: was.map(|w| w.reason).unwrap_or_default(),
            index: self.gpus.registered_index(),
        }))
    }

    async fn list_images(
        &self,
        _req: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        let tools = self.image_tools()?;
        let in_use = tools.in_use_now();
        let cache = crate::image::gc::ImageCache::new(tools.store.root());
        let images = tokio::task::spawn_blocking(move || cache.list())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .into_iter()
            .map(|(r, size)| cached_image(r, size, &in_use))
            .collect();
        Ok(Response::new(pb::ListImagesResponse { images }))
    }

    async fn pull_image(
        &self,
        req: Request<pb::PullImageRequest>,
    ) -> Result<Response<pb::PullImageResponse>, Status> {
        let tools = self.image_tools()?.clone();
        let r = req.into_inner();
        let image = skiff_model::registry_ref::RegistryRef::parse(&r.image)
            .map_err(|e| Status::invalid_argument(format!("image: {e}")))?;
        let asker = crate::image::grants::Asker {
            namespace: (!r.namespace.is_empty()).then_some(r.namespace),
            logins: r
                .logins
                .into_iter()
                .map(crate::image::grants::login_from_wire)
                .collect(),
        };
        let top = tools
            .puller
            .pull(&image, skiff_model::PullPolicy::IfNotPresent, &asker)
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        let reference = image.to_string();
        let (puller, store) = (tools.puller.clone(), tools.store.clone());
        let record = tokio::task::spawn_blocking(move || {
            let prepared = store.unpack(&puller.source()?, &top)?;
            let cache = crate::image::gc::ImageCache::new(store.root());
            let blobs = puller.blobs_of(&top);
            let top = top.digest().to_string();
            cache
                .record_use(
                    &reference,
                    &top,
                    &prepared.manifest_digest,
                    blobs,
                    &prepared.rootfs,
                )
                .map_err(|e| crate::image::ImageError::Io {
                    path: store.root().join("used"),
                    source: e,
                })?;
            Ok::<_, crate::image::ImageError>(
                cache
                    .list()
                    .into_iter()
                    .find(|(r, _)| r.manifest == prepared.manifest_digest),
            )
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::failed_precondition(format!("image {image}: {e}")))?;
        let in_use = tools.in_use_now();
        let image = record.map(|(r, size)| cached_image(r, size, &in_use));
        Ok(Response::new(pb::PullImageResponse { image }))
    }

    async fn exec(
        &self,
        req: Request<pb::AgentExecRequest>,
    ) -> Result<Response<pb::AgentExecResponse>, Status> {
        let r = req.into_inner();
        check_id(&r.alloc_id)?;
        if r.command.first().is_none_or(|c| c.is_empty()) {
            return Err(Status::invalid_argument(
                "command: must name a program to run in the container",
            ));
        }
        if r.command.iter().any(|a| a.contains('\0')) {
            return Err(Status::invalid_argument(
                "command: must not contain a NUL byte",
            ));
        }
        let cid = container_id(&r.alloc_id);
        let running = self
            .runtime
            .state(&cid)
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .is_some_and(|s| s.status == "running");
        if !running {
            return Err(Status::failed_precondition(format!(
                "allocation {} has no running container on this node",
                r.alloc_id
            )));
        }
        let timeout = (r.timeout_ms > 0).then(|| Duration::from_millis(r.timeout_ms));
        let out = self
            .runtime
            .exec(&cid, &r.command, timeout)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        tracing::info!(alloc = %r.alloc_id, program = %r.command[0], exit_code = out.exit_code, timed_out = out.timed_out, "exec");
        Ok(Response::new(pb::AgentExecResponse {
            exit_code: out.exit_code,
            stdout: out.stdout,
            stderr: out.stderr,
            truncated: out.truncated,
            timed_out: out.timed_out,
        }))
    }
}
