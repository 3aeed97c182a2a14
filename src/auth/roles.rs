//! The roles and the one table of which role may call each RPC of the
//! routing service. Every RPC must have a role: a test over the service's
//! descriptor fails for a new RPC nobody was given.

/// The service the roles guard; health and reflection stay open.
pub const ROUTING_SERVICE: &str = "careroute.v1.RoutingService";

/// A set of RPCs given to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// IVRs and chatbots: route a contact, cancel it, ask where it stands.
    Route,
    /// The CTI: agent profiles and states, reservations, completions, and
    /// the assignment and event streams.
    Cti,
    /// Supervisors and dashboards: queue views, contact paths, /metrics.
    Observe,
    /// Operations: removing agents.
    Admin,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::Route, Role::Cti, Role::Observe, Role::Admin];

    /// Its name in the credentials file and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Route => "route",
            Role::Cti => "cti",
            Role::Observe => "observe",
            Role::Admin => "admin",
        }
    }

    /// The role named `s`.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// The role that may call `method` of the routing service (none: an RPC
/// nobody may call, which the table test forbids).
pub fn role_of(method: &str) -> Option<Role> {
    Some(match method {
        "RouteContact" | "CancelContact" | "GetContactStatus" => Role::Route,
        "UpsertAgent" | "SetAgentState" | "StreamAgentStates" | "ConfirmReservation"
        | "ReleaseReservation" | "CompleteContact" | "WatchAssignments" | "WatchEvents" => {
            Role::Cti
        }
        "ListQueues" | "GetContactPath" | "GetAgent" | "ListAgents" => Role::Observe,
        "RemoveAgent" => Role::Admin,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::methods;

    /// Every RPC of the routing service, read from its descriptor, has a
    /// role: a new RPC without one fails here.
    #[test]
    fn every_rpc_has_a_role() {
        let rpcs: Vec<_> = methods::all()
            .iter()
            .filter(|m| m.service == ROUTING_SERVICE)
            .collect();
        assert!(rpcs.len() >= 14);
        for m in rpcs {
            assert!(role_of(&m.name).is_some(), "{} has no role", m.name);
        }
        assert_eq!(role_of("NoSuchRpc"), None);
    }

    #[test]
    fn names_round_trip() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
    }
}
