//! The credentials file (`--credentials FILE`): the clients that may call,
//! each with a name (what logs and audit records show; never the token),
//! how it proves who it is (the SHA-256 of its bearer token, never the
//! token itself; or, under mutual TLS, a name its client certificate
//! carries), and its roles. Checked like the policy: a refusal names the
//! file, the line and the field.
//!
//! ```toml
//! [[clients]]
//! name = "ivr-main"
//! # printf %s "$TOKEN" | sha256sum
//! token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! roles = ["route"]
//!
//! [[clients]]
//! name = "cti-adapter"
//! # a DNS, URI or e-mail subject alternative name, or the subject's CN
//! certificate = "cti.clinic.example"
//! roles = ["cti", "observe"]
//! ```

use std::collections::{BTreeSet, HashMap};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

use super::Role;
use crate::file::{self, FileError};

/// A client the file names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// Who it is, in logs and audit records.
    pub name: std::sync::Arc<str>,
    /// What it may call.
    pub roles: BTreeSet<Role>,
}

/// The clients, found by the hash of their token or by a name of their
/// certificate.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    clients: Vec<Client>,
    by_token: HashMap<[u8; 32], usize>,
    by_certificate: HashMap<Box<str>, usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    clients: Vec<Spanned<RawClient>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    name: Spanned<String>,
    token_sha256: Option<Spanned<String>>,
    /// Refused with a message: a plaintext token has no place in a file.
    token: Option<Spanned<toml::Value>>,
    certificate: Option<Spanned<String>>,
    roles: Spanned<Vec<String>>,
}

impl Credentials {
    /// Reads and checks the file at `path`.
    pub fn read(path: &std::path::Path) -> Result<Credentials, FileError> {
        let (file, text) = file::read_text(path)?;
        Credentials::parse(&file, &text)
    }

    /// Checks `text`, the contents of `file`.
    pub fn parse(file: &str, text: &str) -> Result<Credentials, FileError> {
        let raw: Raw = toml::from_str(text).map_err(|e| file::toml_error(file, text, &e))?;
        if raw.clients.is_empty() {
            return Err(file::invalid(
                file,
                text,
                0,
                "clients",
                "no [[clients]]: every call would be refused",
            ));
        }
        let mut credentials = Credentials::default();
        let mut names = BTreeSet::new();
        for spanned in &raw.clients {
            let c = spanned.get_ref();
            // Each refusal points at the line of the field it names.
            let invalid = |at: usize, field: &str, message: String| {
                file::invalid(file, text, at, format!("clients.{field}"), message)
            };
            let (name, name_at) = (c.name.get_ref(), c.name.span().start);
            if name.trim().is_empty() {
                return Err(invalid(name_at, "name", "empty".into()));
            }
            // It goes into logs, headers and the journal as it is.
            if name.len() > 128 || name.chars().any(char::is_control) {
                return Err(invalid(
                    name_at,
                    "name",
                    "at most 128 characters, none of them control characters".into(),
                ));
            }
            if !names.insert(name.clone()) {
                return Err(invalid(name_at, "name", format!("`{name}` is named twice")));
            }
            if let Some(token) = &c.token {
                return Err(invalid(
                    token.span().start,
                    "token",
                    "a plaintext token has no place here: give its SHA-256 as token_sha256 (printf %s \"$TOKEN\" | sha256sum)".into(),
                ));
            }
            if c.token_sha256.is_none() && c.certificate.is_none() {
                return Err(invalid(
                    spanned.span().start,
                    "token_sha256",
                    "required, unless the client is known by its certificate".into(),
                ));
            }
            let index = credentials.clients.len();
            if let Some(hash) = &c.token_sha256 {
                let hash_at = hash.span().start;
                let hash: [u8; 32] = hex::decode(hash.get_ref().trim())
                    .ok()
                    .and_then(|h| h.try_into().ok())
                    .ok_or_else(|| {
                        invalid(
                            hash_at,
                            "token_sha256",
                            "not 64 hexadecimal digits (a SHA-256)".into(),
                        )
                    })?;
                if credentials.by_token.insert(hash, index).is_some() {
                    return Err(invalid(
                        hash_at,
                        "token_sha256",
                        "the same token is given to two clients".into(),
                    ));
                }
            }
            if let Some(certificate) = &c.certificate {
                let at = certificate.span().start;
                let certificate = certificate.get_ref().trim();
                if certificate.is_empty() {
                    return Err(invalid(at, "certificate", "empty".into()));
                }
                if credentials
                    .by_certificate
                    .insert(certificate.into(), index)
                    .is_some()
                {
                    return Err(invalid(
                        at,
                        "certificate",
                        format!("`{certificate}` is given to two clients"),
                    ));
                }
            }
            let roles_at = c.roles.span().start;
            if c.roles.get_ref().is_empty() {
                return Err(invalid(
                    roles_at,
                    "roles",
                    "empty: the client could call nothing".into(),
                ));
            }
            let mut roles = BTreeSet::new();
            for r in c.roles.get_ref() {
                let role = Role::parse(r).ok_or_else(|| {
                    invalid(
                        roles_at,
                        "roles",
                        format!("`{r}` is not one of: route, cti, observe, admin"),
                    )
                })?;
                roles.insert(role);
            }
            credentials.clients.push(Client {
                name: name.as_str().into(),
                roles,
            });
        }
        Ok(credentials)
    }

    /// The client whose bearer token is `token`, if any.
    pub fn client(&self, token: &str) -> Option<&Client> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_token.get(&hash).map(|&i| &self.clients[i])
    }

    /// The client a verified certificate with these names belongs to: the
    /// one whose `certificate` is among them. None if no client's is, or
    /// if the names match two clients (which one is meant cannot be told).
    pub fn certified(&self, names: &[Box<str>]) -> Option<&Client> {
        let mut found = None;
        for name in names {
            if let Some(&i) = self.by_certificate.get(name) {
                match found {
                    Some(j) if j != i => return None,
                    _ => found = Some(i),
                }
            }
        }
        found.map(|i| &self.clients[i])
    }

    /// How many clients the file names.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether the file names none (never, once checked).
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hex SHA-256 of `token`, as the file holds it.
    fn hash(token: &str) -> String {
        hex::encode(Sha256::digest(token.as_bytes()))
    }

    #[test]
    fn tokens_are_found_by_their_hash_and_nothing_else() {
        let text = format!(
            "[[clients]]\nname = \"ivr\"\ntoken_sha256 = \"{}\"\nroles = [\"route\"]\n\n[[clients]]\nname = \"cti\"\ntoken_sha256 = \"{}\"\nroles = [\"cti\", \"observe\"]\n",
            hash("secret-ivr"),
            hash("secret-cti")
        );
        let c = Credentials::parse("creds.toml", &text).unwrap();
        assert_eq!(c.len(), 2);
        let ivr = c.client("secret-ivr").unwrap();
        assert_eq!(&*ivr.name, "ivr");
        assert_eq!(ivr.roles, BTreeSet::from([Role::Route]));
        assert_eq!(
            c.client("secret-cti").unwrap().roles,
            BTreeSet::from([Role::Cti, Role::Observe])
        );
        assert!(c.client("secret-iv").is_none());
        assert!(
            c.client(&hash("secret-ivr")).is_none(),
            "the hash is not the token"
        );
        assert!(c.client("").is_none());
    }

    #[test]
    fn certificates_name_their_client_unless_they_name_two() {
        let text = format!(
            "[[clients]]\nname = \"ivr\"\ncertificate = \"ivr.example\"\nroles = [\"route\"]\n\n[[clients]]\nname = \"cti\"\ncertificate = \"cti.example\"\ntoken_sha256 = \"{}\"\nroles = [\"cti\"]\n",
            hash("secret-cti")
        );
        let c = Credentials::parse("creds.toml", &text).unwrap();
        let names = |n: &[&str]| n.iter().map(|s| Box::<str>::from(*s)).collect::<Vec<_>>();
        assert_eq!(&*c.certified(&names(&["ivr.example"])).unwrap().name, "ivr");
        assert_eq!(
            &*c.certified(&names(&["spiffe://x", "cti.example", "cti.example"]))
                .unwrap()
                .name,
            "cti"
        );
        assert_eq!(&*c.client("secret-cti").unwrap().name, "cti");
        assert!(c.certified(&names(&["other.example"])).is_none());
        assert!(c.certified(&names(&[])).is_none());
        assert!(
            c.certified(&names(&["ivr.example", "cti.example"]))
                .is_none(),
            "a certificate naming two clients names neither"
        );
    }

    #[test]
    fn refusals_name_the_file_line_and_field() {
        let good = hash("t");
        let cases = [
            (
                "[[clients]]\nname = \"a\"\ntoken = \"t\"\nroles = [\"route\"]\n".to_owned(),
                "creds.toml:3: clients.token: a plaintext token",
            ),
            (
                "[[clients]]\nname = \"a\"\ntoken_sha256 = \"abc\"\nroles = [\"route\"]\n"
                    .to_owned(),
                "creds.toml:3: clients.token_sha256: not 64 hexadecimal",
            ),
            (
                format!(
                    "[[clients]]\nname = \"a\"\ntoken_sha256 = \"{good}\"\nroles = [\"root\"]\n"
                ),
                "creds.toml:4: clients.roles: `root` is not one of",
            ),
            (
                format!(
                    "[[clients]]\nname = \"a\"\ntoken_sha256 = \"{good}\"\nroles = [\"route\"]\n\n[[clients]]\nname = \"a\"\ntoken_sha256 = \"{}\"\nroles = [\"cti\"]\n",
                    hash("u")
                ),
                "creds.toml:7: clients.name: `a` is named twice",
            ),
            (
                format!(
                    "[[clients]]\nname = \"a\"\ntoken_sha256 = \"{good}\"\nroles = [\"route\"]\n\n[[clients]]\nname = \"b\"\ntoken_sha256 = \"{good}\"\nroles = [\"cti\"]\n"
                ),
                "creds.toml:8: clients.token_sha256: the same token",
            ),
            (
                format!("[[clients]]\nname = \"a\"\ntoken_sha256 = \"{good}\"\nroles = []\n"),
                "creds.toml:4: clients.roles: empty",
            ),
            (String::new(), "creds.toml:1: clients: no [[clients]]"),
            (
                "[[clients]]\nname = \"a\"\nroles = [\"route\"]\n".to_owned(),
                "creds.toml:1: clients.token_sha256: required, unless the client is known by its certificate",
            ),
            (
                "[[clients]]\nname = \"a\"\ncertificate = \"x\"\nroles = [\"route\"]\n\n[[clients]]\nname = \"b\"\ncertificate = \"x\"\nroles = [\"cti\"]\n".to_owned(),
                "creds.toml:8: clients.certificate: `x` is given to two clients",
            ),
            (
                format!(
                    "[[clients]]\nname = \"a\\nb\"\ntoken_sha256 = \"{good}\"\nroles = [\"route\"]\n"
                ),
                "creds.toml:2: clients.name: at most 128 characters, none of them control",
            ),
            (
                format!(
                    "[[clients]]\nname = \"a\"\ntoken_sha256 = \"{good}\"\nroles = [\"route\"]\nrole = 1\n"
                ),
                "creds.toml:5: clients: unknown field `role`",
            ),
        ];
        for (text, expected) in cases {
            let e = Credentials::parse("creds.toml", &text)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(expected), "{e}\nexpected: {expected}");
        }
    }
}
