//! The agent's `AgentApi`: container logs, read from the files the
//! container writes (its stdout and stderr go straight to them).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use skiff_proto::pb;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::paths::Paths;
use crate::shim::ExitRecord;

/// Largest piece of log sent in one message.
const CHUNK: usize = 64 * 1024;
/// How often a followed log is checked for new data.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

pub struct LogService {
    paths: Paths,
}

impl LogService {
    pub fn new(paths: Paths) -> Self {
        LogService { paths }
    }
}

/// Allocation ids are 32 lowercase hex digits; anything else could name a
/// path outside the log directory.
pub fn valid_alloc_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Byte offset where the last `n` lines of the file start.
fn tail_offset(path: &Path, n: u32) -> std::io::Result<u64> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    if n == 0 || len == 0 {
        return Ok(0);
    }
    // Read backwards in blocks, counting newlines. A final newline ends
    // the last line rather than starting an empty one.
    let mut pos = len;
    let mut newlines = 0u32;
    let mut buf = vec![0u8; 8192];
    let mut first = true;
    while pos > 0 {
        let step = (pos as usize).min(buf.len());
        pos -= step as u64;
        f.seek(SeekFrom::Start(pos))?;
        f.read_exact(&mut buf[..step])?;
        for i in (0..step).rev() {
            if buf[i] == b'\n' {
                if first && pos + i as u64 == len - 1 {
                    first = false;
                    continue;
                }
                newlines += 1;
                if newlines == n {
                    return Ok(pos + i as u64 + 1);
                }
            }
            first = false;
        }
    }
    Ok(0)
}

struct Source {
    path: PathBuf,
    stream: pb::log_chunk::Stream,
    offset: u64,
}

impl Source {
    /// Reads what was appended since the last call.
    fn read_new(&mut self) -> std::io::Result<Vec<Vec<u8>>> {
        let mut f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(e),
        };
        let len = f.metadata()?.len();
        if len < self.offset {
            self.offset = 0; // truncated
        }
        f.seek(SeekFrom::Start(self.offset))?;
        let mut out = Vec::new();
        let mut remaining = len - self.offset;
        while remaining > 0 {
            let mut buf = vec![0u8; (remaining as usize).min(CHUNK)];
            f.read_exact(&mut buf)?;
            remaining -= buf.len() as u64;
            self.offset += buf.len() as u64;
            out.push(buf);
        }
        Ok(out)
    }
}

type LogStream = Pin<Box<dyn Stream<Item = Result<pb::LogChunk, Status>> + Send>>;

#[tonic::async_trait]
impl pb::agent_api_server::AgentApi for LogService {
    type LogsStream = LogStream;

    async fn logs(&self, req: Request<pb::LogsRequest>) -> Result<Response<LogStream>, Status> {
        let r = req.into_inner();
        if !valid_alloc_id(&r.alloc_id) {
            return Err(Status::invalid_argument(format!(
                "alloc_id: {:?} must be 32 lowercase hex digits",
                r.alloc_id
            )));
        }
        let dir = self.paths.log_dir(&r.alloc_id);
        if !dir.is_dir() {
            return Err(Status::not_found(format!(
                "no logs for allocation {} on this node (it may not have started yet)",
                r.alloc_id
            )));
        }
        let mut sources = Vec::new();
        let wanted: &[(&str, pb::log_chunk::Stream)] = if r.stderr_only {
            &[("stderr.log", pb::log_chunk::Stream::Stderr)]
        } else {
            &[
                ("stdout.log", pb::log_chunk::Stream::Stdout),
                ("stderr.log", pb::log_chunk::Stream::Stderr),
            ]
        };
        for (file, stream) in wanted {
            let path = dir.join(file);
            let offset = tail_offset(&path, r.tail).unwrap_or(0);
            sources.push(Source {
                path,
                stream: *stream,
                offset,
            });
        }
        let state_dir = self.paths.state_dir(&r.alloc_id);
        let follow = r.follow;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                // Whether the container had already ended before this read:
                // if so, this read sees all it will ever write.
                let ended = ExitRecord::read(&state_dir).is_some() || !state_dir.is_dir();
                for s in sources.iter_mut() {
                    let chunks = match s.read_new() {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = tx
                                .send(Err(Status::internal(format!(
                                    "reading {}: {e}",
                                    s.path.display()
                                ))))
                                .await;
                            return;
                        }
                    };
                    for data in chunks {
                        let chunk = pb::LogChunk {
                            stream: s.stream as i32,
                            data,
                        };
                        if tx.send(Ok(chunk)).await.is_err() {
                            return; // the reader went away
                        }
                    }
                }
                if !follow || ended {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(FOLLOW_POLL) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_finds_the_start_of_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, "one\ntwo\nthree\n").unwrap();
        assert_eq!(tail_offset(&p, 1).unwrap(), 8);
        assert_eq!(tail_offset(&p, 2).unwrap(), 4);
        assert_eq!(tail_offset(&p, 3).unwrap(), 0);
        assert_eq!(tail_offset(&p, 10).unwrap(), 0);
        assert_eq!(tail_offset(&p, 0).unwrap(), 0);
        std::fs::write(&p, "one\ntwo").unwrap();
        assert_eq!(tail_offset(&p, 1).unwrap(), 4);
    }

    #[test]
    fn alloc_ids_that_could_escape_are_refused() {
        assert!(valid_alloc_id("0123456789abcdef0123456789abcdef"));
        assert!(!valid_alloc_id("../../../../etc/passwd"));
        assert!(!valid_alloc_id("0123456789ABCDEF0123456789abcdef"));
        assert!(!valid_alloc_id(""));
    }
}
