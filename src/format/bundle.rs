//! A bundle: a few named files in one byte string, checked end to end. Recovery carries the
//! winning survivor's raft files to the others in one.
//!
//! Layout: `CAB1`, the file count (u32 LE), then per file its name length (u16 LE), its name
//! (UTF-8, a plain file name: no `/`, not `.` or `..`), its length (u64 LE) and its bytes;
//! last, the SHA-256 of everything before it. A bundle that is cut short, has trailing bytes,
//! a bad digest, a bad or repeated name is refused whole.

use sha2::{Digest, Sha256};

const MAGIC: &[u8; 4] = b"CAB1";
const DIGEST: usize = 32;

/// One file of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleFile {
    pub name: String,
    pub data: Vec<u8>,
}

impl BundleFile {
    pub fn new(name: impl Into<String>, data: impl Into<Vec<u8>>) -> BundleFile {
        BundleFile {
            name: name.into(),
            data: data.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("not a bundle (bad magic)")]
    Magic,
    #[error("the bundle is cut short")]
    Truncated,
    #[error("the bundle's digest does not match its content")]
    Digest,
    #[error("the bundle has bytes after its last file")]
    Trailing,
    #[error("the bundle names a file {0:?}, which is not a plain file name")]
    Name(String),
    #[error("the bundle holds {0:?} twice")]
    Repeated(String),
}

/// Is `name` a plain file name (one path component)?
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0')
}

/// Encodes `files` (names must be plain; see [`is_plain_name`]).
pub fn encode(files: &[BundleFile]) -> Result<Vec<u8>, BundleError> {
    let mut out = Vec::with_capacity(files.iter().map(|f| f.data.len() + 16).sum::<usize>() + 48);
    out.extend_from_slice(MAGIC);
    let count = u32::try_from(files.len()).map_err(|_| BundleError::Truncated)?;
    out.extend_from_slice(&count.to_le_bytes());
    let mut seen = std::collections::BTreeSet::new();
    for file in files {
        if !is_plain_name(&file.name) {
            return Err(BundleError::Name(file.name.clone()));
        }
        if !seen.insert(file.name.as_str()) {
            return Err(BundleError::Repeated(file.name.clone()));
        }
        let name_len =
            u16::try_from(file.name.len()).map_err(|_| BundleError::Name(file.name.clone()))?;
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(file.name.as_bytes());
        out.extend_from_slice(&(file.data.len() as u64).to_le_bytes());
        out.extend_from_slice(&file.data);
    }
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    Ok(out)
}

/// Decodes a bundle made by [`encode`].
pub fn decode(bytes: &[u8]) -> Result<Vec<BundleFile>, BundleError> {
    if bytes.len() < MAGIC.len() + 4 + DIGEST {
        return Err(if bytes.starts_with(MAGIC) || bytes.len() < MAGIC.len() {
            BundleError::Truncated
        } else {
            BundleError::Magic
        });
    }
    if !bytes.starts_with(MAGIC) {
        return Err(BundleError::Magic);
    }
    let (body, digest) = bytes.split_at(bytes.len() - DIGEST);
    if Sha256::digest(body).as_slice() != digest {
        return Err(BundleError::Digest);
    }
    let mut reader = Reader {
        rest: &body[MAGIC.len()..],
    };
    let count = u32::from_le_bytes(reader.array()?);
    let mut files = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..count {
        let name_len = u16::from_le_bytes(reader.array()?) as usize;
        let name = String::from_utf8(reader.take(name_len)?.to_vec())
            .map_err(|e| BundleError::Name(String::from_utf8_lossy(e.as_bytes()).into_owned()))?;
        if !is_plain_name(&name) {
            return Err(BundleError::Name(name));
        }
        if !seen.insert(name.clone()) {
            return Err(BundleError::Repeated(name));
        }
        let len = usize::try_from(u64::from_le_bytes(reader.array()?))
            .map_err(|_| BundleError::Truncated)?;
        let data = reader.take(len)?.to_vec();
        files.push(BundleFile { name, data });
    }
    if !reader.rest.is_empty() {
        return Err(BundleError::Trailing);
    }
    Ok(files)
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BundleError> {
        if self.rest.len() < n {
            return Err(BundleError::Truncated);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], BundleError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn file(name: &str, data: &[u8]) -> BundleFile {
        BundleFile::new(name, data)
    }

    #[test]
    fn round_trips() {
        let files = vec![
            file("metadata1", &[1, 2, 3]),
            file("open-1", b""),
            file("cluster.yaml", b"- ID: 1\n"),
        ];
        assert_eq!(decode(&encode(&files).unwrap()).unwrap(), files);
        assert_eq!(decode(&encode(&[]).unwrap()).unwrap(), vec![]);
    }

    #[test]
    fn refuses_bad_names_and_damage() {
        for bad in ["", ".", "..", "a/b", "../x"] {
            assert_eq!(
                encode(&[file(bad, b"x")]),
                Err(BundleError::Name(bad.into()))
            );
        }
        assert_eq!(
            encode(&[file("a", b"1"), file("a", b"2")]),
            Err(BundleError::Repeated("a".into()))
        );
        let good = encode(&[file("metadata1", b"0123456789")]).unwrap();
        for cut in 0..good.len() {
            assert!(decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut flipped = good.clone();
        flipped[12] ^= 1;
        assert_eq!(decode(&flipped), Err(BundleError::Digest));
        assert_eq!(
            decode(b"nope, not a bundle at all, really not one"),
            Err(BundleError::Magic)
        );
    }

    proptest! {
        #[test]
        fn never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }
    }
}
