//! Reading container logs back for `skiff logs`: the shim's CRI-format
//! files ([`crate::crilog`]), rotated ones included, turned back into the
//! text the container wrote, per stream, optionally with timestamps.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use skiff_proto::pb;
use tonic::Status;

use crate::crilog::{log_files, parse_line, Follower, Stream, LOG_FILE};
use crate::paths::Paths;
use crate::shim::ExitRecord;

/// Largest piece of log sent in one message.
const CHUNK: usize = 64 * 1024;
/// How often a followed log is checked for new data.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Which entries to show and how.
#[derive(Debug, Clone, Copy)]
pub struct Selection {
    pub stderr_only: bool,
    pub timestamps: bool,
}

impl Selection {
    fn wants(&self, s: Stream) -> bool {
        !self.stderr_only || s == Stream::Stderr
    }
}

/// The last lines of one stream, with their place in the whole log.
type TailQueue = VecDeque<(u64, Vec<u8>)>;

/// Collects entries into whole lines per stream and batches them into
/// chunks of one stream each.
struct Assembler {
    sel: Selection,
    /// A line whose parts (`P` entries) have not ended yet, per stream.
    open: [Vec<u8>; 2],
    chunks: Vec<(Stream, Vec<u8>)>,
    /// With `--tail N`: only the last N complete lines of each stream are
    /// kept, numbered so they can be put back in order.
    tail: Option<(usize, [TailQueue; 2])>,
    seq: u64,
}

fn slot(s: Stream) -> usize {
    match s {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

impl Assembler {
    fn new(sel: Selection, tail: u32) -> Self {
        Assembler {
            sel,
            open: [Vec::new(), Vec::new()],
            chunks: Vec::new(),
            tail: (tail > 0).then(|| (tail as usize, [VecDeque::new(), VecDeque::new()])),
            seq: 0,
        }
    }

    fn line(&mut self, raw: &[u8]) {
        let Some(e) = parse_line(raw) else {
            return;
        };
        if !self.sel.wants(e.stream) {
            return;
        }
        let buf = &mut self.open[slot(e.stream)];
        if buf.is_empty() && self.sel.timestamps {
            buf.extend_from_slice(e.time.as_bytes());
            buf.push(b' ');
        }
        buf.extend_from_slice(e.message);
        if !e.full {
            return;
        }
        buf.push(b'\n');
        let line = std::mem::take(buf);
        self.seq += 1;
        match &mut self.tail {
            Some((n, queues)) => {
                let q = &mut queues[slot(e.stream)];
                q.push_back((self.seq, line));
                if q.len() > *n {
                    q.pop_front();
                }
            }
            None => self.push(e.stream, &line),
        }
    }

    fn push(&mut self, stream: Stream, data: &[u8]) {
        match self.chunks.last_mut() {
            Some((s, buf)) if *s == stream && buf.len() + data.len() <= CHUNK => {
                buf.extend_from_slice(data)
            }
            _ => self.chunks.push((stream, data.to_vec())),
        }
    }

    /// Ends `--tail` selection: from now on every line is passed on.
    fn end_tail(&mut self) {
        if let Some((_, [out, err])) = self.tail.take() {
            let mut lines: Vec<(u64, Stream, Vec<u8>)> = out
                .into_iter()
                .map(|(n, l)| (n, Stream::Stdout, l))
                .chain(err.into_iter().map(|(n, l)| (n, Stream::Stderr, l)))
                .collect();
            lines.sort_by_key(|(n, _, _)| *n);
            for (_, s, line) in lines {
                self.push(s, &line);
            }
        }
    }

    fn take(&mut self) -> Vec<(Stream, Vec<u8>)> {
        std::mem::take(&mut self.chunks)
    }
}

fn to_pb(s: Stream) -> pb::agent_logs_response::Stream {
    match s {
        Stream::Stdout => pb::agent_logs_response::Stream::Stdout,
        Stream::Stderr => pb::agent_logs_response::Stream::Stderr,
    }
}

/// Streams an allocation's log into `tx` (the body of `AgentApi.Logs`).
pub async fn stream_logs(
    paths: Paths,
    r: pb::AgentLogsRequest,
    tx: tokio::sync::mpsc::Sender<Result<pb::AgentLogsResponse, Status>>,
) {
    let (dir, state_dir) = match (paths.log_dir(&r.alloc_id), paths.state_dir(&r.alloc_id)) {
        (Ok(d), Ok(s)) => (d, s),
        (Err(e), _) | (_, Err(e)) => {
            let _ = tx
                .send(Err(Status::invalid_argument(format!("alloc_id: {e}"))))
                .await;
            return;
        }
    };
    let sel = Selection {
        stderr_only: r.stderr_only,
        timestamps: r.timestamps,
    };
    let mut asm = Assembler::new(sel, r.tail);
    let mut follower = Follower::new(&dir);
    let mut first = true;
    loop {
        // Whether the container had already ended before this read: if
        // so, this read sees all it will ever write.
        let ended = ExitRecord::read(&state_dir).is_some() || !state_dir.is_dir();
        let result = if first {
            read_rotated(&dir, &mut asm).and_then(|()| follower.read_lines(|l| asm.line(l)))
        } else {
            follower.read_lines(|l| asm.line(l))
        };
        if let Err(e) = result {
            let _ = tx
                .send(Err(Status::internal(format!(
                    "reading the log in {}: {e}",
                    dir.display()
                ))))
                .await;
            return;
        }
        if first {
            asm.end_tail();
            first = false;
        }
        for (stream, data) in asm.take() {
            let chunk = pb::AgentLogsResponse {
                stream: to_pb(stream) as i32,
                data,
            };
            if tx.send(Ok(chunk)).await.is_err() {
                return; // the reader went away
            }
        }
        if !r.follow || ended {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
            _ = tx.closed() => return,
        }
    }
}

/// Feeds every rotated file (oldest first) to the assembler; the current
/// file is left to the follower.
fn read_rotated(dir: &Path, asm: &mut Assembler) -> std::io::Result<()> {
    let current: PathBuf = dir.join(LOG_FILE);
    for f in log_files(dir).into_iter().filter(|f| *f != current) {
        let data = match std::fs::read(&f) {
            Ok(d) => d,
            // Rotated away meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for line in data.split(|b| *b == b'\n') {
            asm.line(line);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crilog::{LineSplitter, LogWriter};

    fn write_log(dir: &Path, max_size: u64) {
        let mut w = LogWriter::open(dir, max_size, 10).unwrap();
        let mut out = LineSplitter::new(Stream::Stdout);
        let mut err = LineSplitter::new(Stream::Stderr);
        for i in 1..=30 {
            out.feed(format!("out {i}\n").as_bytes(), &mut w).unwrap();
            err.feed(format!("err {i}\n").as_bytes(), &mut w).unwrap();
        }
    }

    fn read(dir: &Path, sel: Selection, tail: u32) -> (String, String) {
        let mut asm = Assembler::new(sel, tail);
        read_rotated(dir, &mut asm).unwrap();
        let mut f = Follower::new(dir);
        f.read_lines(|l| asm.line(l)).unwrap();
        asm.end_tail();
        let (mut o, mut e) = (String::new(), String::new());
        for (s, d) in asm.take() {
            let text = String::from_utf8(d).unwrap();
            match s {
                Stream::Stdout => o.push_str(&text),
                Stream::Stderr => e.push_str(&text),
            }
        }
        (o, e)
    }

    #[test]
    fn rotated_logs_read_back_in_order_with_tail_and_stream_choice() {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path(), 300);
        assert!(log_files(dir.path()).len() > 3, "the log rotated");
        let all = Selection {
            stderr_only: false,
            timestamps: false,
        };
        let (o, e) = read(dir.path(), all, 0);
        let want = |p: &str, from: usize| -> String {
            (from..=30).map(|i| format!("{p} {i}\n")).collect()
        };
        assert_eq!(o, want("out", 1));
        assert_eq!(e, want("err", 1));
        let (o, e) = read(dir.path(), all, 3);
        assert_eq!(
            o, "out 28\nout 29\nout 30\n",
            "the last three lines of each stream"
        );
        assert_eq!(e, "err 28\nerr 29\nerr 30\n");
        let errs = Selection {
            stderr_only: true,
            timestamps: true,
        };
        let (o, e) = read(dir.path(), errs, 2);
        assert!(o.is_empty());
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[1].ends_with("Z err 30"), "{e}");
        assert!(lines[1].starts_with("20"), "{e}");
    }
}
