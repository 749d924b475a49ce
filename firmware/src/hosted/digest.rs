//! Streaming image digests.

use std::io::{self, Read};

use sha2::Digest as _;

use crate::DigestAlgorithm;

/// The read buffer: 64 KiB.
const BUFFER: usize = 64 * 1024;

/// The digest of everything `r` yields, read 64 KiB at a time. `progress`
/// is called after every read with the number of bytes read so far.
/// Interrupted reads are retried; any other read error is returned.
pub fn digest_reader(
    alg: DigestAlgorithm,
    mut r: impl Read,
    mut progress: impl FnMut(u64),
) -> io::Result<Vec<u8>> {
    enum Hasher {
        Sha256(sha2::Sha256),
        Sha512(sha2::Sha512),
    }
    let mut hasher = match alg {
        DigestAlgorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
        DigestAlgorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
    };
    let mut buf = vec![0u8; BUFFER];
    let mut total: u64 = 0;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        // A reader that claims more than the buffer holds is broken; say so
        // rather than panic on the slice.
        let chunk = buf.get(..n).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "reader returned more bytes than the buffer holds",
            )
        })?;
        match &mut hasher {
            Hasher::Sha256(h) => h.update(chunk),
            Hasher::Sha512(h) => h.update(chunk),
        }
        total = total.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
        progress(total);
    }
    Ok(match hasher {
        Hasher::Sha256(h) => h.finalize().to_vec(),
        Hasher::Sha512(h) => h.finalize().to_vec(),
    })
}
