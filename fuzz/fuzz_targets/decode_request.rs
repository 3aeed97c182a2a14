//! Fuzz target: arbitrary bytes decoded as each gRPC request type and put
//! through the edge's validation and conversion into domain types, exactly
//! as the service handlers do; whatever converts is then applied to an
//! engine with the embedded policy and the demo roster. Nothing may panic.
//!
//! Input: one selector byte, then the protobuf message. The low nibble picks
//! the request type, the high nibble the instant (see `instants()`).

#![no_main]

use careroute::engine::AgentSpec;
use careroute::engine::{Cancel, Complete, Confirm, Release, Route, SetAgentState, UpsertAgent};
use careroute::grpc::{convert, pb};
use careroute::model::{Contact, Identity};
use careroute_fuzz::{
    check_decision, check_invariants, demo_engine, drain_events, embedded, instants, list_queues,
    status, to_wire,
};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let now = instants()[usize::from(selector >> 4) % instants().len()];
    let engine = || {
        // A live reservation (`r-0000000000000000`, c-live) and a confirmed
        // one (`r-0000000000000001`, c-active), so confirm, release and
        // complete can succeed or meet a settled reservation.
        let mut e = demo_engine(embedded(), now);
        let mut c = Contact::new("c-live", "billing");
        c.identity = Identity::Verified;
        let _ = e.apply(Route(&c), now);
        c.contact_id = "c-active".into();
        if let Ok(d) = e.apply(Route(&c), now)
            && let careroute::engine::Outcome::Agent(a) = &d.outcome
        {
            let _ = e.apply(Confirm(a.reservation), now);
        }
        e
    };
    match selector & 0x0f {
        0 => {
            let Ok(r) = pb::RouteContactRequest::decode(bytes) else {
                return;
            };
            let Ok(contact) = Contact::try_from(r) else {
                return;
            };
            let mut e = engine();
            if let Ok(decision) = e.apply(Route(&contact), now) {
                check_decision(&e, &decision, now);
                to_wire(decision);
                // The same request again: a retry with a request id replays.
                let again = e.apply(Route(&contact), now);
                assert!(again.is_ok(), "a contact routed once is refused: {again:?}");
                let hops = e.path(&contact.contact_id).unwrap();
                for hop in hops {
                    let _ = pb::ContactHop::from(hop).encode_to_vec();
                }
            }
            drain_events(&mut e);
            check_invariants(&e);
        }
        1 => {
            let Ok(r) = pb::UpsertAgentRequest::decode(bytes) else {
                return;
            };
            let Ok(spec) = AgentSpec::try_from(r) else {
                return;
            };
            assert!(spec.validate().is_ok(), "converted an invalid agent");
            let id = spec.id.clone();
            let mut e = engine();
            e.apply(UpsertAgent(spec), now).unwrap();
            e.apply(
                SetAgentState {
                    agent_id: id.to_owned(),
                    state: careroute::model::AgentState::Available,
                },
                now,
            )
            .unwrap();
            drain_events(&mut e);
            list_queues(&mut e, now);
            check_invariants(&e);
        }
        2 => {
            let Ok(r) = pb::SetAgentStateRequest::decode(bytes) else {
                return;
            };
            let (Ok(agent_id), Ok(state)) = (
                convert::agent_id("agent_id", r.agent_id),
                convert::agent_state(r.state),
            ) else {
                return;
            };
            let mut e = engine();
            if let Ok(previous) = e.apply(
                SetAgentState {
                    agent_id: agent_id.to_owned(),
                    state,
                },
                now,
            ) {
                let _ = pb::AgentState::from(previous);
            }
            drain_events(&mut e);
            check_invariants(&e);
        }
        3 => {
            let Ok(r) = pb::ConfirmReservationRequest::decode(bytes) else {
                return;
            };
            let Ok(id) = convert::reservation_id(&r.reservation_id) else {
                return;
            };
            let mut e = engine();
            let _ = e.apply(Confirm(id), now).map_err(status);
            check_invariants(&e);
        }
        4 => {
            let Ok(r) = pb::ReleaseReservationRequest::decode(bytes) else {
                return;
            };
            let (Ok(id), Ok(reason)) = (
                convert::reservation_id(&r.reservation_id),
                convert::release_reason(r.reason),
            ) else {
                return;
            };
            let mut e = engine();
            let _ = e.apply(Release(id, reason), now).map_err(status);
            drain_events(&mut e);
            check_invariants(&e);
        }
        5 => {
            let Ok(r) = pb::CompleteContactRequest::decode(bytes) else {
                return;
            };
            let (Ok(agent), Ok(contact)) = (
                convert::agent_id("agent_id", r.agent_id),
                convert::contact_id("contact_id", r.contact_id),
            ) else {
                return;
            };
            let mut e = engine();
            if let Ok(until) = e.apply(
                Complete {
                    agent_id: agent.to_owned(),
                    contact_id: contact.to_owned(),
                },
                now,
            ) {
                let _ = convert::timestamp(until);
            }
            drain_events(&mut e);
            check_invariants(&e);
        }
        6 => {
            let Ok(r) = pb::GetContactPathRequest::decode(bytes) else {
                return;
            };
            let Ok(contact) = convert::contact_id("contact_id", r.contact_id) else {
                return;
            };
            let e = engine();
            for hop in e.path(&contact).unwrap_or_default() {
                let _ = pb::ContactHop::from(hop).encode_to_vec();
            }
        }
        7 => {
            let Ok(r) = pb::CancelContactRequest::decode(bytes) else {
                return;
            };
            let Ok(contact) = convert::contact_id("contact_id", r.contact_id) else {
                return;
            };
            let mut e = engine();
            let _ = e.apply(Cancel(contact.to_owned()), now).map_err(status);
            drain_events(&mut e);
            check_invariants(&e);
        }
        8 => {
            if pb::ListQueuesRequest::decode(bytes).is_ok() {
                list_queues(&mut engine(), now);
            }
        }
        9 => {
            // A page of agents, and the agent view of each on it.
            let Ok(r) = pb::ListAgentsRequest::decode(bytes) else {
                return;
            };
            let Ok(q) = convert::AgentQuery::try_from(r) else {
                return;
            };
            let e = engine();
            if let Ok(page) = e.agent_page(&q.filter, q.from, q.limit).map_err(status) {
                assert!(page.agents.len() <= q.limit, "a page longer than asked");
                for a in &page.agents {
                    assert_eq!(e.agent_view(&a.id).ok().as_ref(), Some(a));
                }
                let _ = pb::ListAgentsResponse::from(page).encode_to_vec();
            }
        }
        _ => {
            let _ = pb::WatchAssignmentsRequest::decode(bytes);
        }
    }
});
