//! The files an instance may name (a password file, a root certificate): plain names in
//! one folder, regular files of bounded size, read off the runtime within a deadline.

use std::path::Path;
use std::time::Duration;

/// Longest `password_env` or `password_file`.
pub const MAX_SECRET_NAME: usize = 128;

/// A plain file name: letters, digits, '.', '_', '-', no leading dot, at most
/// [`MAX_SECRET_NAME`] characters; never a path, never `.` or `..`.
pub(crate) fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SECRET_NAME
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// How long reading a password or certificate file may take. A regular file on a local
/// disk takes microseconds; this bounds a hung network file system.
pub(crate) const FILE_READ_DEADLINE: Duration = Duration::from_secs(5);

/// Why [`read_small_file`] read nothing. Names the rule, never the content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FileRefused {
    /// No such file (or no folder).
    Missing,
    /// There, but the worker may not read it.
    Unreadable(std::io::ErrorKind),
    /// A path instead of a name, a symlink out of the folder, a FIFO, a socket, a device or
    /// a directory.
    NotRegular,
    /// More bytes than allowed.
    TooLarge(u64),
    /// Not read within [`FILE_READ_DEADLINE`].
    TimedOut(Duration),
}

impl FileRefused {
    /// The rest of a sentence that starts with what the file is ("the password file x").
    pub(crate) fn explain(&self, folder: &str) -> String {
        match self {
            FileRefused::Missing => format!("does not exist in the {folder}"),
            FileRefused::Unreadable(kind) => {
                format!("cannot be read from the {folder}: {kind}")
            }
            FileRefused::NotRegular => format!(
                "is not a regular file in the {folder}: symlinks out of it, FIFOs, devices and folders are refused"
            ),
            FileRefused::TooLarge(cap) => format!("is larger than {cap} bytes"),
            FileRefused::TimedOut(d) => {
                format!("could not be read within {} s", d.as_secs_f64())
            }
        }
    }
}

/// Reads the file `name` (a plain name, no path) of the folder `dir`: a regular file of
/// at most `cap` bytes, or nothing. The bytes are read on a blocking thread, since a
/// worker's runtime threads must never block, and given up on after
/// [`FILE_READ_DEADLINE`].
///
/// What an instance may name is chosen by whoever can add instances, not by whoever
/// owns the worker host: without these rules a name could lead (through a symlink) to any
/// file the worker can read, to `/dev/zero` (read until memory runs out) or to a FIFO
/// (an open that never returns).
pub(crate) async fn read_small_file(
    dir: &Path,
    name: &str,
    cap: u64,
) -> Result<Vec<u8>, FileRefused> {
    if !is_plain_file_name(name) {
        return Err(FileRefused::NotRegular);
    }
    let (dir, name) = (dir.to_path_buf(), name.to_string());
    let task = tokio::task::spawn_blocking(move || read_capped(&dir, &name, cap));
    match tokio::time::timeout(FILE_READ_DEADLINE, task).await {
        Ok(Ok(read)) => read,
        Ok(Err(_)) => Err(FileRefused::Unreadable(std::io::ErrorKind::Other)),
        Err(_) => Err(FileRefused::TimedOut(FILE_READ_DEADLINE)),
    }
}

fn read_capped(dir: &Path, name: &str, cap: u64) -> Result<Vec<u8>, FileRefused> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => FileRefused::Missing,
        kind => FileRefused::Unreadable(kind),
    };
    // Container platforms mount secrets and config maps as symlinks into a hidden folder
    // beside them (Kubernetes: `name -> ..data/name`), so a symlink is followed as long
    // as where it leads stays inside the folder.
    let folder = std::fs::canonicalize(dir).map_err(io)?;
    let target = std::fs::canonicalize(folder.join(name)).map_err(io)?;
    if !target.starts_with(&folder) || target == folder {
        return Err(FileRefused::NotRegular);
    }
    // O_NOFOLLOW: the resolved path has no symlink left, unless one was swapped in since.
    // O_NONBLOCK: opening a FIFO would otherwise wait for a writer, forever.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&target)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => FileRefused::NotRegular,
            _ => io(e),
        })?;
    // The handle's own metadata: the file that was opened, whatever the path names now.
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(FileRefused::NotRegular);
    }
    if meta.len() > cap {
        return Err(FileRefused::TooLarge(cap));
    }
    // The size can lie (a file that grows, one of /proc's): never read past the cap.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(cap + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > cap {
        return Err(FileRefused::TooLarge(cap));
    }
    Ok(bytes)
}
