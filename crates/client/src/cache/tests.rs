use std::os::unix::fs::PermissionsExt;

use super::*;

fn tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("bin/lib")).unwrap();
    std::fs::write(dir.path().join("run.sh"), "echo hello\n").unwrap();
    std::fs::set_permissions(dir.path().join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.path().join("bin/lib/data.txt"), "data\n").unwrap();
    std::os::unix::fs::symlink("bin/lib/data.txt", dir.path().join("link")).unwrap();
    dir
}

fn packed(dir: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    pack_dir(dir, &mut bytes).unwrap();
    bytes
}

/// A tar.gz with one entry whose raw name, type and link target are written as given (the tar
/// crate's builder refuses unsafe names, so they are put into the header bytes directly).
fn crafted(name: &[u8], kind: tar::EntryType, link: &[u8]) -> tempfile::NamedTempFile {
    let mut header = tar::Header::new_gnu();
    let gnu = header.as_gnu_mut().unwrap();
    gnu.name[..name.len()].copy_from_slice(name);
    gnu.linkname[..link.len()].copy_from_slice(link);
    header.set_entry_type(kind);
    header.set_mode(0o644);
    let data = b"evil\n";
    header.set_size(if kind == tar::EntryType::Regular { data.len() as u64 } else { 0 });
    header.set_cksum();
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    let body: &[u8] = if kind == tar::EntryType::Regular { data } else { &[] };
    builder.append(&header, body).unwrap();
    let bytes = builder.into_inner().unwrap().finish().unwrap();
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&bytes).unwrap();
    file
}

#[test]
fn packing_is_reproducible_and_unpacks_to_the_same_tree() {
    let dir = tree();
    let first = packed(dir.path());
    // Newer modification times change nothing.
    std::fs::write(dir.path().join("bin/lib/data.txt"), "data\n").unwrap();
    assert_eq!(first, packed(dir.path()), "same tree, same bytes");

    let mut archive = tempfile::NamedTempFile::new().unwrap();
    archive.write_all(&first).unwrap();
    let (sha, size) = sha256_file(archive.path()).unwrap();
    assert_eq!(size, first.len() as u64);
    assert_eq!(sha, format!("{:x}", Sha256::digest(&first)));

    let out = tempfile::tempdir().unwrap();
    assert_eq!(unpack(archive.path(), out.path()).unwrap(), 5);
    assert_eq!(std::fs::read_to_string(out.path().join("run.sh")).unwrap(), "echo hello\n");
    let mode = std::fs::metadata(out.path().join("run.sh")).unwrap().permissions().mode();
    assert_ne!(mode & 0o100, 0, "the executable bit survives");
    assert_eq!(std::fs::read_to_string(out.path().join("link")).unwrap(), "data\n");
}

#[test]
fn packing_refuses_a_symlink_out_of_the_tree() {
    let dir = tree();
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("escape")).unwrap();
    let error = pack_dir(dir.path(), Vec::new()).unwrap_err();
    assert!(matches!(&error, CacheError::UnsafeEntry { path, .. } if path == "escape"), "{error}");
}

fn check_refused(name: &[u8], kind: tar::EntryType, link: &[u8], reason: &str) {
    let archive = crafted(name, kind, link);
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("target");
    std::fs::create_dir(&target).unwrap();
    let error = unpack(archive.path(), &target).unwrap_err();
    let shown = String::from_utf8_lossy(name);
    assert!(
        matches!(&error, CacheError::UnsafeEntry { path, reason: r } if *path == shown && r.contains(reason)),
        "{error}"
    );
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0, "nothing is written");
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 1, "nothing lands beside it either");
}

#[test]
fn unpacking_refuses_entries_that_leave_the_directory() {
    check_refused(b"../evil", tar::EntryType::Regular, b"", "`..`");
    check_refused(b"a/../../evil", tar::EntryType::Regular, b"", "`..`");
    check_refused(b"/tmp/evil", tar::EntryType::Regular, b"", "absolute");
    check_refused(b"link", tar::EntryType::Symlink, b"/etc", "leaves the directory");
    check_refused(b"link", tar::EntryType::Symlink, b"../..", "leaves the directory");
    check_refused(b"hard", tar::EntryType::Link, b"run.sh", "hard links");
    check_refused(b"fifo", tar::EntryType::Fifo, b"", "not allowed");
}

#[test]
fn unpacking_garbage_is_an_error() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(b"this is not gzip").unwrap();
    let out = tempfile::tempdir().unwrap();
    assert!(matches!(unpack(file.path(), out.path()), Err(CacheError::Io { .. })));
}
