//! The gRPC edge: generated types ([`pb`]), validation and conversion of
//! every request field ([`convert`]), the one mapping of engine errors to
//! status codes ([`status`]), the service ([`service`]) and its event
//! streams ([`events`], [`event_ring`]), the RPC table read
//! from the descriptors ([`methods`]) and the tower layers around every call:
//! HTTP/JSON transcoding ([`http_json`], [`json_body`]), metrics and trace spans ([`layer`],
//! [`trace`]), client-fault codes ([`client_faults`]),
//! authorization ([`authorize`]), admission
//! ([`admission`]), panics ([`panic`]) and the request deadline
//! ([`deadline`]). Nothing outside this module names `pb::`.

pub mod admission;
pub mod authorize;
pub mod client_faults;
pub mod convert;
pub mod deadline;
pub mod event_ring;
pub mod events;
pub mod http_json;
pub mod json_body;
pub mod layer;
pub mod methods;
pub mod panic;
pub mod service;
pub mod status;
pub mod trace;

pub use service::Routing;

/// Generated protobuf and tonic code for `careroute.v1`.
pub mod pb {
    #![allow(clippy::all, clippy::unwrap_used, clippy::expect_used, missing_docs)]
    tonic::include_proto!("careroute.v1");
}

/// The encoded descriptor set served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("careroute_descriptor");
