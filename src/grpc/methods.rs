//! Every RPC the server answers, read once from the descriptor sets the
//! build embeds (careroute, health, reflection v1 and v1alpha), never from a
//! hand-kept copy: a new RPC is counted, timed and given its deadline rule
//! the day it is added to a proto.

use std::sync::OnceLock;

use prost::Message;
use prost_types::FileDescriptorSet;

/// One RPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Method {
    /// Fully qualified service, e.g. `careroute.v1.RoutingService`.
    pub service: String,
    /// Method name, e.g. `RouteContact`.
    pub name: String,
    /// Whether the client sends a stream (its call lasts as long as the
    /// client keeps sending, so no request deadline applies).
    pub client_streaming: bool,
    /// Whether the server answers with a stream (a watch).
    pub server_streaming: bool,
}

/// The descriptor sets of every service the server registers.
fn descriptor_sets() -> [&'static [u8]; 4] {
    [
        super::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]
}

/// Every RPC of every registered service, in descriptor order.
pub fn all() -> &'static [Method] {
    static METHODS: OnceLock<Vec<Method>> = OnceLock::new();
    METHODS.get_or_init(|| {
        let mut methods = Vec::new();
        for bytes in descriptor_sets() {
            // Compiled into the binary by the build: a set that does not
            // decode is a build defect, caught by this module's tests.
            let Ok(set) = FileDescriptorSet::decode(bytes) else {
                continue;
            };
            for file in &set.file {
                let package = file.package();
                for service in &file.service {
                    for m in &service.method {
                        methods.push(Method {
                            service: format!("{package}.{}", service.name()),
                            name: m.name().to_owned(),
                            client_streaming: m.client_streaming(),
                            server_streaming: m.server_streaming(),
                        });
                    }
                }
            }
        }
        methods
    })
}

/// The index in [`all`] of the RPC a request path (`/service/method`)
/// names, if it is one.
pub fn index(path: &str) -> Option<usize> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    all()
        .iter()
        .position(|m| m.service == service && m.name == method)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `rpc` in the careroute protos is in the table, and the table
    /// holds nothing else of careroute's.
    #[test]
    fn the_table_is_the_proto() {
        let mut from_proto = Vec::new();
        for entry in std::fs::read_dir("proto/careroute/v1").unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            for line in text.lines() {
                if let Some(rest) = line.trim().strip_prefix("rpc ") {
                    let name = rest.split('(').next().unwrap().trim();
                    from_proto.push(name.to_owned());
                }
            }
        }
        from_proto.sort();
        let mut table: Vec<String> = all()
            .iter()
            .filter(|m| m.service == "careroute.v1.RoutingService")
            .map(|m| m.name.clone())
            .collect();
        table.sort();
        assert!(!table.is_empty());
        assert_eq!(table, from_proto);
        for (service, method) in [
            ("grpc.health.v1.Health", "Check"),
            ("grpc.health.v1.Health", "Watch"),
            (
                "grpc.reflection.v1.ServerReflection",
                "ServerReflectionInfo",
            ),
            (
                "grpc.reflection.v1alpha.ServerReflection",
                "ServerReflectionInfo",
            ),
        ] {
            assert!(
                index(&format!("/{service}/{method}")).is_some(),
                "{service}/{method}"
            );
        }
    }

    #[test]
    fn client_streams_are_known() {
        let streaming = |path: &str| all()[index(path).unwrap()].client_streaming;
        assert!(streaming("/careroute.v1.RoutingService/StreamAgentStates"));
        assert!(!streaming("/careroute.v1.RoutingService/RouteContact"));
        assert!(!streaming("/careroute.v1.RoutingService/WatchAssignments"));
        assert_eq!(index("/nope/Nope"), None);
        assert_eq!(index("garbage"), None);
    }
}
