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
