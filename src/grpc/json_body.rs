//! An HTTP/JSON request's body as the gRPC body of its method: read when
//! the call reads it (after authorization, admission and under the request
//! deadline, as a gRPC body is), parsed with proto3's canonical JSON mapping
//! into the method's request message, and framed as one gRPC message. What
//! is wrong with a body is said from the descriptor (the field by its proto
//! name, and what it must be), never by repeating what was sent.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use parking_lot::Mutex;
use prost::Message;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor};
use serde_path_to_error::Segment;
use tonic::{Status, body::Body};

/// The largest JSON body read: as for a binary request.
pub const MAX_JSON_BYTES: usize = super::service::MAX_MESSAGE_BYTES;

/// Why a body is not the method's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Over [`MAX_JSON_BYTES`].
    TooLarge,
    /// Not JSON, or not the request message in JSON.
    Malformed {
        /// The field at fault by its proto path (`attributes`,
        /// `skills[1].proficiency`), when the body reached one.
        field: Option<String>,
        /// What is wrong there, and where in the body.
        why: String,
    },
}

/// Where a body's fault is left for the layer that answers.
pub type FaultSlot = Arc<Mutex<Option<Fault>>>;

/// The JSON body of a request for `input`, read and converted as polled.
pub struct JsonBody {
    json: Body,
    read: BytesMut,
    input: MessageDescriptor,
    fault: FaultSlot,
    done: bool,
}

impl JsonBody {
    /// Converts `json` into one gRPC message of `input` when polled; a fault
    /// goes to `fault` (and fails the body).
    pub fn new(json: Body, input: MessageDescriptor, fault: FaultSlot) -> JsonBody {
        JsonBody {
            json,
            read: BytesMut::new(),
            input,
            fault,
            done: false,
        }
    }

    fn fail(&mut self, fault: Fault) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.done = true;
        // The call's own code, as its metrics count it; the answer the
        // client gets is the layer's, from the fault.
        let status = match fault {
            Fault::TooLarge => Status::resource_exhausted("the HTTP/JSON body is too large"),
            Fault::Malformed { .. } => {
                Status::invalid_argument("the HTTP/JSON body is not the method's request")
            }
        };
        *self.fault.lock() = Some(fault);
        Poll::Ready(Some(Err(status)))
    }
}

impl http_body::Body for JsonBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match ready!(Pin::new(&mut this.json).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if this.read.len() + data.len() > MAX_JSON_BYTES {
                            return this.fail(Fault::TooLarge);
                        }
                        this.read.extend_from_slice(&data);
                    }
                }
                // The transport failed: the client went away.
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    this.done = true;
                    return match to_message(&this.input, &this.read) {
                        Ok(framed) => Poll::Ready(Some(Ok(Frame::data(framed)))),
                        Err(fault) => this.fail(fault),
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// `json` as one framed gRPC message of `input`; an empty body is the
/// empty message.
fn to_message(input: &MessageDescriptor, json: &[u8]) -> Result<Bytes, Fault> {
    let message = from_json(input, json)?;
    let encoded = message.encode_to_vec();
    let length = u32::try_from(encoded.len()).map_err(|_| Fault::TooLarge)?;
    let mut framed = BytesMut::with_capacity(5 + encoded.len());
    framed.put_u8(0);
    framed.put_u32(length);
    framed.extend_from_slice(&encoded);
    Ok(framed.freeze())
}

/// The request message in `json`.
pub fn from_json(input: &MessageDescriptor, json: &[u8]) -> Result<DynamicMessage, Fault> {
    if json.iter().all(u8::is_ascii_whitespace) {
        return Ok(DynamicMessage::new(input.clone()));
    }
    let mut reader = serde_json::Deserializer::from_slice(json);
    let mut track = serde_path_to_error::Track::new();
    let parsed = DynamicMessage::deserialize(
        input.clone(),
        serde_path_to_error::Deserializer::new(&mut reader, &mut track),
    )
    .and_then(|message| reader.end().map(|()| message));
    let message = parsed.map_err(|e| describe(input, &track.path(), &e))?;
    named_once(input, json)?;
    Ok(message)
}

/// Refuses an object that names a field twice (`contactId` and
/// `contact_id`, or one name twice), or a map that names a key twice: the
/// parser keeps the last, and a proxy or firewall that read the first would
/// have seen another request.
fn named_once(input: &MessageDescriptor, json: &[u8]) -> Result<(), Fault> {
    let mut reader = serde_json::Deserializer::from_slice(json);
    let mut track = serde_path_to_error::Track::new();
    let checked = serde::de::DeserializeSeed::deserialize(
        Once::Message(input.clone()),
        serde_path_to_error::Deserializer::new(&mut reader, &mut track),
    );
    checked.map_err(|e| {
        let (_, named) = locate(input, &track.path());
        Fault::Malformed {
            field: (!named.is_empty()).then_some(named),
            why: format!(
                "names a field twice, by the same name or by its JSON and proto names (at line {} column {})",
                e.line(),
                e.column()
            ),
        }
    })
}

/// What a JSON value stands for, as far as naming twice goes.
enum Once {
    /// A message: its keys are fields, by either spelling.
    Message(MessageDescriptor),
    /// A map field's object: its keys are the client's, compared as sent;
    /// its values are messages of this kind, if any.
    Map(Option<MessageDescriptor>),
    /// Anything else (a scalar, a well-known type's string).
    Value,
}

impl Once {
    /// What the value of `field` stands for (each element, for a list).
    fn of(field: &FieldDescriptor) -> Once {
        let message = |kind: Kind| match kind {
            Kind::Message(m) if !is_well_known(&m) => Some(m),
            _ => None,
        };
        if field.is_map() {
            return Once::Map(message(element_kind(field)));
        }
        message(field.kind()).map_or(Once::Value, Once::Message)
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Once {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Once {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        // A list's elements stand for what the list field's values do.
        let element = || match &self {
            Once::Message(m) => Once::Message(m.clone()),
            _ => Once::Value,
        };
        while seq.next_element_seed(element())?.is_some() {}
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let twice = || serde::de::Error::custom("a field named twice");
        match self {
            Once::Message(m) => {
                let mut seen = std::collections::HashSet::new();
                while let Some(key) = map.next_key::<String>()? {
                    let field = m
                        .get_field_by_json_name(&key)
                        .or_else(|| m.get_field_by_name(&key));
                    let Some(field) = field else {
                        // Unknown fields were refused by the parse.
                        map.next_value_seed(Once::Value)?;
                        continue;
                    };
                    if !seen.insert(field.number()) {
                        return Err(twice());
                    }
                    map.next_value_seed(Once::of(&field))?;
                }
            }
            Once::Map(values) => {
                let mut seen = std::collections::HashSet::new();
                while let Some(key) = map.next_key::<String>()? {
                    if !seen.insert(key) {
                        return Err(twice());
                    }
                    map.next_value_seed(values.clone().map_or(Once::Value, Once::Message))?;
                }
            }
            Once::Value => {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
            }
        }
        Ok(())
    }
}

/// Where a JSON path leads in the request message.
enum At {
    /// A message (the request itself, or a message field's value).
    Message(MessageDescriptor),
    /// A field's value as a whole.
    Field(FieldDescriptor),
    /// One element of a list field, or one value of a map field.
    Element(FieldDescriptor),
}

/// The fault of a parse that failed at `path` with `error`: the field by
/// its proto path (map keys left out: they are the client's) and what it
/// must be, from the descriptor. serde's own text is not used: it quotes
/// the value it could not take.
fn describe(
    input: &MessageDescriptor,
    path: &serde_path_to_error::Path,
    error: &serde_json::Error,
) -> Fault {
    let place = format!("at line {} column {}", error.line(), error.column());
    if !error.is_data() {
        return Fault::Malformed {
            field: None,
            why: format!("not valid JSON ({place})"),
        };
    }
    let (mut at, named) = locate(input, path);
    // A message field's value is an object of that message's fields.
    if let At::Field(f) | At::Element(f) = &at
        && !(f.is_list() && matches!(at, At::Field(_)))
        && !(f.is_map() && matches!(at, At::Field(_)))
        && let Kind::Message(m) = element_kind(f)
        && !is_well_known(&m)
    {
        at = At::Message(m);
    }
    let why = match &at {
        At::Message(m) => format!("must be an object with only the fields of {}", m.name()),
        At::Field(f) if f.is_list() => "must be an array".to_owned(),
        At::Field(f) if f.is_map() => "must be an object".to_owned(),
        At::Field(f) => must_be(&f.kind()),
        At::Element(f) => must_be(&element_kind(f)),
    };
    Fault::Malformed {
        field: (!named.is_empty()).then_some(named),
        why: format!("{why} ({place})"),
    }
}

/// Where `path` leads in `input`, and the field's proto path (map keys
/// left out: they are the client's).
fn locate(input: &MessageDescriptor, path: &serde_path_to_error::Path) -> (At, String) {
    let mut at = At::Message(input.clone());
    let mut named = String::new();
    for segment in path.iter() {
        at = enter(at);
        at = match (at, segment) {
            (At::Message(m), Segment::Map { key }) => {
                let field = m.fields().find(|f| f.json_name() == key || f.name() == key);
                match field {
                    Some(f) => {
                        if !named.is_empty() {
                            named.push('.');
                        }
                        named.push_str(f.name());
                        At::Field(f)
                    }
                    // A field the message does not have.
                    None => At::Message(m),
                }
            }
            (At::Field(f), Segment::Seq { index }) if f.is_list() => {
                named.push_str(&format!("[{index}]"));
                At::Element(f)
            }
            // A map's key is not named.
            (At::Field(f), Segment::Map { .. }) if f.is_map() => At::Element(f),
            (at, _) => at,
        };
    }
    (at, named)
}

/// `at`, stepping into the message a field or element holds.
fn enter(at: At) -> At {
    let kind = match &at {
        At::Field(f) if !f.is_list() && !f.is_map() => f.kind(),
        At::Element(f) => element_kind(f),
        _ => return at,
    };
    match kind {
        Kind::Message(m) => At::Message(m),
        _ => at,
    }
}

/// Whether `m` has a JSON form of its own (a string), not an object.
fn is_well_known(m: &MessageDescriptor) -> bool {
    matches!(
        m.full_name(),
        "google.protobuf.Timestamp" | "google.protobuf.Duration"
    )
}

/// The kind of one element of a list field, or one value of a map field.
fn element_kind(field: &FieldDescriptor) -> Kind {
    match field.kind() {
        Kind::Message(entry) if field.is_map() => entry.map_entry_value_field().kind(),
        kind => kind,
    }
}

/// What a JSON value of `kind` must be, in proto3's JSON mapping.
fn must_be(kind: &Kind) -> String {
    match kind {
        Kind::Bool => "must be true or false".to_owned(),
        Kind::String => "must be a string".to_owned(),
        Kind::Bytes => "must be base64".to_owned(),
        Kind::Double | Kind::Float => "must be a number".to_owned(),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => format!(
            "must be an integer from {} to {} (a number, or a string of digits)",
            i64::MIN,
            i64::MAX
        ),
        Kind::Uint64 | Kind::Fixed64 => format!(
            "must be an integer from 0 to {} (a number, or a string of digits)",
            u64::MAX
        ),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            format!("must be an integer from {} to {}", i32::MIN, i32::MAX)
        }
        Kind::Uint32 | Kind::Fixed32 => format!("must be an integer from 0 to {}", u32::MAX),
        Kind::Enum(e) => {
            let names: Vec<String> = e.values().map(|v| v.name().to_owned()).collect();
            format!("must be one of {}", names.join(", "))
        }
        Kind::Message(m) => match m.full_name() {
            "google.protobuf.Timestamp" => {
                "must be an RFC 3339 time, such as \"2026-11-30T17:00:00Z\"".to_owned()
            }
            "google.protobuf.Duration" => "must be a duration such as \"15s\"".to_owned(),
            _ => "must be an object".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::http_json::Routes;

    fn route_request() -> MessageDescriptor {
        let routes = Routes::from_descriptor(crate::grpc::FILE_DESCRIPTOR_SET).unwrap();
        routes
            .all()
            .find(|r| r.path == "/v1/contacts:route")
            .unwrap()
            .input()
            .clone()
    }

    fn fault(json: &str) -> (Option<String>, String) {
        match from_json(&route_request(), json.as_bytes()).unwrap_err() {
            Fault::Malformed { field, why } => (field, why),
            Fault::TooLarge => panic!("too large"),
        }
    }

    #[test]
    fn a_field_named_twice_is_refused_whichever_spelling() {
        for (json, field) in [
            (r#"{"contactId": "c-a", "contactId": "c-b"}"#, None),
            (r#"{"contact_id": "c-a", "contactId": "c-b"}"#, None),
            (
                r#"{"transferFrom": {"queueId": "a", "queue_id": "b"}}"#,
                Some("transfer_from"),
            ),
            (
                r#"{"attributes": {"coverage": "gold", "coverage": "jane"}}"#,
                Some("attributes"),
            ),
        ] {
            let (got, why) = fault(json);
            assert!(why.starts_with("names a field twice"), "{json}: {why}");
            assert!(!why.contains("jane") && !why.contains("c-b"), "{why}");
            // The object that names it twice, by its proto path.
            assert_eq!(got.as_deref(), field, "{json}");
        }
        // Distinct fields, the same key in two objects, and map keys that
        // only a field's two spellings would make one, are fine.
        from_json(
            &route_request(),
            br#"{"contactId": "c-a", "requestId": "r-1", "transferFrom": {"queueId": "billing"}, "attributes": {"queueId": "x", "plan_2": "a", "plan2": "b", "queue_id": "y"}}"#,
        )
        .unwrap();
    }

    #[test]
    fn a_fault_names_the_field_by_its_proto_path_and_never_a_value() {
        for (json, field, must) in [
            (
                r#"{"contactId": 4125550123}"#,
                Some("contact_id"),
                "must be a string",
            ),
            (
                r#"{"contact_id": true}"#,
                Some("contact_id"),
                "must be a string",
            ),
            (
                r#"{"channel": "Jane Doe"}"#,
                Some("channel"),
                "must be one of CHANNEL_",
            ),
            (
                r#"{"channel": "x'Jane Doe"}"#,
                Some("channel"),
                "must be one of",
            ),
            (
                r#"{"channel": "Jane expected DOB 1950"}"#,
                Some("channel"),
                "must be one of",
            ),
            (
                r#"{"escalationRequested": "x\"Jane Doe"}"#,
                Some("escalation_requested"),
                "true or false",
            ),
            (
                r#"{"attributes": {"Jane Doe": 5}}"#,
                Some("attributes"),
                "must be a string",
            ),
            (
                r#"{"attributes": "Jane Doe"}"#,
                Some("attributes"),
                "must be an object",
            ),
            (
                r#"{"Jane Doe": 1}"#,
                None,
                "only the fields of RouteContactRequest",
            ),
            (
                r#"{"transferFrom": {"Jane": 1}}"#,
                Some("transfer_from"),
                "only the fields of TransferFrom",
            ),
            (
                r#"{"transferFrom": 5}"#,
                Some("transfer_from"),
                "only the fields of TransferFrom",
            ),
            (r#"["Jane Doe"]"#, None, "must be an object"),
            (
                r#"{"contactId": "Jane Doe"} trailing"#,
                None,
                "not valid JSON",
            ),
            (r#"{"contactId": "Jane Doe"#, None, "not valid JSON"),
        ] {
            let (got_field, why) = fault(json);
            assert_eq!(got_field.as_deref(), field, "{json}: {why}");
            assert!(why.contains(must), "{json}: {why}");
            assert!(
                !why.contains("Jane") && !why.contains("4125550123"),
                "{json}: {why}"
            );
            assert!(why.contains("line 1 column"), "{json}: {why}");
        }
    }

    #[test]
    fn an_empty_body_is_the_empty_request_and_a_good_one_converts() {
        assert_eq!(
            from_json(&route_request(), b" \n")
                .unwrap()
                .fields()
                .count(),
            0
        );
        let framed = to_message(
            &route_request(),
            br#"{"contactId": "c-1", "channel": "CHANNEL_VOICE", "attributes": {"k": "v"}}"#,
        )
        .unwrap();
        assert_eq!(framed[0], 0);
        let length = u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]);
        assert_eq!(length as usize, framed.len() - 5);
        let request = crate::grpc::pb::RouteContactRequest::decode(&framed[5..]).unwrap();
        assert_eq!(request.contact_id, "c-1");
        assert_eq!(request.attributes["k"], "v");
    }
}
