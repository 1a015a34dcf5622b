//! The local filesystem: reads, existence checks, and writes that never leave a half-written
//! file (a temporary file in the same directory, fsync, rename, fsync of the directory).
//! Everything runs on the blocking pool, off the async runtime.

use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Operation};
use crate::path::ResourcePath;

pub(crate) async fn read(path: &ResourcePath) -> Result<Vec<u8>, Error> {
    let op = Operation::Read;
    let file = file_path(op, path)?;
    blocking(op, path, move || std::fs::read(&file)).await
}

pub(crate) async fn exists(path: &ResourcePath) -> Result<bool, Error> {
    let op = Operation::Exists;
    let Some(local) = path.local_path() else {
        return Err(not_local(op, path));
    };
    let want_dir = path.is_dir();
    blocking(op, path, move || match std::fs::metadata(&local) {
        // A directory spelling finds only a directory; a file spelling finds anything, as
        // os.path.exists does.
        Ok(meta) => Ok(!want_dir || meta.is_dir()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    })
    .await
}

pub(crate) async fn write(path: &ResourcePath, data: Vec<u8>) -> Result<(), Error> {
    let op = Operation::Write;
    let file = file_path(op, path)?;
    blocking(op, path, move || write_atomically(&file, &data)).await
}

/// Write to a temporary file beside `file`, make it durable, then rename it over `file`: a
/// reader sees the old content or the new, never part of it, and a crash leaves at most a
/// stray temporary file (named `.NAME.XXXXXX.tmp`), never a truncated `NAME`.
fn write_atomically(file: &Path, data: &[u8]) -> io::Result<()> {
    let dir = file.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut temp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        // tempfile's default is 0600; batch files are read by other users (the umask applies).
        .permissions(std::fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)?;
    temp.write_all(data)?;
    temp.as_file().sync_all()?;
    temp.persist(file).map_err(|e| e.error)?;
    // The rename itself is durable only once the directory is.
    std::fs::File::open(dir)?.sync_all()
}

fn file_path(op: Operation, path: &ResourcePath) -> Result<PathBuf, Error> {
    if path.is_dir() {
        return Err(Error::new(
            ErrorKind::InvalidUri,
            op,
            path,
            "a directory, not a file",
            None,
        ));
    }
    path.local_path().ok_or_else(|| not_local(op, path))
}

fn not_local(op: Operation, path: &ResourcePath) -> Error {
    Error::new(ErrorKind::Fatal, op, path, "not a local path", None)
}

async fn blocking<T: Send + 'static>(
    op: Operation,
    path: &ResourcePath,
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, Error> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(classify(op, path, e)),
        Err(join) => Err(Error::new(
            ErrorKind::Fatal,
            op,
            path,
            "the filesystem task failed",
            Some(Box::new(join)),
        )),
    }
}

/// What the caller must do about a filesystem error. A full disk or quota is transient: space
/// can be freed while the caller retries, and nothing is lost meanwhile.
fn classify(op: Operation, path: &ResourcePath, err: io::Error) -> Error {
    let (kind, reason) = match err.kind() {
        io::ErrorKind::NotFound => (ErrorKind::NotFound, String::new()),
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            (ErrorKind::PermissionDenied, err.to_string())
        }
        io::ErrorKind::StorageFull
        | io::ErrorKind::QuotaExceeded
        | io::ErrorKind::Interrupted
        | io::ErrorKind::TimedOut
        | io::ErrorKind::WouldBlock
        | io::ErrorKind::ResourceBusy => (ErrorKind::Transient, err.to_string()),
        _ => (ErrorKind::Fatal, err.to_string()),
    };
    Error::new(kind, op, path, reason, Some(Box::new(err)))
}
