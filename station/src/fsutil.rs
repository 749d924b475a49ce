//! Small file helpers: atomic replace, create-only writes, name checks.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Makes temporary names unique within the process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` through a temporary file in the same directory,
/// fsync'd and renamed over `path`, so a reader sees the old file or the new
/// one, never a part. The directory is fsync'd too.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = parent_of(path);
    let name = path.file_name().ok_or(Error::Unreachable(
        "write_atomic called on a path without a file name",
    ))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    tmp_name.push(format!(".tmp-{}-{n}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        Ok(())
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io("writing", &tmp, e));
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io("renaming into place", path, e));
    }
    sync_dir(dir)
}

/// Creates `path` with `mode`, refusing to touch an existing file, and
/// writes `bytes` to it durably.
pub(crate) fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Error::AlreadyExists(path.to_owned()))
        }
        Err(e) => return Err(Error::io("creating", path, e)),
    };
    let written = f.write_all(bytes).and_then(|()| f.sync_all());
    if let Err(e) = written {
        drop(f);
        let _ = fs::remove_file(path);
        return Err(Error::io("writing", path, e));
    }
    Ok(())
}

/// fsyncs a directory so a rename or create in it is durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("syncing directory", dir, e))
}

/// The directory a file sits in (`.` for a bare name).
pub(crate) fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// 1–64 characters of `[A-Za-z0-9._-]`.
pub(crate) fn is_safe_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Checks a module serial before it goes into a URL path or becomes a
/// directory name: [`is_safe_name`] and not starting with a dot (so neither
/// `.` nor `..` nor a hidden file). The appliance checks the full
/// `VBUS-{TYPE}-YYMM-NNNNNN` form itself.
pub(crate) fn check_serial(serial: &str) -> Result<()> {
    if is_safe_name(serial) && !serial.starts_with('.') {
        Ok(())
    } else {
        Err(Error::InvalidSerial(serial.to_owned()))
    }
}
