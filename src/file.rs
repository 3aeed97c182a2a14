//! Errors in the files operations staff write (policies, rosters): every
//! refusal names the file, the line and the field.

/// A file that could not be read or was refused.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The path given.
        file: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not valid.
    #[error("{file}:{line}: {field}: {message}")]
    Invalid {
        /// The path given.
        file: String,
        /// 1-based line of the offending value.
        line: usize,
        /// Dotted path of the offending field.
        field: String,
        /// What is wrong and what is expected.
        message: String,
    },
}

/// Reads a whole file, naming it in the error.
pub fn read_text(path: &std::path::Path) -> Result<(String, String), FileError> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((file, text)),
        Err(source) => Err(FileError::Read { file, source }),
    }
}

/// The 1-based line of byte `offset` in `text`.
pub fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// A refusal of `file` at byte `offset` of `text`.
pub fn invalid(
    file: &str,
    text: &str,
    offset: usize,
    field: impl Into<String>,
    message: impl Into<String>,
) -> FileError {
    FileError::Invalid {
        file: file.to_owned(),
        line: line_at(text, offset),
        field: field.into(),
        message: message.into(),
    }
}

/// The one of `options` that `s` names (by `name`), or a refusal at its
/// line naming `field` and listing the names there are.
pub fn one_of<T: Copy>(
    file: &str,
    text: &str,
    s: &toml::Spanned<String>,
    field: &str,
    options: &[T],
    name: fn(T) -> &'static str,
) -> Result<T, FileError> {
    options
        .iter()
        .copied()
        .find(|o| name(*o) == s.get_ref())
        .ok_or_else(|| {
            let names: Vec<&str> = options.iter().map(|o| name(*o)).collect();
            invalid(
                file,
                text,
                s.span().start,
                field,
                format!("`{}` is not one of: {}", s.get_ref(), names.join(", ")),
            )
        })
}

/// A TOML file that does not parse, or that gives a value of the wrong
/// type or a key nobody reads: the refusal at its line, naming the key
/// there (`queues.level`, `cases.contact.intent`), or `(document)` when no
/// key can be told.
pub fn toml_error(file: &str, text: &str, e: &toml::de::Error) -> FileError {
    toml_error_at(file, text, 0, e)
}

/// [`toml_error`] for a piece of `text` parsed alone, starting at byte
/// `start` of it.
pub fn toml_error_at(file: &str, text: &str, start: usize, e: &toml::de::Error) -> FileError {
    let at = start + e.span().map_or(0, |s| s.start);
    let field = key_at(text, at).unwrap_or_else(|| "(document)".to_owned());
    invalid(file, text, at, field, e.message().trim())
}

/// The dotted key whose value (or name) is at byte `at` of `text`: the
/// table header above it, then the keys that lead to it from the start of
/// its `key = value` line, through inline tables.
fn key_at(text: &str, at: usize) -> Option<String> {
    let at = (0..=at.min(text.len()))
        .rev()
        .find(|i| text.is_char_boundary(*i))?;
    let mut header: Vec<String> = Vec::new();
    let mut statement = None;
    let mut offset = 0;
    // Whole lines, through the one `at` is on.
    let through = text[at..].find('\n').map_or(text.len(), |n| at + n);
    for line in text[..through].split_inclusive('\n') {
        if offset > at {
            break;
        }
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') && statement.is_none_or(|s| s < offset) {
            let end = line.len().min(at - offset);
            let name = trimmed.trim_end().trim_matches(|c| c == '[' || c == ']');
            header = dotted(name);
            statement = None;
            if end < line.len() {
                // The error is in the header itself.
                return Some(header.join("."));
            }
        } else if starts_statement(trimmed) {
            statement = Some(offset);
        }
        offset += line.len();
    }
    let mut path = header;
    if let Some(start) = statement {
        path.extend(keys_before(&text[start..at]));
    }
    // An unknown key is pointed at by its name.
    let rest = &text[at..];
    let name_len = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .unwrap_or(rest.len());
    if name_len > 0 && rest[name_len..].trim_start().starts_with('=') {
        path.push(rest[..name_len].to_owned());
    }
    (!path.is_empty()).then(|| path.join("."))
}

/// Whether a line opens a `key = value` statement.
fn starts_statement(line: &str) -> bool {
    let first = line.chars().next();
    first.is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '"' | '\''))
        && line
            .find('=')
            .is_some_and(|eq| !line[..eq].contains(['{', '[', ',', '#']))
}

/// `a.b."c d"` as its parts.
fn dotted(name: &str) -> Vec<String> {
    name.split('.')
        .map(|p| p.trim().trim_matches(['"', '\'']).to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The keys open at the end of `prefix` (a statement up to the error):
/// `contact = { intent = ` gives `contact`, `intent`.
fn keys_before(prefix: &str) -> Vec<String> {
    // Each frame: an inline table (its current key) or an array.
    let mut frames: Vec<(bool, Option<String>)> = vec![(true, None)];
    let mut pending: Vec<String> = Vec::new();
    let mut after_dot = false;
    let mut chars = prefix.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '#' => while chars.next_if(|(_, c)| *c != '\n').is_some() {},
            '"' | '\'' => {
                let mut token = String::new();
                let mut escaped = false;
                for (_, d) in chars.by_ref() {
                    if d == c && !escaped {
                        break;
                    }
                    escaped = c == '"' && d == '\\' && !escaped;
                    token.push(d);
                }
                push_token(&mut pending, &mut after_dot, token);
            }
            '.' => after_dot = true,
            '=' => {
                if let Some(frame) = frames.last_mut() {
                    frame.1 = Some(pending.join("."));
                }
                pending.clear();
            }
            '{' => frames.push((true, None)),
            '[' => frames.push((false, None)),
            '}' | ']' if frames.len() > 1 => {
                frames.pop();
            }
            ',' => {
                if let Some(frame) = frames.last_mut().filter(|f| f.0) {
                    frame.1 = None;
                }
                pending.clear();
            }
            c if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '+' || c == ':' => {
                let mut end = i + c.len_utf8();
                while let Some((j, d)) = chars.next_if(|(_, d)| {
                    d.is_ascii_alphanumeric() || matches!(d, '_' | '-' | '+' | ':')
                }) {
                    end = j + d.len_utf8();
                }
                push_token(&mut pending, &mut after_dot, prefix[i..end].to_owned());
            }
            _ => {}
        }
    }
    frames
        .into_iter()
        .filter_map(|(table, key)| key.filter(|_| table))
        .flat_map(|key| dotted(&key))
        .collect()
}

fn push_token(pending: &mut Vec<String>, after_dot: &mut bool, token: String) {
    if !*after_dot {
        pending.clear();
    }
    pending.push(token);
    *after_dot = false;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of<T: serde::de::DeserializeOwned + std::fmt::Debug>(text: &str) -> String {
        let e = toml::from_str::<T>(text).unwrap_err();
        match toml_error("f.toml", text, &e) {
            FileError::Invalid { line, field, .. } => format!("{line}: {field}"),
            other => panic!("{other:?}"),
        }
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        reservation_ttl: Option<String>,
        signals: Option<Vec<String>>,
        #[serde(default)]
        queues: Vec<Queue>,
        #[serde(default)]
        cases: Vec<Case>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Queue {
        id: String,
        level: Option<i64>,
        skills: Option<std::collections::BTreeMap<String, i64>>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Case {
        contact: Contact,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Contact {
        intent: String,
        urgency: Option<String>,
    }

    #[test]
    fn a_wrong_type_or_unknown_key_is_named_by_its_key_not_its_value() {
        assert_eq!(
            field_of::<Doc>("reservation_ttl = 15\n"),
            "1: reservation_ttl"
        );
        assert_eq!(
            field_of::<Doc>("[[queues]]\nid = \"a\"\nlevel = \"one\"\n"),
            "3: queues.level"
        );
        assert_eq!(
            field_of::<Doc>("[[queues]]\nid = \"a\"\nskills = { front = \"high\" }\n"),
            "3: queues.skills.front"
        );
        assert_eq!(
            field_of::<Doc>("[[queues]]\nid = \"a\"\nshift = \"early\"\n"),
            "3: queues.shift"
        );
        assert_eq!(
            field_of::<Doc>(
                "[[cases]]\ncontact = { urgency = \"x, {y}\", intent = 7 } # a { comment\n"
            ),
            "2: cases.contact.intent"
        );
        assert_eq!(
            field_of::<Doc>("[[cases]]\ncontact = { urgency = \"x\" }\n"),
            "2: cases.contact"
        );
        assert_eq!(
            field_of::<Doc>("signals = [\n  \"a\",\n  3,\n]\n"),
            "3: signals"
        );
        assert_eq!(field_of::<Doc>("[nope]\n"), "1: nope");
        assert_eq!(field_of::<Doc>("= 3\n"), "1: (document)");
    }
}
