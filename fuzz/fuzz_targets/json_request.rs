//! Fuzz target: arbitrary bytes as the JSON body of each HTTP/JSON route,
//! parsed as the HTTP/JSON layer does. Nothing may panic; what parses must
//! survive the protobuf round trip unchanged; a fault names its field only
//! by proto field names (never a map key or anything else the body sent),
//! and its reason never repeats the body.
//!
//! Input: one selector byte (the route, by path order), then the body.

#![no_main]

use std::collections::HashSet;

use careroute::grpc::{
    FILE_DESCRIPTOR_SET,
    http_json::Routes,
    json_body::{Fault, from_json},
};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use prost_reflect::DynamicMessage;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let Ok(routes) = Routes::from_descriptor(FILE_DESCRIPTOR_SET) else {
        panic!("the routes do not build");
    };
    let mut all: Vec<_> = routes.all().collect();
    all.sort_by(|a, b| a.path.cmp(&b.path));
    let route = all[usize::from(selector) % all.len()];
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
                .flat_map(|m| m.fields().map(|f| f.name().to_owned()).collect::<Vec<_>>())
                .collect();
            if let Some(field) = field {
                for part in field.split('.') {
                    let name = part.split('[').next().unwrap_or_default();
                    assert!(names.contains(name), "{field} names {name}");
                }
            }
            // Any run of 6 or more letters and digits the body sent that the
            // reason repeats must be a word of the proto (a name) or of the
            // reasons careroute writes.
            let text = String::from_utf8_lossy(body);
            for word in text.split(|c: char| !c.is_ascii_alphanumeric()) {
                if word.len() >= 6 && why.contains(word) {
                    let known = names.contains(word)
                        || route.input().parent_pool().all_enums().any(|e| {
                            e.values()
                                .any(|v| v.name().split('_').any(|w| w == word) || v.name() == word)
                        })
                        || [
                            "number", "string", "object", "column", "integer", "digits", "message",
                            "fields", "base64", "Duration", "duration", "RFC",
                        ]
                        .contains(&word);
                    assert!(known, "the reason repeats {word:?}: {why}");
                }
            }
        }
    }
});
