//! Who a verified client certificate says its holder is: its subject
//! alternative names (DNS, URI, e-mail), or, only when it has none, its
//! subject's common names (as RFC 6125 has clients treat server names).
//! The credentials file matches a client's `certificate` against them.

/// The names of the certificate `der` (already verified by the TLS
/// handshake); empty if it cannot be parsed.
pub fn names(der: &[u8]) -> Vec<Box<str>> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names: Vec<Box<str>> = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(n) | GeneralName::URI(n) | GeneralName::RFC822Name(n) = name
            {
                names.push((*n).into());
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(cn) = cn.as_str() {
                names.push(cn.into());
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    use super::*;

    fn cert(sans: Vec<SanType>, cn: &str) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .self_signed(&KeyPair::generate().unwrap())
            .unwrap()
            .der()
            .to_vec()
    }

    fn strings(names: Vec<Box<str>>) -> Vec<String> {
        names.into_iter().map(String::from).collect()
    }

    #[test]
    fn alternative_names_speak_for_the_holder_and_the_common_name_only_without_them() {
        let with_sans = cert(
            vec![
                SanType::DnsName("ivr.clinic.example".try_into().unwrap()),
                SanType::URI("spiffe://clinic/ivr".try_into().unwrap()),
                SanType::Rfc822Name("ops@clinic.example".try_into().unwrap()),
                SanType::IpAddress([10, 0, 0, 1].into()),
            ],
            "cti.clinic.example",
        );
        // The CN names someone else: it is not taken when SANs exist.
        assert_eq!(
            strings(names(&with_sans)),
            [
                "ivr.clinic.example",
                "spiffe://clinic/ivr",
                "ops@clinic.example"
            ]
        );
        let cn_only = cert(Vec::new(), "legacy-ivr");
        assert_eq!(strings(names(&cn_only)), ["legacy-ivr"]);
        assert!(names(b"not a certificate").is_empty());
    }
}
