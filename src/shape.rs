//! What each kind of name or value may hold: the one definition that the
//! gRPC edge checks requests against and that policy and roster files are
//! checked against at load, so a file names nothing a request could not
//! carry (a policy word no contact can send would be a rule that never
//! matches).

/// Most skills, languages or channels of one agent.
pub const MAX_AGENT_LIST: usize = 64;

/// A kind of name or value: its longest length and its characters.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Longest value, in bytes.
    pub max: usize,
    allowed: fn(char) -> bool,
    /// What the value as a whole must be beyond its characters.
    whole: Option<Grammar>,
    describe: &'static str,
}

/// A grammar a value must follow, and how to say it does not.
#[derive(Debug, Clone, Copy)]
struct Grammar {
    /// Whether a value of the right characters follows it.
    formed: fn(&str) -> bool,
    /// What a value must be, said when it is not (never the value).
    problem: &'static str,
}

impl Shape {
    /// What the characters may be, for messages ("lowercase letters, ...").
    pub fn describe(&self) -> &'static str {
        self.describe
    }

    /// Why a non-empty `value` does not have this shape; `None` if it has.
    /// Never repeats the value, which could be patient data sent by
    /// mistake. Whether it may be empty is the caller's to say.
    pub fn problem(&self, value: &str) -> Option<String> {
        if value.len() > self.max {
            Some(format!("longer than {} bytes", self.max))
        } else if !value.chars().all(self.allowed) {
            Some(format!("only {}", self.describe))
        } else {
            self.whole
                .filter(|g| !(g.formed)(value))
                .map(|g| g.problem.to_owned())
        }
    }

    /// [`Shape::problem`] for a value that must not be empty either.
    pub fn required_problem(&self, value: &str) -> Option<String> {
        if value.is_empty() {
            Some("required".to_owned())
        } else {
            self.problem(value)
        }
    }
}

/// An opaque id: a contact, request, agent or queue.
pub const ID: Shape = Shape {
    max: 128,
    allowed: |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'),
    whole: None,
    describe: "letters, digits and . _ : -",
};

/// A vocabulary word: an intent, a signal, an attribute key, a skill.
pub const WORD: Shape = Shape {
    max: 64,
    allowed: |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_',
    whole: None,
    describe: "lowercase letters, digits and _",
};

/// An attribute's value.
pub const VALUE: Shape = Shape {
    max: 64,
    allowed: |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'),
    whole: None,
    describe: "letters, digits and . _ -",
};

/// A language tag, well-formed by BCP 47 (RFC 5646): `en`, `es-MX`,
/// `zh-Hant-HK`; not `en--US` or `123`.
pub const LANGUAGE: Shape = Shape {
    max: 16,
    allowed: |c| c.is_ascii_alphanumeric() || c == '-',
    whole: Some(Grammar {
        formed: |tag| oxilangtag::LanguageTag::parse(tag).is_ok(),
        problem: "a well-formed BCP 47 language tag such as en or es-MX",
    }),
    describe: "a language tag such as en or es-MX",
};

/// A transfer address. A URI's characters (RFC 3986): an address, never a
/// sentence, and nothing that could pass for another field in a log line.
pub const ADDRESS: Shape = Shape {
    max: 256,
    allowed: |c| c.is_ascii_alphanumeric() || "-._~:/?#[]@!$&'()*+,;=%".contains(c),
    whole: None,
    describe: "a URI such as sip:billing@pbx.example (no spaces or double quotes)",
};

/// Free text shown to people: a team name.
pub const TEXT: Shape = Shape {
    max: 256,
    allowed: |c| !c.is_control(),
    whole: None,
    describe: "printable text",
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_shape_names_what_is_wrong_without_the_value() {
        assert_eq!(WORD.problem("billing_2"), None);
        assert_eq!(
            WORD.problem("Jane Doe").as_deref(),
            Some("only lowercase letters, digits and _")
        );
        assert_eq!(
            WORD.problem(&"a".repeat(65)).as_deref(),
            Some("longer than 64 bytes")
        );
        assert_eq!(WORD.problem(""), None);
        assert_eq!(WORD.required_problem("").as_deref(), Some("required"));
        assert_eq!(ADDRESS.problem("sip:a@b.example"), None);
        assert!(ADDRESS.problem("sip:a@b created=x").is_some());
        assert_eq!(TEXT.problem("Cardiology – nights"), None);
        assert!(TEXT.problem("a\nb").is_some());
        assert_eq!(LANGUAGE.problem("pt-BR"), None);
        for tag in ["en", "es-419", "zh-Hant-HK", "sgn-BE-FR", "EN-us"] {
            assert_eq!(LANGUAGE.problem(tag), None, "{tag}");
        }
        for tag in ["en--US", "-en", "en-", "en-a", "e", "123", "en-US-x"] {
            assert_eq!(
                LANGUAGE.problem(tag).as_deref(),
                Some("a well-formed BCP 47 language tag such as en or es-MX"),
                "{tag}"
            );
        }
        assert_eq!(VALUE.problem("plan-2.b"), None);
        assert_eq!(ID.problem("agent:7"), None);
    }
}
