//! Fuzz target: arbitrary bytes as the JSON body of each HTTP/JSON route,
//! parsed as the HTTP/JSON layer does. Nothing may panic; what parses must
//! survive the protobuf round trip unchanged; a fault names its field only
//! by proto field names (never a map key or anything else the body sent),
//! and its reason never repeats the body.
//!
//! Input: one selector byte (the route, by path order), then the body.

#![no_main]

use std::{collections::HashSet, sync::OnceLock};

use careroute::grpc::{
    FILE_DESCRIPTOR_SET,
    http_json::{Route, Routes},
    json_body::{Fault, from_json},
};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use prost_reflect::DynamicMessage;

/// The words of 6 or more letters in the reasons `json_body` writes.
const TEMPLATE_WORDS: [&str; 10] = [
    "string", "base64", "number", "integer", "digits", "duration", "object", "message", "fields",
    "column",
];

/// The routes, by path, read from the descriptor once.
fn routes() -> Vec<&'static Route> {
    static ROUTES: OnceLock<Routes> = OnceLock::new();
    let routes = ROUTES
        .get_or_init(|| Routes::from_descriptor(FILE_DESCRIPTOR_SET).expect("the routes build"));
    let mut all: Vec<&Route> = routes.all().collect();
    all.sort_by(|a, b| a.path.cmp(&b.path));
    all
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let routes = routes();
    let route = routes[usize::from(selector) % routes.len()];
    match from_json(route.input(), body) {
        Ok(message) => {
            let bytes = message.encode_to_vec();
            let again = DynamicMessage::decode(route.input().clone(), bytes.as_slice())
                .expect("what was encoded decodes");
            assert_eq!(again.encode_to_vec(), bytes);
        }
        Err(Fault::TooLarge) => {}
        Err(Fault::Malformed { field, why }) => {
            let names: HashSet<String> = route
                .input()
                .parent_pool()
                .all_messages()
                .flat_map(|m| {
                    let mut names: Vec<String> = m.fields().map(|f| f.name().to_owned()).collect();
                    names.push(m.name().to_owned());
                    names
                })
                .collect();
            if let Some(field) = field {
                for part in field.split('.') {
                    // `name` or `name[3]`: a list index, never a key.
                    let (name, index) = part.split_once('[').unwrap_or((part, "]"));
                    assert!(names.contains(name), "{field} names {name}");
                    let digits = index.strip_suffix(']').unwrap_or("x");
                    assert!(
                        digits.chars().all(|c| c.is_ascii_digit()),
                        "{field} holds {index}"
                    );
                }
            }
            // Any word of 6 or more letters and digits the body sent that
            // the reason repeats must be a word of the proto (a field or message
            // name) or of
            // the reasons careroute writes.
            let said: HashSet<&str> = why.split(|c: char| !c.is_ascii_alphanumeric()).collect();
            let text = String::from_utf8_lossy(body);
            for word in text.split(|c: char| !c.is_ascii_alphanumeric()) {
                if word.len() >= 6 && said.contains(word) {
                    let known = names.contains(word)
                        || route.input().parent_pool().all_enums().any(|e| {
                            e.values()
                                .any(|v| v.name() == word || v.name().split('_').any(|w| w == word))
                        })
                        || TEMPLATE_WORDS.contains(&word);
                    assert!(known, "the reason repeats {word:?}: {why}");
                }
            }
        }
    }
});
