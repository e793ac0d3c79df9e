//! Type checking of values against CWL types: primitives, File/Directory, records, enums, unions,
//! arrays, named types from SchemaDefRequirement.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{CwlError, Result};
use crate::fs::fill_names;

/// Named types by short name.
pub type Schemas = HashMap<String, Value>;

/// Resolves a named type to its definition (other types are returned as they are).
pub fn resolve<'a>(t: &'a Value, schemas: &'a Schemas) -> &'a Value {
    if let Value::String(s) = t
        && let Some(def) = schemas.get(s)
    {
        return def;
    }
    t
}

/// Whether `t` admits null.
pub fn is_optional(t: &Value, schemas: &Schemas) -> bool {
    match resolve(t, schemas) {
        Value::String(s) => s == "null",
        Value::Array(a) => a.iter().any(|x| is_optional(x, schemas)),
        _ => false,
    }
}

/// Whether value `v` is of type `t`.
pub fn matches(t: &Value, v: &Value, schemas: &Schemas) -> bool {
    match resolve(t, schemas) {
        Value::String(s) => match s.as_str() {
            "null" => v.is_null(),
            "boolean" => v.is_boolean(),
            "int" | "long" => v.is_i64() || v.is_u64(),
            "float" | "double" => v.is_number(),
            "string" => v.is_string(),
            "File" | "stdout" | "stderr" => class_of(v) == Some("File"),
            "Directory" => class_of(v) == Some("Directory"),
            "Any" => !v.is_null(),
            _ => false,
        },
        Value::Array(a) => a.iter().any(|x| matches(x, v, schemas)),
        Value::Object(o) => match o.get("type").and_then(Value::as_str) {
            Some("array") => {
                let items = o.get("items").cloned().unwrap_or(Value::Null);
                v.as_array().is_some_and(|a| a.iter().all(|x| matches(&items, x, schemas)))
            }
            Some("record") => {
                let Some(vo) = v.as_object() else { return false };
                if class_of(v).is_some() {
                    return false;
                }
                o.get("fields").and_then(Value::as_array).is_some_and(|fs| {
                    fs.iter().all(|f| {
                        let name = f.get("name").and_then(Value::as_str).unwrap_or("");
                        let ft = f.get("type").cloned().unwrap_or(Value::Null);
                        matches(&ft, vo.get(name).unwrap_or(&Value::Null), schemas)
                    })
                })
            }
            Some("enum") => v.as_str().is_some_and(|s| {
                o.get("symbols")
                    .and_then(Value::as_array)
                    .is_some_and(|syms| syms.iter().any(|x| x.as_str() == Some(s)))
            }),
            Some(other) => matches(&Value::String(other.to_string()), v, schemas),
            None => false,
        },
        _ => false,
    }
}

/// `class` of a File/Directory value.
pub fn class_of(v: &Value) -> Option<&str> {
    v.get("class").and_then(Value::as_str)
}

/// Checks `v` against `t` and normalises File/Directory values (path, basename, ...), resolving
/// relative locations against `dir`. `field` names the value in errors.
pub fn conform(t: &Value, v: Value, schemas: &Schemas, dir: &Path, field: &str) -> Result<Value> {
    let rt = resolve(t, schemas).clone();
    if let Value::Array(members) = &rt {
        for m in members {
            if matches(m, &v, schemas) {
                return conform(m, v, schemas, dir, field);
            }
        }
        // Integers are acceptable where only floats are.
        return Err(CwlError::Input {
            field: field.into(),
            message: format!("value {} is not of type {}", brief(&v), t),
        });
    }
    if rt.as_str() == Some("Any") && v.is_null() {
        return Ok(v);
    }
    if !matches(&rt, &v, schemas) {
        return Err(CwlError::Input {
            field: field.into(),
            message: format!("value {} is not of type {}", brief(&v), t),
        });
    }
    Ok(match (&rt, v) {
        (_, Value::Object(mut o)) if matches!(o.get("class").and_then(Value::as_str), Some("File" | "Directory")) => {
            normalize_file(&mut o, dir, field)?;
            Value::Object(o)
        }
        (Value::Object(to), Value::Array(a)) if to.get("type").and_then(Value::as_str) == Some("array") => {
            let items = to.get("items").cloned().unwrap_or(Value::Null);
            let mut out = Vec::new();
            for (i, x) in a.into_iter().enumerate() {
                out.push(conform(&items, x, schemas, dir, &format!("{field}[{i}]"))?);
            }
            Value::Array(out)
        }
        (Value::Object(to), Value::Object(mut o)) if to.get("type").and_then(Value::as_str) == Some("record") => {
            for f in to.get("fields").and_then(Value::as_array).cloned().unwrap_or_default() {
                let name = f.get("name").and_then(Value::as_str).unwrap_or("").to_string();
                let ft = f.get("type").cloned().unwrap_or(Value::Null);
                let fv = o.remove(&name).unwrap_or(Value::Null);
                let fv = conform(&ft, fv, schemas, dir, &format!("{field}.{name}"))?;
                o.insert(name, fv);
            }
            Value::Object(o)
        }
        (_, v) => v,
    })
}

fn brief(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 80 { format!("{}...", &s[..80]) } else { s }
}

/// Fills names of a File/Directory and its secondaryFiles/listing; checks the file exists.
pub fn normalize_file(o: &mut Map<String, Value>, dir: &Path, field: &str) -> Result<()> {
    let has_loc = o.contains_key("location") || o.contains_key("path");
    if !has_loc && !o.contains_key("contents") && o.get("class").and_then(Value::as_str) == Some("File") {
        return Err(CwlError::Input {
            field: field.into(),
            message: "a File needs `location`, `path` or `contents`".into(),
        });
    }
    let given = o.get("basename").and_then(Value::as_str).map(str::to_string);
    fill_names(o, dir);
    if let Some(b) = given {
        let (root, ext) = crate::fs::split_name(&b);
        o.insert("basename".into(), Value::String(b));
        if o.get("class").and_then(Value::as_str) == Some("File") {
            o.insert("nameroot".into(), Value::String(root));
            o.insert("nameext".into(), Value::String(ext));
        }
    }
    if let Some(p) = o.get("path").and_then(Value::as_str) {
        match std::fs::metadata(p) {
            Err(_) => return Err(CwlError::Input { field: field.into(), message: format!("{p} does not exist") }),
            Ok(md) if md.is_file() => {
                o.insert("size".into(), Value::from(md.len()));
            }
            Ok(_) => {}
        }
    }
    if let Some(Value::Array(sf)) = o.get_mut("secondaryFiles") {
        for x in sf.iter_mut() {
            if let Value::Object(xo) = x {
                normalize_file(xo, dir, field)?;
            }
        }
    }
    if let Some(Value::Array(ls)) = o.get_mut("listing") {
        for x in ls.iter_mut() {
            if let Value::Object(xo) = x {
                normalize_file(xo, dir, field)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unions_arrays_records_enums() {
        let s = Schemas::new();
        assert!(matches(&json!(["null", "int"]), &json!(null), &s));
        assert!(matches(&json!({"type": "array", "items": "string"}), &json!(["a", "b"]), &s));
        assert!(!matches(&json!({"type": "array", "items": "string"}), &json!(["a", 1]), &s));
        let rec = json!({"type": "record", "fields": [{"name": "a", "type": "int"}]});
        assert!(matches(&rec, &json!({"a": 1}), &s));
        assert!(!matches(&rec, &json!({"a": "x"}), &s));
        let en = json!({"type": "enum", "symbols": ["x", "y"]});
        assert!(matches(&en, &json!("y"), &s));
        assert!(!matches(&en, &json!("z"), &s));
    }

    #[test]
    fn conform_names_the_field() {
        let s = Schemas::new();
        let err = conform(&json!("int"), json!("x"), &s, Path::new("/"), "count");
        assert!(matches!(err, Err(CwlError::Input { ref field, .. }) if field == "count"));
    }
}
