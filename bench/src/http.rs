//! Plain-HTTP GETs of a metrics address, timed.

use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use crate::stats::percentile;

/// `GET path` over plain HTTP: the time to the whole body, and its bytes.
pub fn get(addr: &str, path: &str) -> anyhow::Result<(Duration, usize)> {
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(addr)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let took = t.elapsed();
    let body = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |i| out.len() - i - 4);
    anyhow::ensure!(out.starts_with(b"HTTP/1.1 200"), "GET {path}: not 200");
    Ok((took, body))
}

/// `GET path` over plain HTTP: the body, as text.
pub fn body(addr: &str, path: &str) -> anyhow::Result<String> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    anyhow::ensure!(out.starts_with(b"HTTP/1.1 200"), "GET {path}: not 200");
    let at = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(out.len(), |i| i + 4);
    Ok(String::from_utf8_lossy(&out[at..]).into_owned())
}

/// `n` GETs of `path`: the median and 99th percentile times in ms, and
/// the body's bytes.
pub fn cost(addr: &str, path: &str, n: usize) -> anyhow::Result<(f64, f64, usize)> {
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..n {
        let (t, b) = get(addr, path)?;
        times.push(t);
        bytes = b;
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok((
        ms(percentile(&mut times, 50.0)),
        ms(percentile(&mut times, 99.0)),
        bytes,
    ))
}
