//! Container log files in the CRI format, one line per entry:
//!
//! ```text
//! 2026-11-28T21:14:14.515206123Z stdout F a whole line
//! 2026-11-28T21:14:14.515300000Z stderr P the first 16 KiB of a longer lin
//! 2026-11-28T21:14:14.515300000Z stderr F e
//! ```
//!
//! `F` ends a line, `P` is a part of one that goes on in the next entry of
//! the same stream. The shim writes `container.log` and rotates it by size
//! to `container.log.1`, `.2`, ... (the highest number is the oldest); the
//! agent reads them back for `skiff logs`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The file the shim writes; rotated files get `.1`, `.2`, ...
pub const LOG_FILE: &str = "container.log";
/// A line longer than this is written in parts (`P` entries).
pub const MAX_LINE: usize = 16 * 1024;
/// Default size at which the log is rotated.
pub const DEFAULT_MAX_SIZE: u64 = 10 * 1024 * 1024;
/// Default number of files kept (the current one and the rotated ones).
pub const DEFAULT_MAX_FILES: u32 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` in UTC.
pub fn rfc3339_nanos(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Year, month and day of a count of days since 1970-01-01 (proleptic
/// Gregorian calendar), by counting in 400-year eras of 146 097 days.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // 0..399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1st
    let mp = (5 * doy + 2) / 153; // month from March, 0..11
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// One log entry, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    pub time: &'a str,
    pub stream: Stream,
    /// False for a `P` entry: the line goes on in the next one.
    pub full: bool,
    pub message: &'a [u8],
}

/// Parses one line (without its newline); `None` when it is not an entry.
pub fn parse_line(line: &[u8]) -> Option<Entry<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let stream = match parts.next()? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    let full = match parts.next()? {
        b"F" => true,
        b"P" => false,
        _ => return None,
    };
    Some(Entry {
        time,
        stream,
        full,
        message: parts.next().unwrap_or_default(),
    })
}

/// Writes entries to `DIR/container.log`, rotating it when it would grow
/// past `max_size`; keeps at most `max_files` files in all.
pub struct LogWriter {
    dir: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    max_files: u32,
    line: Vec<u8>,
}

impl LogWriter {
    pub fn open(dir: &Path, max_size: u64, max_files: u32) -> io::Result<LogWriter> {
        fs::create_dir_all(dir)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(dir.join(LOG_FILE))?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            dir: dir.to_path_buf(),
            file,
            size,
            max_size: max_size.max(1),
            max_files: max_files.max(1),
            line: Vec::with_capacity(256),
        })
    }

    pub fn write_entry(
        &mut self,
        time: SystemTime,
        stream: Stream,
        full: bool,
        message: &[u8],
    ) -> io::Result<()> {
        self.line.clear();
        self.line.extend_from_slice(rfc3339_nanos(time).as_bytes());
        self.line.push(b' ');
        self.line.extend_from_slice(stream.as_str().as_bytes());
        self.line
            .extend_from_slice(if full { b" F " } else { b" P " });
        self.line.extend_from_slice(message);
        self.line.push(b'\n');
        if self.size > 0 && self.size + self.line.len() as u64 > self.max_size {
            self.rotate()?;
        }
        self.file.write_all(&self.line)?;
        self.size += self.line.len() as u64;
        Ok(())
    }

    /// `container.log.(N-1)` -> `.N`, ..., `container.log` -> `.1`, and a
    /// fresh `container.log`. The oldest file beyond `max_files` goes.
    fn rotate(&mut self) -> io::Result<()> {
        let base = self.dir.join(LOG_FILE);
        let numbered = |i: u32| self.dir.join(format!("{LOG_FILE}.{i}"));
        if self.max_files == 1 {
            let _ = fs::remove_file(&base);
        } else {
            let _ = fs::remove_file(numbered(self.max_files - 1));
            for i in (1..self.max_files - 1).rev() {
                let _ = fs::rename(numbered(i), numbered(i + 1));
            }
            fs::rename(&base, numbered(1))?;
        }
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&base)?;
        self.size = 0;
        Ok(())
    }
}

/// Splits what one stream produces into lines and writes them as entries.
pub struct LineSplitter {
    stream: Stream,
    partial: Vec<u8>,
}

impl LineSplitter {
    pub fn new(stream: Stream) -> Self {
        LineSplitter {
            stream,
            partial: Vec::new(),
        }
    }

    pub fn feed(&mut self, mut data: &[u8], out: &mut LogWriter) -> io::Result<()> {
        let now = SystemTime::now();
        while let Some(nl) = data.iter().position(|b| *b == b'\n') {
            if self.partial.is_empty() {
                self.write_parts(&data[..nl], true, now, out)?;
            } else {
                self.partial.extend_from_slice(&data[..nl]);
                let line = std::mem::take(&mut self.partial);
                self.write_parts(&line, true, now, out)?;
            }
            data = &data[nl + 1..];
        }
        self.partial.extend_from_slice(data);
        while self.partial.len() >= MAX_LINE {
            let rest = self.partial.split_off(MAX_LINE);
            let part = std::mem::replace(&mut self.partial, rest);
            out.write_entry(now, self.stream, false, &part)?;
        }
        Ok(())
    }

    /// Writes what is left of an unterminated last line.
    pub fn finish(&mut self, out: &mut LogWriter) -> io::Result<()> {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            out.write_entry(SystemTime::now(), self.stream, true, &line)?;
        }
        Ok(())
    }

    fn write_parts(
        &self,
        line: &[u8],
        full: bool,
        now: SystemTime,
        out: &mut LogWriter,
    ) -> io::Result<()> {
        let mut chunks = line.chunks(MAX_LINE).peekable();
        if chunks.peek().is_none() {
            return out.write_entry(now, self.stream, full, b"");
        }
        while let Some(c) = chunks.next() {
            let last = chunks.peek().is_none();
            out.write_entry(now, self.stream, full && last, c)?;
        }
        Ok(())
    }
}

/// The log files of one container, oldest first; the last one is
/// `container.log` (when it exists).
pub fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut numbered: Vec<(u32, PathBuf)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let n = name.to_str()?.strip_prefix(LOG_FILE)?.strip_prefix('.')?;
            Some((n.parse().ok()?, e.path()))
        })
        .collect();
    numbered.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    let mut files: Vec<PathBuf> = numbered.into_iter().map(|(_, p)| p).collect();
    let current = dir.join(LOG_FILE);
    if current.exists() {
        files.push(current);
    }
    files
}

/// Reads complete lines from a log file as it grows, and follows it when
/// the shim rotates it: the open file is read to its end before the new
/// `container.log` is opened, so nothing written before the rotation is
/// missed.
pub struct Follower {
    path: PathBuf,
    file: Option<File>,
    ino: u64,
    pending: Vec<u8>,
}

impl Follower {
    /// Follows `DIR/container.log` from its start.
    pub fn new(dir: &Path) -> Follower {
        Follower {
            path: dir.join(LOG_FILE),
            file: None,
            ino: 0,
            pending: Vec::new(),
        }
    }

    /// Calls `line` with every complete line available now.
    pub fn read_lines(&mut self, mut line: impl FnMut(&[u8])) -> io::Result<()> {
        for _ in 0..2 {
            if self.file.is_none() {
                match File::open(&self.path) {
                    Ok(f) => {
                        self.ino = f.metadata()?.ino();
                        self.file = Some(f);
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
            if let Some(f) = self.file.as_mut() {
                let mut buf = [0u8; 64 * 1024];
                loop {
                    let n = f.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    self.pending.extend_from_slice(&buf[..n]);
                    let mut start = 0;
                    while let Some(nl) = self.pending[start..].iter().position(|b| *b == b'\n') {
                        line(&self.pending[start..start + nl]);
                        start += nl + 1;
                    }
                    self.pending.drain(..start);
                }
            }
            // Rotated since it was opened? Everything in the old file has
            // been read; go on with the new one.
            match fs::metadata(&self.path) {
                Ok(m) if m.ino() != self.ino => {
                    self.file = None;
                    self.pending.clear();
                }
                _ => return Ok(()),
            }
        }
        Ok(())
    }

    /// Skips what is in the file now (for `--tail` on a followed log the
    /// caller reads the tail itself).
    pub fn seek_end(&mut self) -> io::Result<()> {
        if let Ok(mut f) = File::open(&self.path) {
            self.ino = f.metadata()?.ino();
            f.seek(SeekFrom::End(0))?;
            self.file = Some(f);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_in_utc() {
        let t = UNIX_EPOCH + Duration::new(1_795_900_454, 515_206_000);
        assert_eq!(rfc3339_nanos(t), "2026-11-28T21:14:14.515206000Z");
        assert_eq!(rfc3339_nanos(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        // A leap day.
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339_nanos(leap), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn lines_parse_back() {
        let e = parse_line(b"2026-01-01T00:00:00.000000000Z stderr P half a line").unwrap();
        assert_eq!(e.stream, Stream::Stderr);
        assert!(!e.full);
        assert_eq!(e.message, b"half a line");
        let empty = parse_line(b"2026-01-01T00:00:00.000000000Z stdout F ").unwrap();
        assert_eq!(empty.message, b"");
        assert!(parse_line(b"garbage").is_none());
        assert!(parse_line(b"t stdin F x").is_none());
    }

    fn read_all(dir: &Path) -> Vec<(Stream, bool, String)> {
        let mut out = Vec::new();
        for f in log_files(dir) {
            for l in fs::read(&f).unwrap().split(|b| *b == b'\n') {
                if let Some(e) = parse_line(l) {
                    out.push((e.stream, e.full, String::from_utf8_lossy(e.message).into()));
                }
            }
        }
        out
    }

    #[test]
    fn long_and_unterminated_lines_are_kept_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(dir.path(), 1 << 20, 2).unwrap();
        let mut out = LineSplitter::new(Stream::Stdout);
        let long = "x".repeat(MAX_LINE + 10);
        out.feed(b"one\ntw", &mut w).unwrap();
        out.feed(format!("o\n{long}\nend").as_bytes(), &mut w)
            .unwrap();
        out.finish(&mut w).unwrap();
        let got = read_all(dir.path());
        assert_eq!(got[0], (Stream::Stdout, true, "one".into()));
        assert_eq!(got[1], (Stream::Stdout, true, "two".into()));
        assert!(!got[2].1, "a long line is split into parts");
        assert_eq!(got[2].2.len() + got[3].2.len(), long.len());
        assert!(got[3].1);
        assert_eq!(got[4], (Stream::Stdout, true, "end".into()));
    }

    #[test]
    fn rotation_keeps_at_most_max_files_and_loses_no_recent_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(dir.path(), 200, 3).unwrap();
        let mut out = LineSplitter::new(Stream::Stderr);
        for i in 0..100 {
            out.feed(format!("line {i}\n").as_bytes(), &mut w).unwrap();
        }
        let files = log_files(dir.path());
        assert_eq!(files.len(), 3, "{files:?}");
        assert!(files[0].ends_with("container.log.2"));
        assert!(files[2].ends_with("container.log"));
        for f in &files {
            assert!(fs::metadata(f).unwrap().len() <= 200);
        }
        let got = read_all(dir.path());
        let numbers: Vec<usize> = got
            .iter()
            .map(|(_, _, m)| m.strip_prefix("line ").unwrap().parse().unwrap())
            .collect();
        assert_eq!(*numbers.last().unwrap(), 99);
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
    }

    #[test]
    fn a_follower_reads_across_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(dir.path(), 150, 3).unwrap();
        let mut f = Follower::new(dir.path());
        let mut seen = Vec::new();
        let mut out = LineSplitter::new(Stream::Stdout);
        for i in 0..20 {
            out.feed(format!("n {i}\n").as_bytes(), &mut w).unwrap();
            // Read every other write, so some reads straddle a rotation.
            if i % 2 == 1 {
                f.read_lines(|l| seen.push(parse_line(l).unwrap().message.to_vec()))
                    .unwrap();
            }
        }
        let want: Vec<Vec<u8>> = (0..20).map(|i| format!("n {i}").into_bytes()).collect();
        assert_eq!(seen, want);
    }
}
