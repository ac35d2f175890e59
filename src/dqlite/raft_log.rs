//! Reads libraft's on-disk log far enough to say what the last entry of a dqlite data
//! directory is, as libraft's own loader would find it on start: the (term, index) that a
//! lost-quorum recovery compares across survivors (term first, then index). Sans-IO: the
//! caller lists the directory, reads the files [`files_to_read`] names and hands their bytes
//! to [`last_entry`]; only `src/state/` touches the filesystem.
//!
//! Format facts, from canonical/raft v0.11.3 and v0.15.0 (Debian's libdqlite 1.11.1 links
//! libraft2 0.15.0; the two versions agree on all of this) and checked against directories
//! written by Debian's `dqlite-demo`. All integers are little endian.
//! - Checksums (`byte.c` `byteCrc32`): CRC-32 with polynomial 0x04C11DB7, MSB first (not
//!   reflected), initial value 0 and no final XOR (gcc libiberty's table). Check value of
//!   `"123456789"`: 0x89A1897F.
//! - Disk format version (`uv_encoding.h` `UV__DISK_FORMAT`): 1, the first u64 of metadata,
//!   segment and snapshot `.meta` files.
//! - `metadata1` / `metadata2` (`uv_metadata.c`): exactly 32 bytes, u64 format, version,
//!   term, voted_for. A file shorter than 32 bytes is a torn write and counts as absent (libraft
//!   deletes it); a longer one, another format, or version 0 is corrupt. Odd versions go to
//!   `metadata1`, even ones to `metadata2`; the higher version wins, equal versions are
//!   corrupt, neither file means term 0.
//! - Names (`uv.h`, `uv_list.c`): closed segments `%016llu-%016llu` (first and last index,
//!   inclusive, zero-padded *decimal*), open segments `open-%llu` (a counter, not an index),
//!   snapshots `snapshot-%llu-%llu-%llu` (term, index, libuv loop time in ms, not wall
//!   time) with a `.meta` sibling.
//!   Names of 128 bytes or more are ignored. A snapshot counts only when both its `.meta` and
//!   its data file exist; the most recent is the greatest (term, index, timestamp).
//! - Segments (`uv_segment.c`, `uv_encoding.c`): u64 format, then batches. A batch is u32
//!   header CRC, u32 data CRC, then the header: u64 entry count n (0 and more than
//!   8 MiB / 32 are corrupt), and per entry u64 term, u8 type (1 command, 2 barrier,
//!   3 change), 3 unused bytes, u32 data length; the header CRC covers these 8 + 16n bytes.
//!   Then the entries' data, back to back; the data CRC covers all of it. The writer pads each
//!   entry's data to 8 bytes but asserts it already is a multiple of 8, and the loader
//!   (`uvLoadEntriesBatch`) consumes exactly the sum of the lengths, so no padding appears.
//! - Closed segments (`uvSegmentLoadClosed`) hold exactly last - first + 1 entries and end
//!   with their last batch; anything else makes libraft refuse to load.
//! - Open segments (`uvSegmentLoadOpen`) are preallocated (8 MiB, zero-filled). An empty one,
//!   or one whose format field and everything after it are zero, holds nothing. Batches are
//!   read until one fills the file to its end or one is corrupt (zero count, count too high,
//!   either checksum wrong): the log ends there (libraft truncates the file at that batch).
//!   But a batch that runs past the end of the file (a short read, `RAFT_IOERR`), an unknown
//!   entry type or another format version is an error that stops libraft from loading, so it
//!   is one here too (libraft 0.15.0 even aborts on such a short read, tried on real data).
//! - Indexes (`uv.c` `uvLoadSnapshotAndEntries`, `uvFilterSegments`; `uvSegmentLoadAll`):
//!   without a snapshot the log starts at index 1. With one, if the newest closed segment
//!   ends before the snapshot and there is no open segment, every segment is dropped and the
//!   log is the snapshot alone; otherwise the log starts at the oldest closed segment of the
//!   newest contiguous run (which must not start after snapshot index + 1), or at snapshot
//!   index + 1 when there are only open segments. Closed segments must follow on without
//!   gaps; open segments, in counter order, continue after the last closed one, each
//!   starting where the previous one's valid entries end. If the entries then end before the
//!   snapshot's index, libraft refuses to load.
//!
//! Not checked, as it would mean reading files the answer does not depend on: the older
//! closed segments (libraft reads and checks them all), the snapshot files themselves
//! (libraft also needs the data file non-empty and the `.meta` checksum right). libraft 0.15's
//! auto-recovery (renaming a corrupt last segment away and loading again) is not modelled:
//! such directories are reported as errors.

use std::collections::HashSet;

/// The two metadata files; the one with the higher version is current.
pub const METADATA_FILES: [&str; 2] = ["metadata1", "metadata2"];

/// `UV__DISK_FORMAT`.
const DISK_FORMAT: u64 = 1;
/// Format, version, term, voted_for.
const METADATA_SIZE: usize = 32;
/// `UV__FILENAME_LEN`: `UvList` ignores names at least this long.
const FILENAME_LEN: usize = 128;
/// `UV__MAX_SEGMENT_SIZE / (8 * 4)`: libraft's bound on the entry count of a batch.
const MAX_BATCH_ENTRIES: u64 = 8 * 1024 * 1024 / 32;
/// Per-entry header: term, type + 3 unused bytes, data length.
const ENTRY_HEADER_SIZE: usize = 16;
const SNAPSHOT_META_SUFFIX: &str = ".meta";

/// A log position. The derived order compares the term first, then the index: the order in
/// which raft ranks how up to date a log is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Entry {
    pub term: u64,
    pub index: u64,
}

/// What a data directory holds, as libraft would load it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogSummary {
    /// The term in the current metadata file (0 for a brand new node).
    pub current_term: u64,
    /// The last entry of the log, or the snapshot's position when the log holds nothing after
    /// it; `None` when there is neither.
    pub last: Option<Entry>,
}

/// Why a directory cannot be summarised. Apart from [`RaftLogError::Unreadable`], each is a
/// state libraft would also refuse to load (or, from 0.15, try to recover from by renaming
/// segments away).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RaftLogError {
    #[error("{file} is in the listing but could not be read")]
    Unreadable { file: String },
    #[error("{file}: {problem}")]
    BadMetadata { file: String, problem: String },
    #[error("metadata1 and metadata2 both have version {version}")]
    MetadataVersionTie { version: u64 },
    #[error("{file}, byte {offset}: {problem}")]
    BadSegment {
        file: String,
        offset: usize,
        problem: String,
    },
    #[error("inconsistent log files: {0}")]
    BadSequence(String),
}

/// The files of the listing that [`last_entry`] reads: the metadata files that exist, the
/// closed segment holding the last closed entries, and every open segment that counts. Snapshots
/// are known from their names. When the names alone are inconsistent only the metadata files
/// are listed, as [`last_entry`] stops there.
pub fn files_to_read(names: &[String]) -> Vec<String> {
    let mut files: Vec<String> = listed_metadata(names).map(str::to_string).collect();
    if let Ok(plan) = plan_segments(names) {
        files.extend(plan.last_closed.map(|closed| closed.name.to_string()));
        files.extend(plan.open.iter().map(|name| name.to_string()));
    }
    files
}

/// The current term and the last log entry of a data directory. `names` is the directory
/// listing; `read` returns a listed file's bytes, or `None` when it cannot be read. Only the
/// files [`files_to_read`] names are asked for.
pub fn last_entry(
    names: &[String],
    mut read: impl FnMut(&str) -> Option<Vec<u8>>,
) -> Result<LogSummary, RaftLogError> {
    let current_term = current_term(names, &mut read)?;
    let plan = plan_segments(names)?;

    let mut loaded: Option<Entry> = None;
    let mut next_index = plan.start_index;
    if let Some(closed) = &plan.last_closed {
        let bytes = read_listed(closed.name, &mut read)?;
        let term = read_closed_segment(closed, &bytes)?;
        loaded = Some(Entry {
            term,
            index: closed.last,
        });
        next_index = closed
            .last
            .checked_add(1)
            .ok_or_else(|| overflow(closed.name))?;
    }
    for name in &plan.open {
        let bytes = read_listed(name, &mut read)?;
        if let Some(batches) = read_open_segment(name, &bytes)? {
            let index = next_index
                .checked_add(batches.entries.saturating_sub(1))
                .ok_or_else(|| overflow(name))?;
            loaded = Some(Entry {
                term: batches.last_term,
                index,
            });
            next_index = index.checked_add(1).ok_or_else(|| overflow(name))?;
        }
    }

    let last = match (plan.snapshot, loaded) {
        (Some(snapshot), Some(entry)) if entry.index < snapshot.index => {
            return Err(RaftLogError::BadSequence(format!(
                "the last entry on disk has index {}, behind the snapshot at {}",
                entry.index, snapshot.index
            )));
        }
        (_, Some(entry)) => Some(entry),
        (snapshot, None) => snapshot,
    };
    Ok(LogSummary { current_term, last })
}

fn read_listed(
    name: &str,
    read: &mut impl FnMut(&str) -> Option<Vec<u8>>,
) -> Result<Vec<u8>, RaftLogError> {
    read(name).ok_or_else(|| RaftLogError::Unreadable {
        file: name.to_string(),
    })
}

fn overflow(name: &str) -> RaftLogError {
    RaftLogError::BadSequence(format!("{name}: log index overflows"))
}

// ---- metadata ---------------------------------------------------------------------------

fn listed_metadata(names: &[String]) -> impl Iterator<Item = &'static str> + '_ {
    METADATA_FILES
        .into_iter()
        .filter(move |wanted| names.iter().any(|name| name == wanted))
}

#[derive(Debug, Clone, Copy)]
struct Metadata {
    version: u64,
    term: u64,
}

fn current_term(
    names: &[String],
    read: &mut impl FnMut(&str) -> Option<Vec<u8>>,
) -> Result<u64, RaftLogError> {
    let mut newest: Option<Metadata> = None;
    for name in listed_metadata(names) {
        let bytes = read_listed(name, read)?;
        let Some(metadata) = parse_metadata(name, &bytes)? else {
            continue;
        };
        match newest {
            Some(other) if other.version == metadata.version => {
                return Err(RaftLogError::MetadataVersionTie {
                    version: metadata.version,
                });
            }
            Some(other) if other.version > metadata.version => {}
            _ => newest = Some(metadata),
        }
    }
    Ok(newest.map_or(0, |metadata| metadata.term))
}

/// `None` for a torn write (shorter than the fixed size), which libraft treats as absent.
fn parse_metadata(name: &str, bytes: &[u8]) -> Result<Option<Metadata>, RaftLogError> {
    let bad = |problem: String| RaftLogError::BadMetadata {
        file: name.to_string(),
        problem,
    };
    if bytes.len() < METADATA_SIZE {
        return Ok(None);
    }
    if bytes.len() > METADATA_SIZE {
        return Err(bad(format!(
            "{} bytes instead of {METADATA_SIZE}",
            bytes.len()
        )));
    }
    let mut cursor = Cursor::new(bytes, 0);
    let format = cursor.u64().unwrap_or_default();
    let version = cursor.u64().unwrap_or_default();
    let term = cursor.u64().unwrap_or_default();
    if format != DISK_FORMAT {
        return Err(bad(format!("format version {format}")));
    }
    if version == 0 {
        return Err(bad("version is zero".to_string()));
    }
    Ok(Some(Metadata { version, term }))
}

// ---- names ------------------------------------------------------------------------------

/// A closed segment's name and the index range it claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct ClosedSegment<'a> {
    first: u64,
    last: u64,
    name: &'a str,
}

/// Digits only, as libraft writes them (its `sscanf` would also take a sign or spaces).
fn parse_decimal(digits: &str, max_digits: usize) -> Option<u64> {
    if digits.is_empty() || digits.len() > max_digits || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    digits.parse().ok()
}

/// `%016llu-%016llu`: `sscanf` stops each number after 16 digits.
fn parse_closed(name: &str) -> Option<ClosedSegment<'_>> {
    let (first, last) = name.split_once('-')?;
    Some(ClosedSegment {
        first: parse_decimal(first, 16)?,
        last: parse_decimal(last, 16)?,
        name,
    })
}

fn parse_open(name: &str) -> Option<u64> {
    parse_decimal(name.strip_prefix("open-")?, 20)
}

/// `snapshot-<term>-<index>-<timestamp>.meta` to (term, index, timestamp) and the name of the
/// data file it describes.
fn parse_snapshot_meta(name: &str) -> Option<((u64, u64, u64), &str)> {
    let data_file = name.strip_suffix(SNAPSHOT_META_SUFFIX)?;
    let mut numbers = data_file.strip_prefix("snapshot-")?.splitn(3, '-');
    let term = parse_decimal(numbers.next()?, 20)?;
    let index = parse_decimal(numbers.next()?, 20)?;
    let timestamp = parse_decimal(numbers.next()?, 20)?;
    Some(((term, index, timestamp), data_file))
}

// ---- which segments count ---------------------------------------------------------------

/// What the names alone say about the log.
#[derive(Debug)]
struct SegmentPlan<'a> {
    snapshot: Option<Entry>,
    /// Index of the first entry the segments hold.
    start_index: u64,
    /// The newest closed segment that counts.
    last_closed: Option<ClosedSegment<'a>>,
    /// The open segments, in counter order.
    open: Vec<&'a str>,
}

fn plan_segments(names: &[String]) -> Result<SegmentPlan<'_>, RaftLogError> {
    let listed: HashSet<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|name| name.len() < FILENAME_LEN)
        .collect();
    let mut closed: Vec<ClosedSegment> = Vec::new();
    let mut open: Vec<(u64, &str)> = Vec::new();
    let mut newest_snapshot: Option<(u64, u64, u64)> = None;
    for &name in &listed {
        if METADATA_FILES.contains(&name) {
            continue;
        }
        if let Some((position, data_file)) = parse_snapshot_meta(name) {
            // Without its data file the snapshot was never finished (or is being written).
            if listed.contains(data_file) {
                newest_snapshot = newest_snapshot.max(Some(position));
            }
        } else if let Some(segment) = parse_closed(name) {
            closed.push(segment);
        } else if let Some(counter) = parse_open(name) {
            open.push((counter, name));
        }
    }
    let snapshot = newest_snapshot.map(|(term, index, _)| Entry { term, index });
    closed.sort();
    open.sort();
    if let Some(pair) = open.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        return Err(RaftLogError::BadSequence(format!(
            "open segments {} and {} have the same counter",
            pair[0].1, pair[1].1
        )));
    }
    if let Some(segment) = closed.iter().find(|segment| segment.first > segment.last) {
        return Err(RaftLogError::BadSequence(format!(
            "closed segment {} ends before it starts",
            segment.name
        )));
    }

    let mut start_index = 1;
    if let Some(snapshot) = snapshot {
        let after_snapshot = snapshot
            .index
            .checked_add(1)
            .ok_or_else(|| RaftLogError::BadSequence("snapshot index overflows".to_string()))?;
        start_index = after_snapshot;
        if let Some(newest) = closed.last().copied() {
            if newest.last < snapshot.index && open.is_empty() {
                // Compacted away: the snapshot is the whole log.
                closed.clear();
            } else {
                // Keep the newest contiguous run of closed segments.
                let mut run_start = closed.len() - 1;
                while run_start > 0
                    && closed
                        .get(run_start - 1)
                        .and_then(|older| older.last.checked_add(1))
                        == closed.get(run_start).map(|newer| newer.first)
                {
                    run_start -= 1;
                }
                closed.drain(..run_start);
                if let Some(oldest) = closed.first() {
                    if oldest.first > after_snapshot {
                        return Err(RaftLogError::BadSequence(format!(
                            "closed segment {} starts after the snapshot at {}",
                            oldest.name, snapshot.index
                        )));
                    }
                    start_index = oldest.first;
                }
            }
        }
    }

    let mut expected_first = Some(start_index);
    for segment in &closed {
        if Some(segment.first) != expected_first {
            return Err(RaftLogError::BadSequence(format!(
                "closed segment {} should start at index {}",
                segment.name,
                expected_first.map_or_else(|| "past the maximum".to_string(), |i| i.to_string())
            )));
        }
        expected_first = segment.last.checked_add(1);
    }

    Ok(SegmentPlan {
        snapshot,
        start_index,
        last_closed: closed.last().copied(),
        open: open.into_iter().map(|(_, name)| name).collect(),
    })
}

// ---- segments ---------------------------------------------------------------------------

/// The entry count of the batches read and the term of the last entry.
#[derive(Debug, Clone, Copy)]
struct Batches {
    entries: u64,
    last_term: u64,
}

/// How a batch failed to load, in the classes libraft's loader tells apart.
#[derive(Debug)]
enum BatchError {
    /// `RAFT_CORRUPT`: in an open segment, the log ends before this batch.
    Corrupt(String),
    /// `RAFT_IOERR` (runs past the end of the file) or `RAFT_MALFORMED` (unknown entry type):
    /// libraft refuses to load, open segment or not.
    Fatal(String),
}

impl BatchError {
    fn into_error(self, name: &str, offset: usize) -> RaftLogError {
        let (BatchError::Corrupt(problem) | BatchError::Fatal(problem)) = self;
        RaftLogError::BadSegment {
            file: name.to_string(),
            offset,
            problem,
        }
    }
}

fn bad_segment(name: &str, offset: usize, problem: String) -> RaftLogError {
    RaftLogError::BadSegment {
        file: name.to_string(),
        offset,
        problem,
    }
}

/// The segment's format version; libraft rejects files too short to hold one.
fn segment_format(name: &str, bytes: &[u8]) -> Result<u64, RaftLogError> {
    Cursor::new(bytes, 0)
        .u64()
        .ok_or_else(|| bad_segment(name, 0, format!("file has only {} bytes", bytes.len())))
}

/// Checks a closed segment throughout and returns the term of its last entry.
fn read_closed_segment(segment: &ClosedSegment, bytes: &[u8]) -> Result<u64, RaftLogError> {
    let name = segment.name;
    if bytes.is_empty() {
        return Err(bad_segment(name, 0, "file is empty".to_string()));
    }
    let format = segment_format(name, bytes)?;
    if format != DISK_FORMAT {
        return Err(bad_segment(name, 0, format!("format version {format}")));
    }
    let mut offset = 8;
    let mut entries: u64 = 0;
    // Like libraft, at least one batch, then batches until one ends at the end of the file.
    let last_term = loop {
        let batch = read_batch(bytes, &mut offset).map_err(|e| e.into_error(name, offset))?;
        entries = entries.saturating_add(batch.entries);
        if offset == bytes.len() {
            break batch.last_term;
        }
    };
    let expected = segment.last.saturating_sub(segment.first).saturating_add(1);
    if entries != expected {
        return Err(bad_segment(
            name,
            offset,
            format!("{entries} entries where the name says {expected}"),
        ));
    }
    Ok(last_term)
}

/// The valid batches at the start of an open segment; `None` when it holds none.
fn read_open_segment(name: &str, bytes: &[u8]) -> Result<Option<Batches>, RaftLogError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let format = segment_format(name, bytes)?;
    let after_format = bytes.get(8..).unwrap_or_default();
    if format == 0 && after_format.iter().all(|&b| b == 0) {
        // Preallocated, never written.
        return Ok(None);
    }
    if format != DISK_FORMAT {
        return Err(bad_segment(name, 0, format!("format version {format}")));
    }
    let mut offset = 8;
    let mut loaded: Option<Batches> = None;
    loop {
        match read_batch(bytes, &mut offset) {
            Ok(batch) => {
                loaded = Some(Batches {
                    entries: loaded
                        .map_or(0, |so_far| so_far.entries)
                        .saturating_add(batch.entries),
                    last_term: batch.last_term,
                });
                if offset == bytes.len() {
                    break;
                }
            }
            // A torn or never-written batch (usually zeros): the log ends here.
            Err(BatchError::Corrupt(_)) => break,
            Err(fatal @ BatchError::Fatal(_)) => return Err(fatal.into_error(name, offset)),
        }
    }
    Ok(loaded)
}

/// Reads the batch at `offset` and moves `offset` past it; on error `offset` stays put.
fn read_batch(bytes: &[u8], offset: &mut usize) -> Result<Batches, BatchError> {
    let short = |what: &str| BatchError::Fatal(format!("file ends inside the batch {what}"));
    let mut cursor = Cursor::new(bytes, *offset);
    let header_crc = cursor.u32().ok_or_else(|| short("checksums"))?;
    let data_crc = cursor.u32().ok_or_else(|| short("checksums"))?;
    let header_start = cursor.offset;
    let count = cursor.u64().ok_or_else(|| short("entry count"))?;
    if count == 0 {
        return Err(BatchError::Corrupt("entry count is zero".to_string()));
    }
    if count > MAX_BATCH_ENTRIES {
        return Err(BatchError::Corrupt(format!(
            "entry count {count} is too high"
        )));
    }
    // count <= MAX_BATCH_ENTRIES, so this cannot overflow.
    let entry_headers_len = usize::try_from(count)
        .ok()
        .and_then(|count| count.checked_mul(ENTRY_HEADER_SIZE))
        .ok_or_else(|| short("header"))?;
    let entry_headers = cursor
        .take(entry_headers_len)
        .ok_or_else(|| short("header"))?;
    let header = bytes
        .get(header_start..cursor.offset)
        .ok_or_else(|| short("header"))?;
    if crc32(header, 0) != header_crc {
        return Err(BatchError::Corrupt("header checksum mismatch".to_string()));
    }

    let mut headers = Cursor::new(entry_headers, 0);
    let mut data_len: u64 = 0;
    let mut last_term = 0;
    while let (Some(term), Some(kind), Some(_unused), Some(len)) = (
        headers.u64(),
        headers.take(1),
        headers.take(3),
        headers.u32(),
    ) {
        let kind = kind.first().copied().unwrap_or_default();
        // RAFT_COMMAND, RAFT_BARRIER, RAFT_CHANGE.
        if !(1..=3).contains(&kind) {
            return Err(BatchError::Fatal(format!("unknown entry type {kind}")));
        }
        data_len = data_len.saturating_add(u64::from(len));
        last_term = term;
    }
    let data = usize::try_from(data_len)
        .ok()
        .and_then(|len| cursor.take(len))
        .ok_or_else(|| short("data"))?;
    if crc32(data, 0) != data_crc {
        return Err(BatchError::Corrupt("data checksum mismatch".to_string()));
    }
    *offset = cursor.offset;
    Ok(Batches {
        entries: count,
        last_term,
    })
}

/// A bounds-checked little-endian reader.
struct Cursor<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8], offset: usize) -> Self {
        Cursor { bytes, offset }
    }

    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let end = self.offset.checked_add(len)?;
        let taken = self.bytes.get(self.offset..end)?;
        self.offset = end;
        Some(taken)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

// ---- checksum ---------------------------------------------------------------------------

/// libraft's `byteCrcTable`: polynomial 0x04C11DB7, most significant bit first.
const CRC_TABLE: [u32; 256] = crc_table();

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut byte = 0;
    while byte < 256 {
        let mut crc = (byte as u32) << 24;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04C1_1DB7
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[byte] = crc;
        byte += 1;
    }
    table
}

/// `byteCrc32(buf, len, init)`: no reflection and no final XOR; libraft passes `init` 0.
fn crc32(bytes: &[u8], init: u32) -> u32 {
    bytes.iter().fold(init, |crc, &byte| {
        (crc << 8) ^ CRC_TABLE[usize::from((crc >> 24) as u8 ^ byte)]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    // ---- builders (the writer side of uv_segment.c / uv_metadata.c) ----

    fn metadata(version: u64, term: u64, voted_for: u64) -> Vec<u8> {
        [DISK_FORMAT, version, term, voted_for]
            .iter()
            .flat_map(|word| word.to_le_bytes())
            .collect()
    }

    /// One batch of (term, data) command entries; data lengths are multiples of 8 as
    /// libraft requires.
    fn batch(entries: &[(u64, &[u8])]) -> Vec<u8> {
        batch_of_type(entries, 1)
    }

    fn batch_of_type(entries: &[(u64, &[u8])], kind: u8) -> Vec<u8> {
        let mut header = (entries.len() as u64).to_le_bytes().to_vec();
        let mut data = Vec::new();
        for (term, payload) in entries {
            header.extend(term.to_le_bytes());
            header.extend([kind, 0, 0, 0]);
            header.extend((payload.len() as u32).to_le_bytes());
            data.extend_from_slice(payload);
        }
        let mut out = crc32(&header, 0).to_le_bytes().to_vec();
        out.extend(crc32(&data, 0).to_le_bytes());
        out.extend(header);
        out.extend(data);
        out
    }

    /// `n` single-entry batches of the given term.
    fn batches(term: u64, n: usize) -> Vec<u8> {
        (0..n).flat_map(|_| batch(&[(term, &[7u8; 8])])).collect()
    }

    fn segment(batches: &[u8]) -> Vec<u8> {
        let mut out = DISK_FORMAT.to_le_bytes().to_vec();
        out.extend_from_slice(batches);
        out
    }

    /// An open segment: preallocated and zero-filled after what was written.
    fn open_segment(batches: &[u8], size: usize) -> Vec<u8> {
        let mut out = segment(batches);
        out.resize(size.max(out.len()), 0);
        out
    }

    fn closed_name(first: u64, last: u64) -> String {
        format!("{first:016}-{last:016}")
    }

    struct Dir(HashMap<String, Vec<u8>>);

    impl Dir {
        fn new(files: Vec<(String, Vec<u8>)>) -> Dir {
            Dir(files.into_iter().collect())
        }

        fn names(&self) -> Vec<String> {
            let mut names: Vec<String> = self.0.keys().cloned().collect();
            names.sort();
            names
        }

        /// Runs [`last_entry`], checking it only reads what [`files_to_read`] lists.
        fn summary(&self) -> Result<LogSummary, RaftLogError> {
            let names = self.names();
            let allowed = files_to_read(&names);
            last_entry(&names, |name| {
                assert!(
                    allowed.iter().any(|a| a == name),
                    "read {name} not in {allowed:?}"
                );
                self.0.get(name).cloned()
            })
        }

        fn last(&self) -> Option<Entry> {
            self.summary().unwrap().last
        }
    }

    fn file(name: impl Into<String>, bytes: Vec<u8>) -> (String, Vec<u8>) {
        (name.into(), bytes)
    }

    fn at(term: u64, index: u64) -> Option<Entry> {
        Some(Entry { term, index })
    }

    // ---- checksum ----

    #[test]
    fn crc_matches_libraft_table_and_check_value() {
        // Entries of byteCrcTable in libraft's src/byte.c.
        assert_eq!(CRC_TABLE[1], 0x04c1_1db7);
        assert_eq!(CRC_TABLE[2], 0x0982_3b6e);
        assert_eq!(CRC_TABLE[128], 0x690c_e0ee);
        assert_eq!(CRC_TABLE[255], 0xb1f7_40b4);
        assert_eq!(crc32(b"123456789", 0), 0x89a1_897f);
        // Chaining, as the writer does entry by entry.
        assert_eq!(crc32(b"6789", crc32(b"12345", 0)), 0x89a1_897f);
    }

    #[test]
    fn reads_a_batch_written_by_libraft() {
        // The first closed segment dqlite-demo wrote on bootstrap (a configuration entry).
        let bytes: Vec<u8> = [
            "0100000000000000",
            "2d99f98600c06b54",
            "0100000000000000",
            "0100000000000000",
            "0300000028000000",
            "0101000000000000",
            "00be55318c8571c1",
            "2d3132372e302e37",
            "372e313a32393030",
            "3100010000000000",
        ]
        .iter()
        .flat_map(|hex| {
            (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        })
        .collect();
        let dir = Dir::new(vec![file(closed_name(1, 1), bytes)]);
        assert_eq!(dir.last(), at(1, 1));
    }

    // ---- metadata ----

    #[test]
    fn the_higher_metadata_version_wins() {
        let dir = Dir::new(vec![
            file("metadata1", metadata(3, 7, 1)),
            file("metadata2", metadata(4, 8, 2)),
        ]);
        assert_eq!(dir.summary().unwrap().current_term, 8);
        let dir = Dir::new(vec![
            file("metadata1", metadata(5, 9, 1)),
            file("metadata2", metadata(4, 8, 2)),
        ]);
        assert_eq!(dir.summary().unwrap().current_term, 9);
    }

    #[test]
    fn metadata_edge_cases() {
        let dir = Dir::new(vec![]);
        assert_eq!(
            dir.summary().unwrap(),
            LogSummary {
                current_term: 0,
                last: None
            }
        );
        // A torn write counts as absent.
        let dir = Dir::new(vec![
            file("metadata1", metadata(3, 7, 1)),
            file("metadata2", metadata(4, 8, 2)[..20].to_vec()),
        ]);
        assert_eq!(dir.summary().unwrap().current_term, 7);
        let tie = Dir::new(vec![
            file("metadata1", metadata(4, 7, 1)),
            file("metadata2", metadata(4, 8, 2)),
        ]);
        assert_eq!(
            tie.summary(),
            Err(RaftLogError::MetadataVersionTie { version: 4 })
        );
        let mut long = metadata(1, 1, 0);
        long.push(0);
        let mut other_format = metadata(1, 1, 0);
        other_format[0] = 2;
        for bad in [long, other_format, metadata(0, 1, 0)] {
            let dir = Dir::new(vec![file("metadata1", bad)]);
            assert!(matches!(
                dir.summary(),
                Err(RaftLogError::BadMetadata { .. })
            ));
        }
        // Listed but unreadable.
        let names = vec!["metadata1".to_string()];
        assert_eq!(
            last_entry(&names, |_| None),
            Err(RaftLogError::Unreadable {
                file: "metadata1".into()
            })
        );
    }

    // ---- closed segments ----

    #[test]
    fn closed_segments_end_the_log_at_the_last_name() {
        let dir = Dir::new(vec![
            file("metadata1", metadata(1, 2, 1)),
            file(closed_name(1, 1), segment(&batches(1, 1))),
            file(
                closed_name(2, 5),
                segment(&[batches(1, 2), batches(2, 2)].concat()),
            ),
        ]);
        assert_eq!(
            files_to_read(&dir.names()),
            ["metadata1", &closed_name(2, 5)]
        );
        assert_eq!(
            dir.summary().unwrap(),
            LogSummary {
                current_term: 2,
                last: at(2, 5)
            }
        );
        // Several entries in one batch: the last one's term counts.
        let dir = Dir::new(vec![file(
            closed_name(1, 3),
            segment(&batch(&[(1, &[0; 8]), (2, &[]), (3, &[1; 16])])),
        )]);
        assert_eq!(dir.last(), at(3, 3));
    }

    #[test]
    fn closed_segment_problems_are_errors() {
        let good = segment(&batches(1, 3));
        let mut bad_data = good.clone();
        let last = bad_data.len() - 1;
        bad_data[last] ^= 1;
        let mut bad_header = good.clone();
        bad_header[8] ^= 1;
        let mut trailing_zeros = good.clone();
        trailing_zeros.extend([0; 64]);
        let mut bad_format = good.clone();
        bad_format[0] = 2;
        let cases = [
            bad_data,
            bad_header,
            trailing_zeros,
            bad_format,
            good[..good.len() - 4].to_vec(),
            segment(&batches(1, 2)), // fewer entries than the name says
            segment(&batches(1, 4)), // more
            Vec::new(),
            vec![1, 0, 0],
            segment(&[]),
            segment(&batch_of_type(&[(1, &[0; 8])], 9)),
        ];
        for (i, bytes) in cases.into_iter().enumerate() {
            let dir = Dir::new(vec![file(closed_name(1, 3), bytes)]);
            assert!(
                matches!(dir.summary(), Err(RaftLogError::BadSegment { .. })),
                "case {i}: {:?}",
                dir.summary()
            );
        }
    }

    #[test]
    fn closed_segment_names_must_follow_on() {
        for names in [
            vec![closed_name(2, 3)],                    // does not start at 1
            vec![closed_name(1, 2), closed_name(4, 5)], // gap
            vec![closed_name(1, 3), closed_name(3, 5)], // overlap
            vec![closed_name(3, 1)],
        ] {
            let dir = Dir::new(names.into_iter().map(|n| file(n, Vec::new())).collect());
            assert!(matches!(dir.summary(), Err(RaftLogError::BadSequence(_))));
            // Nothing is read past the metadata when the names are inconsistent.
            assert!(files_to_read(&dir.names()).is_empty());
        }
    }

    #[test]
    fn names_are_parsed_as_libraft_writes_them() {
        assert_eq!(
            parse_closed("0000000000000010-0000000000000020").map(|s| (s.first, s.last)),
            Some((10, 20))
        );
        // Decimal, not hex; at most 16 digits each.
        assert_eq!(parse_closed("000000000000000a-0000000000000020"), None);
        assert_eq!(parse_closed("00000000000000010-0000000000000020"), None);
        assert_eq!(parse_closed("1-2-3"), None);
        assert_eq!(parse_open("open-12"), Some(12));
        assert_eq!(parse_open("open-"), None);
        assert_eq!(parse_open("open-1x"), None);
        assert_eq!(parse_open("open-99999999999999999999"), None);
        assert_eq!(
            parse_snapshot_meta("snapshot-2-1024-1700000000000.meta"),
            Some((
                (2, 1024, 1_700_000_000_000),
                "snapshot-2-1024-1700000000000"
            ))
        );
        assert_eq!(parse_snapshot_meta("snapshot-2-1024-1700000000000"), None);
        assert_eq!(parse_snapshot_meta("snapshot-2-1024.meta"), None);
        assert_eq!(parse_snapshot_meta("snapshot-2-1024-1-1.meta"), None);
    }

    // ---- open segments ----

    #[test]
    fn open_segments_follow_the_closed_ones() {
        let dir = Dir::new(vec![
            file("metadata1", metadata(1, 3, 1)),
            file(closed_name(1, 4), segment(&batches(1, 4))),
            file(
                "open-7",
                open_segment(&[batches(2, 3), batches(3, 2)].concat(), 4096),
            ),
            file("open-8", open_segment(&[], 4096)),
            file("cluster.yaml", b"garbage".to_vec()),
        ]);
        assert_eq!(
            files_to_read(&dir.names()),
            ["metadata1", &closed_name(1, 4), "open-7", "open-8"]
        );
        assert_eq!(dir.last(), at(3, 9));
    }

    #[test]
    fn open_segments_in_counter_order() {
        // open-10 sorts before open-9 as text, but after it as a counter.
        let dir = Dir::new(vec![
            file("open-9", open_segment(&batches(1, 2), 1024)),
            file("open-10", open_segment(&batches(2, 3), 1024)),
        ]);
        assert_eq!(dir.last(), at(2, 5));
        let dir = Dir::new(vec![
            file("open-9", open_segment(&batches(2, 2), 1024)),
            file("open-10", Vec::new()),
            file("open-11", open_segment(&[], 1024)),
        ]);
        assert_eq!(dir.last(), at(2, 2));
        let dir = Dir::new(vec![
            file("open-1", open_segment(&[], 1024)),
            file("open-01", open_segment(&[], 1024)),
        ]);
        assert!(matches!(dir.summary(), Err(RaftLogError::BadSequence(_))));
    }

    #[test]
    fn a_torn_batch_ends_an_open_segment() {
        let good = batches(2, 3);
        let torn = batch(&[(3, &[5; 64])]);
        // Crash while writing: header checksum over partly written bytes fails, zeros follow.
        let mut half = torn[..24].to_vec();
        half.resize(torn.len(), 0);
        let dir = Dir::new(vec![file(
            "open-1",
            open_segment(&[good.clone(), half].concat(), 4096),
        )]);
        assert_eq!(dir.last(), at(2, 3));
        // Data checksum wrong: also the end, even with non-zero bytes after it.
        let mut bad_data = torn.clone();
        let last = bad_data.len() - 1;
        bad_data[last] ^= 0xff;
        bad_data.extend(batches(3, 2));
        let dir = Dir::new(vec![file(
            "open-1",
            open_segment(&[good.clone(), bad_data].concat(), 4096),
        )]);
        assert_eq!(dir.last(), at(2, 3));
        // A later open segment continues where the valid entries ended, as in libraft.
        let dir = Dir::new(vec![
            file(
                "open-1",
                open_segment(&[good.clone(), torn[..30].to_vec()].concat(), 4096),
            ),
            file("open-2", open_segment(&batches(4, 1), 4096)),
        ]);
        assert_eq!(dir.last(), at(4, 4));
        // An entry count beyond libraft's bound is corruption too.
        let mut huge = (MAX_BATCH_ENTRIES + 1).to_le_bytes().to_vec();
        huge.splice(0..0, [0u8; 8]);
        let dir = Dir::new(vec![file(
            "open-1",
            open_segment(&[good.clone(), huge].concat(), 4096),
        )]);
        assert_eq!(dir.last(), at(2, 3));
    }

    #[test]
    fn open_segment_states_libraft_refuses() {
        let good = batches(2, 3);
        let torn = batch(&[(3, &[5; 64])]);
        let mut other_format = open_segment(&good, 4096);
        other_format[0] = 2;
        let mut format_zero_with_data = open_segment(&good, 4096);
        format_zero_with_data[0] = 0;
        for (i, bytes) in [
            // The file ends inside a batch whose header checks out (a short read).
            segment(&[good.clone(), torn[..torn.len() - 8].to_vec()].concat()),
            // ... or inside the next batch's count.
            segment(&[good.clone(), vec![0; 8]].concat()),
            open_segment(
                &[good.clone(), batch_of_type(&[(3, &[0; 8])], 0)].concat(),
                4096,
            ),
            other_format,
            format_zero_with_data,
            vec![1, 0, 0, 0],
        ]
        .into_iter()
        .enumerate()
        {
            let dir = Dir::new(vec![file("open-1", bytes)]);
            assert!(
                matches!(dir.summary(), Err(RaftLogError::BadSegment { .. })),
                "case {i}: {:?}",
                dir.summary()
            );
        }
    }

    #[test]
    fn a_segment_filled_to_the_end_is_complete() {
        let dir = Dir::new(vec![file("open-1", segment(&batches(5, 4)))]);
        assert_eq!(dir.last(), at(5, 4));
    }

    // ---- snapshots ----

    fn snapshot_files(term: u64, index: u64, timestamp: u64) -> Vec<(String, Vec<u8>)> {
        let name = format!("snapshot-{term}-{index}-{timestamp}");
        vec![
            file(format!("{name}.meta"), Vec::new()),
            file(name, vec![1]),
        ]
    }

    #[test]
    fn a_snapshot_alone_is_the_last_entry() {
        let mut files = snapshot_files(3, 2048, 1);
        files.extend(snapshot_files(3, 1024, 2));
        files.push(file("metadata2", metadata(2, 4, 1)));
        let dir = Dir::new(files);
        assert_eq!(files_to_read(&dir.names()), ["metadata2"]);
        assert_eq!(
            dir.summary().unwrap(),
            LogSummary {
                current_term: 4,
                last: at(3, 2048)
            }
        );
        // A .meta without its data file is an unfinished snapshot.
        let dir = Dir::new(vec![file("snapshot-9-4096-1.meta", Vec::new())]);
        assert_eq!(dir.last(), None);
    }

    #[test]
    fn compacted_closed_segments_behind_the_snapshot_are_dropped() {
        let mut files = snapshot_files(2, 100, 1);
        files.push(file(closed_name(1, 50), Vec::new()));
        let dir = Dir::new(files);
        assert!(files_to_read(&dir.names()).is_empty());
        assert_eq!(dir.last(), at(2, 100));
    }

    #[test]
    fn segments_after_a_snapshot() {
        // Closed segments from before the snapshot's trailing window are skipped by names.
        let mut files = snapshot_files(2, 100, 1);
        files.push(file(closed_name(1, 10), Vec::new()));
        files.push(file(closed_name(60, 120), segment(&batches(2, 61))));
        files.push(file("open-3", open_segment(&batches(3, 5), 4096)));
        let dir = Dir::new(files);
        assert_eq!(dir.last(), at(3, 125));
        // Only open segments: they start right after the snapshot.
        let mut files = snapshot_files(2, 100, 1);
        files.push(file("open-3", open_segment(&batches(3, 5), 4096)));
        assert_eq!(Dir::new(files).last(), at(3, 105));
        // Only zeroed open segments: the snapshot is the end.
        let mut files = snapshot_files(2, 100, 1);
        files.push(file("open-3", open_segment(&[], 4096)));
        assert_eq!(Dir::new(files).last(), at(2, 100));
    }

    #[test]
    fn segments_inconsistent_with_the_snapshot() {
        // A gap between the snapshot and the first closed segment.
        let mut files = snapshot_files(2, 100, 1);
        files.push(file(closed_name(150, 160), segment(&batches(2, 11))));
        let dir = Dir::new(files);
        assert!(matches!(dir.summary(), Err(RaftLogError::BadSequence(_))));
        // The entries end before the snapshot although there is an open segment.
        let mut files = snapshot_files(2, 100, 1);
        files.push(file(closed_name(50, 60), segment(&batches(2, 11))));
        files.push(file("open-3", open_segment(&batches(2, 5), 4096)));
        let dir = Dir::new(files);
        assert!(matches!(dir.summary(), Err(RaftLogError::BadSequence(_))));
    }

    #[test]
    fn entries_order_by_term_then_index() {
        let older = Entry {
            term: 2,
            index: 900,
        };
        let newer = Entry { term: 3, index: 10 };
        assert!(older < newer);
        assert!(Entry { term: 3, index: 9 } < newer);
    }

    // ---- garbage never panics ----

    mod garbage {
        use super::*;
        use proptest::prelude::*;

        fn a_name() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("metadata1".to_string()),
                Just("metadata2".to_string()),
                (0u64..6, 0u64..6).prop_map(|(a, b)| closed_name(a, b)),
                (0u64..4).prop_map(|c| format!("open-{c}")),
                (0u64..3, 0u64..8).prop_map(|(t, i)| format!("snapshot-{t}-{i}-1.meta")),
                (0u64..3, 0u64..8).prop_map(|(t, i)| format!("snapshot-{t}-{i}-1")),
                "[a-z0-9.-]{0,20}",
            ]
        }

        proptest! {
            #[test]
            fn arbitrary_files(
                files in proptest::collection::vec(
                    (a_name(), proptest::collection::vec(any::<u8>(), 0..200)),
                    0..6,
                ),
            ) {
                let dir = Dir::new(files);
                let _ = dir.summary();
            }

            #[test]
            fn mutated_segments(
                flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
                cut in any::<usize>(),
                open in any::<bool>(),
            ) {
                let mut bytes = segment(&[batches(1, 2), batch(&[(2, &[3; 24]), (2, &[])])].concat());
                bytes.resize(160, 0);
                for (at, value) in flips {
                    let at = at % bytes.len();
                    bytes[at] = value;
                }
                bytes.truncate(cut % (bytes.len() + 1));
                let name = if open { "open-1".to_string() } else { closed_name(1, 4) };
                let dir = Dir::new(vec![file(name, bytes)]);
                if let Ok(LogSummary { last: Some(entry), .. }) = dir.summary() {
                    prop_assert!(entry.index <= 4);
                }
            }
        }
    }
}
