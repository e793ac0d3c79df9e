//! Batch script and submit description templates: text with `{name}` placeholders, `{{` and `}}`
//! for literal braces (the task command's rule, and the reference's). Unlike the reference, an
//! unknown placeholder is an error when the queue file is loaded, not text left in a script: a
//! shell's `${HOME}` must be written `$HOME` or `${{HOME}}`.

use std::collections::BTreeMap;

/// A template checked against the placeholders a plugin offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Placeholder(String),
}

/// What is wrong with a template (line numbers start at 1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{name}` that the plugin does not offer.
    #[error("line {line}: unknown placeholder {{{name}}} (known: {known}; write {{{{ and }}}} for literal braces)")]
    Unknown {
        /// Line.
        line: usize,
        /// The name.
        name: String,
        /// The names on offer.
        known: String,
    },
    /// A `{` without its `}`, or a lone `}`.
    #[error("line {line}: unbalanced {brace:?} (write {{{{ and }}}} for literal braces)")]
    Unbalanced {
        /// Line.
        line: usize,
        /// The brace.
        brace: char,
    },
}

impl Template {
    /// Parses `text`, accepting only placeholders in `known`.
    ///
    /// # Errors
    /// The first [`TemplateError`] met.
    pub fn parse(text: &str, known: &[&str]) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut line = 1;
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            if let Some(after) = rest.strip_prefix("{{") {
                literal.push('{');
                rest = after;
            } else if let Some(after) = rest.strip_prefix("}}") {
                literal.push('}');
                rest = after;
            } else if c == '{' {
                let end = rest.find(['}', '\n']).filter(|&i| rest.as_bytes()[i] == b'}');
                let Some(end) = end else { return Err(TemplateError::Unbalanced { line, brace: '{' }) };
                let name = &rest[1..end];
                if !known.contains(&name) {
                    return Err(TemplateError::Unknown { line, name: name.to_owned(), known: known.join(", ") });
                }
                if !literal.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut literal)));
                }
                parts.push(Part::Placeholder(name.to_owned()));
                rest = &rest[end + 1..];
            } else if c == '}' {
                return Err(TemplateError::Unbalanced { line, brace: '}' });
            } else {
                if c == '\n' {
                    line += 1;
                }
                literal.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Self { parts })
    }

    /// Whether `{name}` appears.
    pub fn uses(&self, name: &str) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Placeholder(n) if n == name))
    }

    /// The text with every placeholder replaced (a missing value renders empty; `parse` made
    /// sure every name is one the plugin fills).
    pub fn render(&self, values: &BTreeMap<&str, String>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Placeholder(name) => out.push_str(values.get(name.as_str()).map_or("", String::as_str)),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &[&str] = &["cores", "worker_id"];

    #[test]
    fn placeholders_and_escaped_braces_render() {
        let template = Template::parse("#SBATCH -c {cores}\necho ${{HOME}} {{x}} {worker_id}\n", KNOWN).unwrap();
        let values = BTreeMap::from([("cores", "4".to_owned()), ("worker_id", "17".to_owned())]);
        assert_eq!(template.render(&values), "#SBATCH -c 4\necho ${HOME} {x} 17\n");
        assert!(template.uses("cores") && !template.uses("partition"));
    }

    #[test]
    fn unknown_placeholders_and_lone_braces_name_the_line() {
        let error = Template::parse("#!/bin/sh\necho ${HOME}\n", KNOWN).unwrap_err();
        assert_eq!(
            error.to_string(),
            "line 2: unknown placeholder {HOME} (known: cores, worker_id; write {{ and }} for literal braces)"
        );
        assert_eq!(
            Template::parse("a\nb {cores\n}", KNOWN).unwrap_err(),
            TemplateError::Unbalanced { line: 2, brace: '{' }
        );
        assert_eq!(Template::parse("a }", KNOWN).unwrap_err(), TemplateError::Unbalanced { line: 1, brace: '}' });
    }

    #[test]
    fn multibyte_text_survives() {
        let template = Template::parse("é {cores} ✓", KNOWN).unwrap();
        assert_eq!(template.render(&BTreeMap::from([("cores", "2".to_owned())])), "é 2 ✓");
    }
}
