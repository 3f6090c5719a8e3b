//! The Raft log's record format (`log.rs` writes and replays it): each
//! record is `[u32 length][u32 crc32 of the payload][payload]`, the
//! payload a kind byte and a body; batches of entries inside a body; and
//! how a reader tells a torn final write from damage in the middle.

use protobuf::Message as _;
use raft::eraftpb::Entry;

use crate::error::StoreError;

/// Largest record accepted when reading back (a snapshot is not a record).
pub(crate) const MAX_RECORD: usize = 1 << 30;
/// Whether a whole record (a plausible length, its payload inside `data`,
/// its checksum right) starts anywhere at or after `from`. Only asked on
/// the error path at start-up, so a scan is affordable.
pub(crate) fn record_after(data: &[u8], from: usize) -> bool {
    (from..data.len().saturating_sub(8)).any(|at| {
        let len = u32::from_be_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        let crc = u32::from_be_bytes(data[at + 4..at + 8].try_into().unwrap());
        len > 0
            && len <= MAX_RECORD
            && data.len() - at - 8 >= len
            && crc32fast::hash(&data[at + 8..at + 8 + len]) == crc
    })
}

pub(crate) const KIND_ENTRIES: u8 = 1;
pub(crate) const KIND_HARD_STATE: u8 = 2;
pub(crate) const KIND_CONF_STATE: u8 = 3;
pub(crate) const KIND_TRIM: u8 = 4;
pub(crate) const KIND_RESET: u8 = 5;
pub(crate) const KIND_SNAPSHOT: u8 = 6;

pub(crate) fn pb_bytes<M: protobuf::Message>(m: &M) -> Result<Vec<u8>, StoreError> {
    Ok(m.write_to_bytes().map_err(raft::Error::from)?)
}

/// Appends one framed record to `buf`.
pub(crate) fn frame(buf: &mut Vec<u8>, kind: u8, body: &[u8]) {
    let len = (body.len() + 1) as u32;
    let mut h = crc32fast::Hasher::new();
    h.update(&[kind]);
    h.update(body);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&h.finalize().to_be_bytes());
    buf.push(kind);
    buf.extend_from_slice(body);
}

pub(crate) fn index_term(index: u64, term: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&index.to_be_bytes());
    b[8..].copy_from_slice(&term.to_be_bytes());
    b
}

pub(crate) fn read_index_term(body: &[u8]) -> Option<(u64, u64)> {
    (body.len() == 16).then(|| {
        (
            u64::from_be_bytes(body[..8].try_into().unwrap()),
            u64::from_be_bytes(body[8..].try_into().unwrap()),
        )
    })
}

/// Entries as `(u32 length, protobuf bytes)*`.
pub(crate) fn encode_batch(entries: &[Entry]) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::new();
    for e in entries {
        let bytes = pb_bytes(e)?;
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(&bytes);
    }
    Ok(out)
}

pub(crate) fn decode_batch(what: &str, mut data: &[u8]) -> Result<Vec<Entry>, StoreError> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.len() < 4 {
            return Err(StoreError::corrupt("raft log", what, "truncated length"));
        }
        let len = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
        if data.len() < 4 + len {
            return Err(StoreError::corrupt("raft log", what, "truncated entry"));
        }
        out.push(
            Entry::parse_from_bytes(&data[4..4 + len])
                .map_err(|e| StoreError::corrupt("raft log", what, e))?,
        );
        data = &data[4 + len..];
    }
    Ok(out)
}

/// True when `data` holds only zero bytes.
pub(crate) fn is_zero(data: &[u8]) -> bool {
    data.iter().all(|b| *b == 0)
}
