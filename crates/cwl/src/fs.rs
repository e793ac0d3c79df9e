//! File and Directory values: locations, paths, basename/nameroot/nameext, size, sha1 checksum,
//! listings.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};
use sha1::{Digest, Sha1};

use crate::error::{CwlError, Result};

/// `file://` URI for an absolute path.
pub fn path_to_uri(p: &Path) -> String {
    url::Url::from_file_path(p).map(|u| u.to_string()).unwrap_or_else(|_| format!("file://{}", p.display()))
}

/// Local path of a `file://` URI or plain path.
pub fn uri_to_path(loc: &str) -> PathBuf {
    if loc.starts_with("file://")
        && let Ok(u) = url::Url::parse(loc)
        && let Ok(p) = u.to_file_path()
    {
        return p;
    }
    PathBuf::from(loc)
}

/// Resolves a location (URI, absolute or relative path) against `dir`.
pub fn resolve_location(loc: &str, dir: &Path) -> PathBuf {
    if loc.starts_with("file://") {
        return uri_to_path(loc);
    }
    let p = Path::new(loc);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    // A relative reference is a URI reference: percent-escapes are decoded.
    if let Ok(base) = url::Url::from_directory_path(dir)
        && let Ok(u) = base.join(loc)
        && let Ok(pb) = u.to_file_path()
    {
        return pb;
    }
    dir.join(p)
}

/// sha1 checksum (`sha1$hex`) and size of a file.
pub fn checksum(path: &Path) -> Result<(String, u64)> {
    let mut f = std::fs::File::open(path).map_err(|e| CwlError::io(path, e))?;
    let mut h = Sha1::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| CwlError::io(path, e))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((format!("sha1${hex}"), size))
}

/// Splits a basename into nameroot and nameext (`a.tar.gz` → `a.tar`, `.gz`).
pub fn split_name(base: &str) -> (String, String) {
    match base.rfind('.') {
        Some(i) if i > 0 => (base[..i].to_string(), base[i..].to_string()),
        _ => (base.to_string(), String::new()),
    }
}

/// Fills `path`, `basename`, `nameroot`, `nameext` (and `dirname`) of a File/Directory from its
/// location, resolved against `dir`. Values without a location (literals) keep what they have.
pub fn fill_names(o: &mut Map<String, Value>, dir: &Path) {
    let loc = o.get("location").or(o.get("path")).and_then(Value::as_str).map(str::to_string);
    if let Some(loc) = loc {
        let p = resolve_location(&loc, dir);
        o.insert("location".into(), Value::String(path_to_uri(&p)));
        o.insert("path".into(), Value::String(p.display().to_string()));
        let base = p.file_name().map(|b| b.to_string_lossy().to_string()).unwrap_or_default();
        if let Some(parent) = p.parent() {
            o.insert("dirname".into(), Value::String(parent.display().to_string()));
        }
        o.insert("basename".into(), Value::String(base));
    }
    if o.get("class").and_then(Value::as_str) == Some("File")
        && let Some(base) = o.get("basename").and_then(Value::as_str).map(str::to_string)
    {
        let (root, ext) = split_name(&base);
        o.insert("nameroot".into(), Value::String(root));
        o.insert("nameext".into(), Value::String(ext));
    }
}

/// Listing of a directory as File/Directory values, recursively when `deep`.
pub fn listing(dir: &Path, deep: bool, with_checksum: bool) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    let rd = std::fs::read_dir(dir).map_err(|e| CwlError::io(dir, e))?;
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            let mut o = Map::new();
            o.insert("class".into(), json!("Directory"));
            o.insert("location".into(), Value::String(path_to_uri(&p)));
            fill_names(&mut o, dir);
            if deep {
                o.insert("listing".into(), Value::Array(listing(&p, true, with_checksum)?));
            }
            out.push(Value::Object(o));
        } else {
            let mut o = Map::new();
            o.insert("class".into(), json!("File"));
            o.insert("location".into(), Value::String(path_to_uri(&p)));
            fill_names(&mut o, dir);
            if with_checksum {
                let (c, s) = checksum(&p)?;
                o.insert("checksum".into(), Value::String(c));
                o.insert("size".into(), json!(s));
            } else if let Ok(md) = std::fs::metadata(&p) {
                o.insert("size".into(), json!(md.len()));
            }
            out.push(Value::Object(o));
        }
    }
    Ok(out)
}

/// Reads up to 64 KiB of a file as text (`loadContents`).
pub fn load_contents(path: &Path) -> Result<String> {
    let f = std::fs::File::open(path).map_err(|e| CwlError::io(path, e))?;
    let mut buf = Vec::new();
    f.take(64 * 1024 + 1).read_to_end(&mut buf).map_err(|e| CwlError::io(path, e))?;
    if buf.len() > 64 * 1024 {
        return Err(CwlError::Failed(format!("{}: loadContents is limited to 64 KiB", path.display())));
    }
    Ok(String::from_utf8_lossy(&buf).to_string())
}

/// Copies a file or a directory tree (following symlinks).
pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    if from.is_dir() {
        std::fs::create_dir_all(to).map_err(|e| CwlError::io(to, e))?;
        let rd = std::fs::read_dir(from).map_err(|e| CwlError::io(from, e))?;
        for e in rd {
            let e = e.map_err(|e| CwlError::io(from, e))?;
            copy_tree(&e.path(), &to.join(e.file_name()))?;
        }
    } else {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|e| CwlError::io(parent, e))?;
        }
        std::fs::copy(from, to).map_err(|e| CwlError::io(from, e))?;
    }
    Ok(())
}
