//! Reads libraft's on-disk log far enough to say what the last entry of a dqlite data
//! directory is, as libraft's own loader would find it on start: the (term, index) that a
//! lost-quorum recovery compares across survivors (term first, then index); and which
//! configuration (membership and roles) libraft would start with, which can be newer than
//! go-dqlite's `cluster.yaml` (refreshed only every 30 s). Sans-IO: the caller lists the
//! directory, reads the files [`files_to_read`] (or [`configuration_files`]) names and hands
//! their bytes to [`last_entry`] (or [`last_configuration`]); only `src/state/` touches the
//! filesystem.
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
//! - Configurations (`start.c`, `snapshot.c`): libraft starts with the snapshot's
//!   configuration and then, if the loaded entries hold any `RAFT_CHANGE` (type 3) entry, with
//!   the last one's, committed or not and whatever its index. The encoding is in
//!   `decode_configuration`, the `.meta` file in `read_snapshot_meta`. libraft stores
//!   roles as `RAFT_STANDBY` 0, `RAFT_VOTER` 1, `RAFT_SPARE` 2; dqlite and go-dqlite use
//!   0 voter, 1 stand-by, 2 spare, which is what [`Server::role`] holds. Checked against
//!   `dqlite -s ... .cluster` on dqlite-demo clusters: joins, stand-bys, a spare, a removal,
//!   role changes, and a single node whose configuration entry was compacted into a snapshot.
//!   In that last, common, case every closed segment that counts is read (up to the
//!   snapshot's 8192 trailing entries) before the `.meta` file answers.
//!
//! Not checked, as it would mean reading files the answer does not depend on: the older
//! closed segments (libraft reads and checks them all), the snapshot files themselves
//! (libraft also needs the data file non-empty and the `.meta` checksum right). libraft 0.15's
//! auto-recovery (renaming a corrupt last segment away and loading again) is not modelled:
//! such directories are reported as errors.

use std::collections::HashSet;
use std::ops::Range;

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
/// `enum raft_entry_type` in `raft.h`: `RAFT_COMMAND = 1, RAFT_BARRIER, RAFT_CHANGE`.
const ENTRY_COMMAND: u8 = 1;
const ENTRY_CHANGE: u8 = 3;

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
    #[error("{file}: {problem}")]
    BadSnapshotMeta { file: String, problem: String },
    #[error("{file}: the configuration at index {index} {problem}")]
    BadConfiguration {
        file: String,
        index: u64,
        problem: String,
    },
}

/// dqlite's role codes (`DQLITE_VOTER`, `DQLITE_STANDBY`, `DQLITE_SPARE`), the ones go-dqlite's
/// `NodeRole` and `cluster.yaml` use. libraft stores other codes; see [`Server::role`].
pub const ROLE_VOTER: u64 = 0;
pub const ROLE_STANDBY: u64 = 1;
pub const ROLE_SPARE: u64 = 2;

/// One server of a raft configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub id: u64,
    pub address: String,
    /// dqlite's role code: [`ROLE_VOTER`] 0, [`ROLE_STANDBY`] 1, [`ROLE_SPARE`] 2. libraft
    /// stores `RAFT_STANDBY` 0, `RAFT_VOTER` 1, `RAFT_SPARE` 2 (`raft.h`); this is translated
    /// as dqlite's `translateRaftRole` does (1 to 0, 0 to 1, 2 to 2).
    pub role: u64,
}

/// The files of the listing that [`last_entry`] reads: the metadata files that exist, the
/// closed segment holding the last closed entries, and every open segment that counts. Snapshots
/// are known from their names. When the names alone are inconsistent only the metadata files
/// are listed, as [`last_entry`] stops there.
pub fn files_to_read(names: &[String]) -> Vec<String> {
    let mut files: Vec<String> = listed_metadata(names).map(str::to_string).collect();
    if let Ok(plan) = plan_segments(names) {
        files.extend(plan.last_closed().map(|closed| closed.name.to_string()));
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
    if let Some(closed) = plan.last_closed() {
        let bytes = read_listed(closed.name, &mut read)?;
        let term = read_closed_segment(&closed, &bytes)?.last_term;
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

/// The files of the listing that [`last_configuration`] may read, in the order it reads them:
/// the newest snapshot's `.meta`, every open segment that counts, then the closed segments
/// that count, newest first (it stops at the first holding a configuration). Empty when the
/// names alone are inconsistent, as [`last_configuration`] stops there.
pub fn configuration_files(names: &[String]) -> Vec<String> {
    let Ok(plan) = plan_segments(names) else {
        return Vec::new();
    };
    let mut files: Vec<String> = plan.snapshot_meta.map(str::to_string).into_iter().collect();
    files.extend(plan.open.iter().map(|name| name.to_string()));
    files.extend(
        plan.closed
            .iter()
            .rev()
            .map(|closed| closed.name.to_string()),
    );
    files
}

/// The configuration libraft would start with on this data directory, and the index it was
/// found at: that of the last `RAFT_CHANGE` entry of the log as libraft loads it (the same
/// segments and truncation rules as [`last_entry`]; committed or not, as libraft's
/// `restoreEntries` does not care), else the one in the newest snapshot's `.meta` file with
/// the configuration index recorded there; `None` when there is neither. `names` and `read`
/// are as for [`last_entry`]; only files [`configuration_files`] names are asked for.
///
/// The `.meta` file is always read and checked (libraft loads it even when the log overrides
/// it), all open segments are read (the index of their entries depends on the ones before),
/// and closed segments only newest first until one holds a configuration entry. Only the
/// entry that counts is decoded, as in libraft; an error decoding it is one libraft would
/// also refuse to start with.
pub fn last_configuration(
    names: &[String],
    mut read: impl FnMut(&str) -> Option<Vec<u8>>,
) -> Result<Option<(u64, Vec<Server>)>, RaftLogError> {
    let plan = plan_segments(names)?;
    let from_snapshot = match plan.snapshot_meta {
        Some(name) => Some(read_snapshot_meta(name, &read_listed(name, &mut read)?)?),
        None => None,
    };

    let last_closed = plan.last_closed();
    let mut last_index = last_closed.map(|closed| closed.last);
    let mut next_index = match last_closed {
        Some(closed) => closed
            .last
            .checked_add(1)
            .ok_or_else(|| overflow(closed.name))?,
        None => plan.start_index,
    };
    // The newest configuration entry of the open segments: file, index and data.
    let mut in_open: Option<(&str, u64, Vec<u8>)> = None;
    for &name in &plan.open {
        let bytes = read_listed(name, &mut read)?;
        let Some(batches) = read_open_segment(name, &bytes)? else {
            continue;
        };
        if let Some((position, data)) = &batches.last_change {
            let index = next_index
                .checked_add(*position)
                .ok_or_else(|| overflow(name))?;
            let data = bytes.get(data.clone()).unwrap_or_default().to_vec();
            in_open = Some((name, index, data));
        }
        let index = next_index
            .checked_add(batches.entries.saturating_sub(1))
            .ok_or_else(|| overflow(name))?;
        last_index = Some(index);
        next_index = index.checked_add(1).ok_or_else(|| overflow(name))?;
    }
    if let (Some(snapshot), Some(index)) = (plan.snapshot, last_index) {
        if index < snapshot.index {
            return Err(RaftLogError::BadSequence(format!(
                "the last entry on disk has index {index}, behind the snapshot at {}",
                snapshot.index
            )));
        }
    }
    if let Some((name, index, data)) = in_open {
        return decode_entry(name, index, &data).map(Some);
    }

    for closed in plan.closed.iter().rev() {
        let bytes = read_listed(closed.name, &mut read)?;
        if let Some((position, data)) = read_closed_segment(closed, &bytes)?.last_change {
            let index = closed
                .first
                .checked_add(position)
                .ok_or_else(|| overflow(closed.name))?;
            let data = bytes.get(data).unwrap_or_default();
            return decode_entry(closed.name, index, data).map(Some);
        }
    }
    Ok(from_snapshot)
}

fn decode_entry(name: &str, index: u64, data: &[u8]) -> Result<(u64, Vec<Server>), RaftLogError> {
    decode_configuration(data)
        .map(|servers| (index, servers))
        .map_err(|problem| RaftLogError::BadConfiguration {
            file: name.to_string(),
            index,
            problem,
        })
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
    /// The `.meta` file of the newest snapshot.
    snapshot_meta: Option<&'a str>,
    /// The closed segments that count, oldest first.
    closed: Vec<ClosedSegment<'a>>,
    /// The open segments, in counter order.
    open: Vec<&'a str>,
}

impl<'a> SegmentPlan<'a> {
    /// The newest closed segment that counts.
    fn last_closed(&self) -> Option<ClosedSegment<'a>> {
        self.closed.last().copied()
    }
}

fn plan_segments(names: &[String]) -> Result<SegmentPlan<'_>, RaftLogError> {
    let listed: HashSet<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|name| name.len() < FILENAME_LEN)
        .collect();
    let mut closed: Vec<ClosedSegment> = Vec::new();
    let mut open: Vec<(u64, &str)> = Vec::new();
    let mut newest_snapshot: Option<((u64, u64, u64), &str)> = None;
    for &name in &listed {
        if METADATA_FILES.contains(&name) {
            continue;
        }
        if let Some((position, data_file)) = parse_snapshot_meta(name) {
            // Without its data file the snapshot was never finished (or is being written).
            if listed.contains(data_file) {
                newest_snapshot = newest_snapshot.max(Some((position, name)));
            }
        } else if let Some(segment) = parse_closed(name) {
            closed.push(segment);
        } else if let Some(counter) = parse_open(name) {
            open.push((counter, name));
        }
    }
    let snapshot = newest_snapshot.map(|((term, index, _), _)| Entry { term, index });
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
        snapshot_meta: newest_snapshot.map(|(_, name)| name),
        closed,
        open: open.into_iter().map(|(_, name)| name).collect(),
    })
}

// ---- configurations ---------------------------------------------------------------------

/// `ENCODING_FORMAT` in `configuration.c`.
const CONFIGURATION_FORMAT: u8 = 1;
/// `raft.h` role codes.
const RAFT_STANDBY: u8 = 0;
const RAFT_VOTER: u8 = 1;
const RAFT_SPARE: u8 = 2;
/// `UV__META_MAX_CONFIGURATION_SIZE`.
const MAX_META_CONFIGURATION: u64 = 1024 * 1024;
/// Format, checksum, configuration index, configuration length.
const SNAPSHOT_META_HEADER: usize = 32;

/// `configurationDecode` (the same in libraft 0.11.3 and 0.15.0): u8 format 1, u64 server
/// count (unaligned), then per server u64 id (unaligned), the address with its NUL terminator
/// (`bytePutString`: no padding of its own) and a u8 role. `configurationEncode` pads the whole
/// to a multiple of 8 bytes (`bytePad64`), which the decoder ignores, as it ignores whatever
/// follows the last server. libraft's own reads are unchecked past the end of the buffer; here
/// running out is an error. Beyond that, libraft rejects an address without a terminator, a
/// role other than 0, 1 or 2, a duplicate id or address (`configurationAdd`), and asserts the
/// buffer is not empty and no id is 0: all errors here. A count of 0 decodes to no servers.
fn decode_configuration(bytes: &[u8]) -> Result<Vec<Server>, String> {
    let short = || format!("ends early ({} bytes)", bytes.len());
    let mut cursor = Cursor::new(bytes, 0);
    let format = cursor.u8().ok_or_else(|| "is empty".to_string())?;
    if format != CONFIGURATION_FORMAT {
        return Err(format!("has encoding format {format}"));
    }
    let count = cursor.u64().ok_or_else(short)?;
    let mut servers = Vec::new();
    let mut ids = HashSet::new();
    let mut addresses = HashSet::new();
    // Each server takes at least 10 bytes, so a bogus count runs out of bytes soon.
    for _ in 0..count {
        let id = cursor.u64().ok_or_else(short)?;
        let rest = bytes.get(cursor.offset..).unwrap_or_default();
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| format!("has an address without a terminator (server {id})"))?;
        let address = cursor.take(len).ok_or_else(short)?;
        cursor.take(1).ok_or_else(short)?;
        let role = match cursor.u8().ok_or_else(short)? {
            RAFT_VOTER => ROLE_VOTER,
            RAFT_STANDBY => ROLE_STANDBY,
            RAFT_SPARE => ROLE_SPARE,
            other => return Err(format!("gives server {id} the unknown role {other}")),
        };
        if id == 0 {
            return Err("has a server with id 0".to_string());
        }
        let address = String::from_utf8(address.to_vec())
            .map_err(|_| format!("gives server {id} an address that is not UTF-8"))?;
        if !ids.insert(id) {
            return Err(format!("lists server {id} twice"));
        }
        if !addresses.insert(address.clone()) {
            return Err(format!("lists address {address} twice"));
        }
        servers.push(Server { id, address, role });
    }
    Ok(servers)
}

/// A snapshot's `.meta` file (`uvSnapshotLoadMeta`, the same in 0.11.3 and 0.15.0): u64 format
/// (1), u64 whose low 32 bits are the checksum, u64 configuration index, u64 configuration
/// length (neither 0 nor above 1 MiB), then the encoded configuration. The checksum covers the
/// index and length words, then the configuration. A file too short for the header or for the
/// length is a short read; bytes after the configuration are not looked at.
fn read_snapshot_meta(name: &str, bytes: &[u8]) -> Result<(u64, Vec<Server>), RaftLogError> {
    let bad = |problem: String| RaftLogError::BadSnapshotMeta {
        file: name.to_string(),
        problem,
    };
    let mut cursor = Cursor::new(bytes, 0);
    let (Some(format), Some(crc), Some(index), Some(len)) =
        (cursor.u64(), cursor.u64(), cursor.u64(), cursor.u64())
    else {
        return Err(bad(format!("file has only {} bytes", bytes.len())));
    };
    if format != DISK_FORMAT {
        return Err(bad(format!("format version {format}")));
    }
    if len == 0 || len > MAX_META_CONFIGURATION {
        return Err(bad(format!("configuration length {len}")));
    }
    let configuration = usize::try_from(len)
        .ok()
        .and_then(|len| cursor.take(len))
        .ok_or_else(|| {
            bad(format!(
                "file has {} bytes, too few for a {len}-byte configuration",
                bytes.len()
            ))
        })?;
    let covered = bytes.get(16..SNAPSHOT_META_HEADER).unwrap_or_default();
    if crc as u32 != crc32(configuration, crc32(covered, 0)) {
        return Err(bad("checksum mismatch".to_string()));
    }
    decode_entry(name, index, configuration)
}

// ---- segments ---------------------------------------------------------------------------

/// What a run of batches holds: the entry count, the term of the last entry and the last
/// `RAFT_CHANGE` entry, as its position among the entries (from 0) and where its data lies in
/// the file.
#[derive(Debug, Clone)]
struct Batches {
    entries: u64,
    last_term: u64,
    last_change: Option<(u64, Range<usize>)>,
}

impl Batches {
    /// `self` followed by `next`.
    fn then(self, next: Batches) -> Batches {
        let last_change = match next.last_change {
            Some((position, data)) => Some((self.entries.saturating_add(position), data)),
            None => self.last_change,
        };
        Batches {
            entries: self.entries.saturating_add(next.entries),
            last_term: next.last_term,
            last_change,
        }
    }
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

/// Checks a closed segment throughout and returns what it holds.
fn read_closed_segment(segment: &ClosedSegment, bytes: &[u8]) -> Result<Batches, RaftLogError> {
    let name = segment.name;
    if bytes.is_empty() {
        return Err(bad_segment(name, 0, "file is empty".to_string()));
    }
    let format = segment_format(name, bytes)?;
    if format != DISK_FORMAT {
        return Err(bad_segment(name, 0, format!("format version {format}")));
    }
    let mut offset = 8;
    let mut loaded: Option<Batches> = None;
    // Like libraft, at least one batch, then batches until one ends at the end of the file.
    let loaded = loop {
        let batch = read_batch(bytes, &mut offset).map_err(|e| e.into_error(name, offset))?;
        let so_far = match loaded.take() {
            Some(so_far) => so_far.then(batch),
            None => batch,
        };
        if offset == bytes.len() {
            break so_far;
        }
        loaded = Some(so_far);
    };
    let expected = segment.last.saturating_sub(segment.first).saturating_add(1);
    if loaded.entries != expected {
        return Err(bad_segment(
            name,
            offset,
            format!("{} entries where the name says {expected}", loaded.entries),
        ));
    }
    Ok(loaded)
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
                loaded = Some(match loaded.take() {
                    Some(so_far) => so_far.then(batch),
                    None => batch,
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

    let data_start = cursor.offset;
    let mut headers = Cursor::new(entry_headers, 0);
    let mut data_len: u64 = 0;
    let mut last_term = 0;
    let mut position: u64 = 0;
    // Position, data offset from `data_start` and data length of the last RAFT_CHANGE entry.
    let mut last_change: Option<(u64, u64, u64)> = None;
    while let (Some(term), Some(kind), Some(_unused), Some(len)) =
        (headers.u64(), headers.u8(), headers.take(3), headers.u32())
    {
        if !(ENTRY_COMMAND..=ENTRY_CHANGE).contains(&kind) {
            return Err(BatchError::Fatal(format!("unknown entry type {kind}")));
        }
        if kind == ENTRY_CHANGE {
            last_change = Some((position, data_len, u64::from(len)));
        }
        data_len = data_len.saturating_add(u64::from(len));
        last_term = term;
        position = position.saturating_add(1);
    }
    let data = usize::try_from(data_len)
        .ok()
        .and_then(|len| cursor.take(len))
        .ok_or_else(|| short("data"))?;
    if crc32(data, 0) != data_crc {
        return Err(BatchError::Corrupt("data checksum mismatch".to_string()));
    }
    *offset = cursor.offset;
    // The data was all there, so these ranges lie inside the file.
    let last_change = last_change.and_then(|(position, start, len)| {
        let start = data_start.checked_add(usize::try_from(start).ok()?)?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        Some((position, start..end))
    });
    Ok(Batches {
        entries: count,
        last_term,
        last_change,
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

    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
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

        /// Runs [`last_configuration`], checking it only reads what [`configuration_files`]
        /// lists; also returns the files read, in order.
        fn configuration_and_reads(&self) -> (Configuration, Vec<String>) {
            let names = self.names();
            let allowed = configuration_files(&names);
            let mut reads = Vec::new();
            let found = last_configuration(&names, |name| {
                assert!(
                    allowed.iter().any(|a| a == name),
                    "read {name} not in {allowed:?}"
                );
                reads.push(name.to_string());
                self.0.get(name).cloned()
            });
            (found, reads)
        }

        fn configuration(&self) -> Configuration {
            self.configuration_and_reads().0
        }
    }

    type Configuration = Result<Option<(u64, Vec<Server>)>, RaftLogError>;

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

    // ---- configurations ----

    /// `configurationEncode`: (id, address, libraft role) per server, padded to 8 bytes.
    fn encoded(servers: &[(u64, &str, u8)]) -> Vec<u8> {
        let mut out = vec![CONFIGURATION_FORMAT];
        out.extend((servers.len() as u64).to_le_bytes());
        for (id, address, role) in servers {
            out.extend(id.to_le_bytes());
            out.extend(address.as_bytes());
            out.push(0);
            out.push(*role);
        }
        out.resize(out.len().div_ceil(8) * 8, 0);
        out
    }

    /// A batch holding one RAFT_CHANGE entry.
    fn change(term: u64, configuration: &[u8]) -> Vec<u8> {
        batch_of_type(&[(term, configuration)], ENTRY_CHANGE)
    }

    /// A snapshot `.meta` file as `UvSnapshotPut` writes it.
    fn meta(configuration_index: u64, configuration: &[u8]) -> Vec<u8> {
        let len = configuration.len() as u64;
        let covered: Vec<u8> = [configuration_index, len]
            .iter()
            .flat_map(|word| word.to_le_bytes())
            .collect();
        let crc = crc32(configuration, crc32(&covered, 0));
        let mut out = DISK_FORMAT.to_le_bytes().to_vec();
        out.extend(u64::from(crc).to_le_bytes());
        out.extend(covered);
        out.extend_from_slice(configuration);
        out
    }

    fn snapshot_with_meta(term: u64, index: u64, meta: Vec<u8>) -> Vec<(String, Vec<u8>)> {
        let name = format!("snapshot-{term}-{index}-1");
        vec![file(format!("{name}.meta"), meta), file(name, vec![1])]
    }

    fn server(id: u64, address: &str, role: u64) -> Server {
        Server {
            id,
            address: address.to_string(),
            role,
        }
    }

    fn one_voter(id: u64) -> Vec<u8> {
        encoded(&[(id, &format!("10.0.0.{id}:19001"), RAFT_VOTER)])
    }

    fn is_voter(id: u64) -> Vec<Server> {
        vec![server(id, &format!("10.0.0.{id}:19001"), ROLE_VOTER)]
    }

    fn hex(words: &[&str]) -> Vec<u8> {
        words
            .iter()
            .flat_map(|hex| {
                (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            })
            .collect()
    }

    #[test]
    fn decodes_configurations_written_by_libraft() {
        // The data of the bootstrap entry in `reads_a_batch_written_by_libraft`.
        let entry = hex(&[
            "0101000000000000",
            "00be55318c8571c1",
            "2d3132372e302e37",
            "372e313a32393030",
            "3100010000000000",
        ]);
        let node = server(0x2dc1_7185_8c31_55be, "127.0.77.1:29001", ROLE_VOTER);
        assert_eq!(decode_configuration(&entry), Ok(vec![node.clone()]));
        assert_eq!(entry, encoded(&[(node.id, &node.address, RAFT_VOTER)]));
        // A `.meta` file dqlite-demo wrote once the entry was compacted away.
        let snapshot_meta = hex(&[
            "0100000000000000",
            "4f21669a00000000",
            "0100000000000000",
            "2800000000000000",
            "0101000000000000",
            "00be55318c8571c1",
            "2d3132372e302e37",
            "372e31303a323930",
            "3031000100000000",
        ]);
        assert_eq!(
            read_snapshot_meta("m", &snapshot_meta),
            Ok((1, vec![server(node.id, "127.0.77.10:29001", ROLE_VOTER)]))
        );
        assert_eq!(
            snapshot_meta,
            meta(1, &encoded(&[(node.id, "127.0.77.10:29001", 1)]))
        );
    }

    #[test]
    fn roles_are_translated_to_dqlite_codes() {
        let bytes = encoded(&[
            (1, "a:1", RAFT_STANDBY),
            (2, "b:1", RAFT_VOTER),
            (3, "c:1", RAFT_SPARE),
        ]);
        assert_eq!(
            decode_configuration(&bytes),
            Ok(vec![
                server(1, "a:1", ROLE_STANDBY),
                server(2, "b:1", ROLE_VOTER),
                server(3, "c:1", ROLE_SPARE),
            ])
        );
        assert_eq!((ROLE_VOTER, ROLE_STANDBY, ROLE_SPARE), (0, 1, 2));
    }

    #[test]
    fn malformed_configurations_are_errors() {
        let good = encoded(&[(1, "a:1", RAFT_VOTER), (2, "b:1", RAFT_SPARE)]);
        let mut other_format = good.clone();
        other_format[0] = 2;
        let mut count_too_high = good.clone();
        count_too_high[1] = 3;
        // The second address runs to the end of the buffer.
        let no_terminator = [&good[..30], b"abcd"].concat();
        let mut cases = vec![
            Vec::new(),
            other_format,
            count_too_high,
            no_terminator,
            encoded(&[(1, "a:1", 3)]),
            encoded(&[(0, "a:1", RAFT_VOTER)]),
            encoded(&[(1, "a:1", RAFT_VOTER), (1, "b:1", RAFT_VOTER)]),
            encoded(&[(1, "a:1", RAFT_VOTER), (2, "a:1", RAFT_VOTER)]),
        ];
        let mut not_utf8 = encoded(&[(1, "a:1", RAFT_VOTER)]);
        not_utf8[17] = 0xff;
        cases.push(not_utf8);
        // Cut anywhere inside the servers.
        let unpadded = 1 + 8 + 2 * (8 + 4 + 1);
        cases.extend((1..unpadded).map(|len| good[..len].to_vec()));
        for (i, bytes) in cases.iter().enumerate() {
            assert!(decode_configuration(bytes).is_err(), "case {i}: {bytes:?}");
        }
        // The padding, or anything else after the last server, is not looked at.
        assert!(decode_configuration(&good[..unpadded]).is_ok());
        let mut trailing = good.clone();
        trailing.extend(b"whatever");
        assert_eq!(decode_configuration(&trailing), decode_configuration(&good));
        // libraft decodes a count of 0 to an empty configuration.
        assert_eq!(decode_configuration(&encoded(&[])), Ok(Vec::new()));
    }

    #[test]
    fn no_configuration() {
        assert_eq!(Dir::new(vec![]).configuration(), Ok(None));
        let dir = Dir::new(vec![
            file("metadata1", metadata(1, 1, 1)),
            file(closed_name(1, 2), segment(&batches(1, 2))),
        ]);
        assert_eq!(dir.configuration(), Ok(None));
    }

    #[test]
    fn a_configuration_in_an_open_segment() {
        let dir = Dir::new(vec![
            file("metadata1", metadata(1, 2, 1)),
            file(closed_name(1, 1), segment(&change(1, &one_voter(1)))),
            file(
                "open-1",
                open_segment(
                    &[batches(1, 2), change(2, &one_voter(2)), batches(2, 3)].concat(),
                    4096,
                ),
            ),
            file("open-2", open_segment(&[], 4096)),
        ]);
        let (found, reads) = dir.configuration_and_reads();
        assert_eq!(found, Ok(Some((4, is_voter(2)))));
        // The open segments are enough.
        assert_eq!(reads, ["open-1", "open-2"]);
        assert_eq!(
            configuration_files(&dir.names()),
            ["open-1", "open-2", &closed_name(1, 1)]
        );
        // The entries of a later open segment follow on from the earlier one's.
        let dir = Dir::new(vec![
            file(
                "open-1",
                open_segment(&[change(1, &one_voter(1)), batches(1, 2)].concat(), 4096),
            ),
            file(
                "open-2",
                open_segment(&[batches(1, 1), change(3, &one_voter(3))].concat(), 4096),
            ),
        ]);
        assert_eq!(dir.configuration(), Ok(Some((5, is_voter(3)))));
    }

    #[test]
    fn the_last_change_entry_of_a_batch_counts() {
        let two = one_voter(2);
        let three = one_voter(3);
        let mixed = batch_of_type(&[(1, &two), (1, &three)], ENTRY_CHANGE);
        let dir = Dir::new(vec![file(
            "open-1",
            open_segment(&[batches(1, 1), mixed].concat(), 4096),
        )]);
        assert_eq!(dir.configuration(), Ok(Some((3, is_voter(3)))));
    }

    #[test]
    fn closed_segments_are_read_newest_first_until_a_configuration() {
        let dir = Dir::new(vec![
            file(closed_name(1, 1), segment(&change(1, &one_voter(1)))),
            file(
                closed_name(2, 4),
                segment(&[batches(1, 1), change(1, &one_voter(2)), batches(2, 1)].concat()),
            ),
            file(closed_name(5, 6), segment(&batches(2, 2))),
            file("open-3", open_segment(&batches(2, 2), 4096)),
        ]);
        let (found, reads) = dir.configuration_and_reads();
        assert_eq!(found, Ok(Some((3, is_voter(2)))));
        assert_eq!(reads, ["open-3", &closed_name(5, 6), &closed_name(2, 4)]);
        // Only the entry that counts is decoded: a bad older one does not matter.
        let dir = Dir::new(vec![
            file(closed_name(1, 1), segment(&change(1, &[9; 8]))),
            file(closed_name(2, 2), segment(&change(1, &one_voter(2)))),
        ]);
        assert_eq!(dir.configuration(), Ok(Some((2, is_voter(2)))));
        let dir = Dir::new(vec![
            file(closed_name(1, 1), segment(&change(1, &one_voter(1)))),
            file(closed_name(2, 2), segment(&change(1, &[9; 8]))),
        ]);
        assert!(matches!(
            dir.configuration(),
            Err(RaftLogError::BadConfiguration { index: 2, .. })
        ));
        // A closed segment read on the way is checked like last_entry checks it.
        let dir = Dir::new(vec![
            file(closed_name(1, 1), segment(&change(1, &one_voter(1)))),
            file(closed_name(2, 3), segment(&batches(1, 1))),
        ]);
        assert!(matches!(
            dir.configuration(),
            Err(RaftLogError::BadSegment { .. })
        ));
    }

    #[test]
    fn a_torn_configuration_entry_does_not_count() {
        let torn = change(2, &one_voter(2));
        let mut bad_data = torn.clone();
        let last = bad_data.len() - 1;
        bad_data[last] ^= 1;
        let mut half = torn[..24].to_vec();
        half.resize(torn.len(), 0);
        for tail in [bad_data, half] {
            let dir = Dir::new(vec![
                file(closed_name(1, 1), segment(&change(1, &one_voter(1)))),
                file(
                    "open-1",
                    open_segment(&[batches(1, 2), tail].concat(), 4096),
                ),
            ]);
            assert_eq!(dir.configuration(), Ok(Some((1, is_voter(1)))));
        }
        // But an open segment libraft refuses is an error.
        let dir = Dir::new(vec![
            file(closed_name(1, 1), segment(&change(1, &one_voter(1)))),
            file("open-1", segment(&torn[..torn.len() - 8])),
        ]);
        assert!(matches!(
            dir.configuration(),
            Err(RaftLogError::BadSegment { .. })
        ));
    }

    #[test]
    fn a_configuration_only_in_the_snapshot() {
        let mut files = snapshot_with_meta(2, 100, meta(40, &one_voter(4)));
        files.extend(snapshot_with_meta(2, 50, meta(30, &one_voter(3))));
        files.push(file(closed_name(1, 1), segment(&change(1, &one_voter(1)))));
        let dir = Dir::new(files);
        let (found, reads) = dir.configuration_and_reads();
        assert_eq!(found, Ok(Some((40, is_voter(4)))));
        // The compacted segment does not count and is not read.
        assert_eq!(reads, ["snapshot-2-100-1.meta"]);
        // Segments after the snapshot without a configuration entry.
        let mut files = snapshot_with_meta(2, 100, meta(40, &one_voter(4)));
        files.push(file(closed_name(90, 110), segment(&batches(2, 21))));
        files.push(file("open-7", open_segment(&batches(3, 2), 4096)));
        assert_eq!(Dir::new(files).configuration(), Ok(Some((40, is_voter(4)))));
    }

    #[test]
    fn the_log_overrides_the_snapshot() {
        // As in libraft's restoreEntries: the last change entry loaded wins, wherever it is.
        let mut files = snapshot_with_meta(2, 100, meta(80, &one_voter(4)));
        files.push(file(
            closed_name(60, 110),
            segment(&[batches(2, 10), change(2, &one_voter(7)), batches(2, 40)].concat()),
        ));
        let dir = Dir::new(files.clone());
        assert_eq!(dir.configuration(), Ok(Some((70, is_voter(7)))));
        files.push(file(
            "open-1",
            open_segment(&change(3, &one_voter(8)), 4096),
        ));
        assert_eq!(
            Dir::new(files).configuration(),
            Ok(Some((111, is_voter(8))))
        );
        // Only open segments after the snapshot.
        let mut files = snapshot_with_meta(2, 100, meta(80, &one_voter(4)));
        files.push(file(
            "open-1",
            open_segment(&[batches(2, 1), change(3, &one_voter(8))].concat(), 4096),
        ));
        assert_eq!(
            Dir::new(files).configuration(),
            Ok(Some((102, is_voter(8))))
        );
    }

    #[test]
    fn bad_snapshot_meta_files_are_errors() {
        let good = meta(40, &one_voter(4));
        let mut bad_crc = good.clone();
        bad_crc[8] ^= 1;
        let mut bad_index = good.clone();
        bad_index[16] ^= 1;
        let mut bad_format = good.clone();
        bad_format[0] = 2;
        let mut high_crc_bits = good.clone();
        high_crc_bits[12] = 0xff; // only the low 32 bits are the checksum
        let mut trailing = good.clone();
        trailing.extend([1, 2, 3]);
        assert!(read_snapshot_meta("m", &high_crc_bits).is_ok());
        assert!(read_snapshot_meta("m", &trailing).is_ok());
        let mut too_long = meta(40, &one_voter(4));
        too_long[24..32].copy_from_slice(&(MAX_META_CONFIGURATION + 8).to_le_bytes());
        let cases = [
            bad_crc,
            bad_index,
            bad_format,
            too_long,
            meta(40, &[]),
            good[..31].to_vec(),
            good[..good.len() - 1].to_vec(),
            Vec::new(),
        ];
        for (i, bytes) in cases.into_iter().enumerate() {
            assert!(
                matches!(
                    read_snapshot_meta("m", &bytes),
                    Err(RaftLogError::BadSnapshotMeta { .. })
                ),
                "case {i}"
            );
        }
        assert!(matches!(
            read_snapshot_meta("m", &meta(40, &[7; 16])),
            Err(RaftLogError::BadConfiguration { index: 40, .. })
        ));
        // libraft loads the newest snapshot's .meta even when the log has a configuration.
        let mut files = snapshot_with_meta(2, 100, good[..20].to_vec());
        files.push(file(
            "open-1",
            open_segment(&change(3, &one_voter(8)), 4096),
        ));
        assert!(matches!(
            Dir::new(files).configuration(),
            Err(RaftLogError::BadSnapshotMeta { .. })
        ));
    }

    #[test]
    fn configuration_directories_libraft_refuses() {
        // Names that do not add up.
        let dir = Dir::new(vec![
            file(closed_name(1, 2), Vec::new()),
            file(closed_name(4, 5), Vec::new()),
        ]);
        assert!(configuration_files(&dir.names()).is_empty());
        assert!(matches!(
            dir.configuration(),
            Err(RaftLogError::BadSequence(_))
        ));
        // Entries ending before the snapshot.
        let mut files = snapshot_with_meta(2, 100, meta(40, &one_voter(4)));
        files.push(file(closed_name(50, 60), segment(&batches(2, 11))));
        files.push(file(
            "open-3",
            open_segment(&change(2, &one_voter(5)), 4096),
        ));
        assert!(matches!(
            Dir::new(files).configuration(),
            Err(RaftLogError::BadSequence(_))
        ));
        // A listed file that cannot be read.
        let names = vec!["open-1".to_string()];
        assert_eq!(
            last_configuration(&names, |_| None),
            Err(RaftLogError::Unreadable {
                file: "open-1".into()
            })
        );
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
                let _ = dir.configuration();
            }

            #[test]
            fn arbitrary_configurations(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
                let _ = decode_configuration(&bytes);
                let _ = read_snapshot_meta("m", &bytes);
                let mut with_format = vec![CONFIGURATION_FORMAT];
                with_format.extend(&bytes);
                let _ = decode_configuration(&with_format);
            }

            #[test]
            fn mutated_configurations(
                flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
                cut in any::<usize>(),
                in_meta in any::<bool>(),
            ) {
                let configuration = encoded(&[(1, "a:1", RAFT_VOTER), (2, "bb:2", RAFT_SPARE)]);
                let mut bytes = if in_meta { meta(5, &configuration) } else { configuration };
                for (at, value) in flips {
                    let at = at % bytes.len();
                    bytes[at] = value;
                }
                bytes.truncate(cut % (bytes.len() + 1));
                let _ = decode_configuration(&bytes);
                let _ = read_snapshot_meta("m", &bytes);
            }

            #[test]
            fn mutated_segments(
                flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
                cut in any::<usize>(),
                open in any::<bool>(),
            ) {
                let configuration = encoded(&[(1, "a:1", RAFT_VOTER)]);
                let mut bytes = segment(&[
                    batches(1, 2),
                    batch(&[(2, &[3; 24]), (2, &[])]),
                    change(2, &configuration),
                ].concat());
                bytes.resize(bytes.len() + 40, 0);
                for (at, value) in flips {
                    let at = at % bytes.len();
                    bytes[at] = value;
                }
                bytes.truncate(cut % (bytes.len() + 1));
                let name = if open { "open-1".to_string() } else { closed_name(1, 5) };
                let dir = Dir::new(vec![file(name, bytes)]);
                if let Ok(LogSummary { last: Some(entry), .. }) = dir.summary() {
                    prop_assert!(entry.index <= 5);
                }
                if let Ok(Some((index, _))) = dir.configuration() {
                    prop_assert_eq!(index, 5);
                }
            }
        }
    }
}
