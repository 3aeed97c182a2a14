//! Errors in the files operations staff write (policies, rosters, tests,
//! demand and shift plans, credentials): every refusal names the file, the
//! line and the field, TOML's own refusals included.

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
/// type, misses a key or has one nobody reads: the refusal at its line,
/// naming the key (`queues.level`, a missing `cases.contact.intent`), or
/// the table an unknown key is in (`(document)` at the top level).
pub fn toml_error(file: &str, text: &str, e: &toml::de::Error) -> FileError {
    toml_error_at(file, text, 0, e)
}

/// [`toml_error`] for a piece of `text` parsed alone, starting at byte
/// `start` of it.
pub fn toml_error_at(file: &str, text: &str, start: usize, e: &toml::de::Error) -> FileError {
    let at = start + e.span().map_or(0, |s| s.start);
    let path = key_path(e);
    // A missing key is named itself, in the table that misses it.
    let missing = e
        .message()
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| name);
    let field = match (path, missing) {
        (Some(path), Some(name)) => format!("{path}.{name}"),
        (None, Some(name)) => name.to_owned(),
        (Some(path), None) => path,
        (None, None) => "(document)".to_owned(),
    };
    invalid(file, text, at, field, e.message().trim())
}

/// The dotted key toml was reading when it refused. toml keeps it and
/// shows it only in its message, as a last line "in `a.b`" when the error
/// is shown without its input.
fn key_path(e: &toml::de::Error) -> Option<String> {
    let mut bare = e.clone();
    bare.set_input(None);
    let shown = bare.to_string();
    let path = shown
        .lines()
        .last()?
        .strip_prefix("in `")?
        .strip_suffix('`')?;
    (!path.is_empty()).then(|| path.to_owned())
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
        version: String,
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

    /// The field toml names, never the value; the file's own line.
    #[test]
    fn a_wrong_type_a_missing_or_unknown_key_is_named_by_its_table_or_key() {
        let v = "version = \"1\"\n";
        assert_eq!(
            field_of::<Doc>(&format!("{v}reservation_ttl = 15\n")),
            "2: reservation_ttl"
        );
        assert_eq!(
            field_of::<Doc>(&format!(
                "{v}[[queues]] # level 1\nid = \"a\"\nlevel = \"one\"\n"
            )),
            "4: queues.level"
        );
        assert_eq!(
            field_of::<Doc>(&format!(
                "{v}[[queues]]\nid = \"a\"\n[[queues]]\nid = \"b\"\r\nskills = {{ \"front desk\" = \"high\" }}\n"
            )),
            "6: queues.skills.front desk"
        );
        // An unknown key: the table it is in (the message names the key).
        assert_eq!(
            field_of::<Doc>(&format!("{v}[[queues]]\nid = \"a\"\nshift = \"early\"\n")),
            "4: queues"
        );
        assert_eq!(
            field_of::<Doc>(&format!(
                "{v}[[cases]]\ncontact = {{ urgency = \"x, {{y}}\", intent = 7 }} # a {{ comment\n"
            )),
            "3: cases.contact.intent"
        );
        assert_eq!(
            field_of::<Doc>(&format!("{v}[[cases]]\ncontact = {{ urgency = \"x\" }}\n")),
            "3: cases.contact.intent"
        );
        assert_eq!(
            field_of::<Doc>(&format!("{v}signals = [\n  \"[a]\",\n  3,\n]\n")),
            "4: signals"
        );
        // A missing top-level key, itself; an unknown one, the document.
        assert_eq!(field_of::<Doc>("reservation_ttl = \"1s\"\n"), "1: version");
        assert_eq!(field_of::<Doc>(&format!("{v}[nope]\n")), "2: (document)");
        assert_eq!(field_of::<Doc>("= 3\n"), "1: (document)");
    }
}
