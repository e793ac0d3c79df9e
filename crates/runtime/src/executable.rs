//! Finding programs the way a shell does: the first executable file of that name in the
//! directories of a `PATH` value. The pilot resolves container runtimes with it, the harvester
//! tells which runtimes the embedded queue offers, so both agree on what "installed" means.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// The first executable file named `name` in the directories of `path_var`.
pub fn find_on_path(name: &str, path_var: Option<&OsStr>) -> Option<PathBuf> {
    std::env::split_paths(path_var?).map(|dir| dir.join(name)).find(|candidate| is_executable(candidate))
}

/// A regular file with an execute bit.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
