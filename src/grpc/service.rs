//! The `careroute.v1.RoutingService` implementation. Each handler converts
//! the request, calls the engine under its lock (never across an `.await`,
//! so a cancelled request cannot leave a half-made reservation), records
//! metrics and converts back.

use std::{sync::Arc, time::Instant};

use std::pin::Pin;

use tokio::sync::{broadcast, watch};
use tokio_stream::{
    Stream, StreamExt,
    wrappers::{BroadcastStream, WatchStream, errors::BroadcastStreamRecvError},
};
use tonic::{Request, Response, Status, Streaming};

use super::{convert, pb};
use crate::clock::Clock;
use crate::engine::{AgentSpec, Engine, EngineError};
use crate::model::Contact;
use crate::shared::SharedEngine;
use crate::telemetry::DecisionMetrics;

/// Shared state behind every handler.
#[derive(Clone)]
pub struct Routing {
    engine: Arc<SharedEngine>,
    clock: Arc<dyn Clock>,
    metrics: Arc<DecisionMetrics>,
    events: broadcast::Sender<pb::AssignmentEvent>,
    /// Turns true when the server drains: open assignment streams end, so
    /// a watching CTI never holds the shutdown up.
    stopping: watch::Receiver<bool>,
}

/// Assignment events buffered per watcher before it counts as lagging.
const EVENT_BUFFER: usize = 4096;

impl Routing {
    /// A service over `engine`, reading time from `clock`.
    pub fn new(
        engine: Arc<SharedEngine>,
        clock: Arc<dyn Clock>,
        stopping: watch::Receiver<bool>,
    ) -> Routing {
        Routing {
            engine,
            clock,
            metrics: Arc::new(DecisionMetrics::new()),
            events: broadcast::channel(EVENT_BUFFER).0,
            stopping,
        }
    }

    /// Runs `f` on the engine under its lock, then publishes the events it
    /// decided (assignments, callbacks) to watchers, outside the lock.
    /// `UNAVAILABLE` once a panic has halted the engine.
    pub fn with_engine<R>(&self, f: impl FnOnce(&mut Engine) -> R) -> Result<R, Status> {
        let (result, events) = {
            let mut engine = self.engine.lock()?;
            let result = f(&mut engine);
            (result, engine.take_events())
        };
        for e in events {
            // No watcher is fine: the reservation lapses and the contact
            // goes back in line.
            let _ = self.events.send(pb::AssignmentEvent::from(e));
        }
        Ok(result)
    }

    /// [`Routing::with_engine`] for an engine operation that may be refused.
    fn call<R>(&self, f: impl FnOnce(&mut Engine) -> Result<R, EngineError>) -> Result<R, Status> {
        self.with_engine(f)?.map_err(Status::from)
    }

    /// Applies what is due now (expiries, wrap-up ends, closed queues).
    pub fn tick(&self) -> Result<(), Status> {
        let now = self.clock.now();
        self.with_engine(|e| e.advance(now))
    }

    /// The tonic server wrapper with message size limits.
    pub fn into_server(self) -> pb::routing_service_server::RoutingServiceServer<Routing> {
        pb::routing_service_server::RoutingServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn set_state(&self, r: pb::SetAgentStateRequest) -> Result<pb::SetAgentStateResponse, Status> {
        let agent_id = convert::agent_id("agent_id", r.agent_id)?;
        let state = convert::agent_state(r.state)?;
        let now = self.clock.now();
        let previous = self.call(|e| e.set_state(&agent_id, state, now))?;
        Ok(pb::SetAgentStateResponse {
            previous: pb::AgentState::from(previous).into(),
        })
    }
}

/// What a failed read of a client's request stream says: a transport
/// failure (the client crashed, the connection was cut) is the client going
/// away, `CANCELLED`, not a server fault. (A message that does not decode is
/// turned into `INVALID_ARGUMENT` by the client-faults layer.)
fn stream_broken(status: Status) -> Status {
    if matches!(status.code(), tonic::Code::Unknown | tonic::Code::Cancelled) {
        Status::cancelled(format!(
            "the client's stream ended before it finished: {}",
            status.message()
        ))
    } else {
        status
    }
}

/// Largest request accepted: far above any valid request.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

#[tonic::async_trait]
impl pb::routing_service_server::RoutingService for Routing {
    async fn route_contact(
        &self,
        request: Request<pb::RouteContactRequest>,
    ) -> Result<Response<pb::RouteContactResponse>, Status> {
        let result = (|| {
            let contact = Contact::try_from(request.into_inner())?;
            let now = self.clock.now();
            let started = Instant::now();
            let decision = self.call(|e| e.route(&contact, now))?;
            let elapsed = started.elapsed().as_secs_f64();
            self.metrics.record(&decision, elapsed);
            tracing::debug!(
                decision_id = %decision.id,
                rule = decision.rule_id.as_deref().unwrap_or("-"),
                outcome = decision.outcome.kind(),
                queue = decision.queue_id().unwrap_or("-"),
                level = decision.level,
                latency_us = elapsed * 1e6,
                "routed"
            );
            Ok(pb::RouteContactResponse::from(decision))
        })();
        result.map(Response::new)
    }

    async fn upsert_agent(
        &self,
        request: Request<pb::UpsertAgentRequest>,
    ) -> Result<Response<pb::UpsertAgentResponse>, Status> {
        let spec = AgentSpec::try_from(request.into_inner())?;
        let now = self.clock.now();
        let (queues, created) = self.call(|e| e.upsert_agent(spec, now))?;
        Ok(Response::new(pb::UpsertAgentResponse {
            eligible_queue_ids: queues.iter().map(|q| q.to_string()).collect(),
            created,
        }))
    }

    async fn remove_agent(
        &self,
        request: Request<pb::RemoveAgentRequest>,
    ) -> Result<Response<pb::RemoveAgentResponse>, Status> {
        let agent_id = convert::agent_id("agent_id", request.into_inner().agent_id)?;
        let now = self.clock.now();
        self.call(|e| e.remove_agent(&agent_id, now))?;
        tracing::info!(agent_id = %agent_id, "agent removed");
        Ok(Response::new(pb::RemoveAgentResponse {}))
    }

    async fn set_agent_state(
        &self,
        request: Request<pb::SetAgentStateRequest>,
    ) -> Result<Response<pb::SetAgentStateResponse>, Status> {
        self.set_state(request.into_inner()).map(Response::new)
    }

    async fn stream_agent_states(
        &self,
        request: Request<Streaming<pb::SetAgentStateRequest>>,
    ) -> Result<Response<pb::StreamAgentStatesResponse>, Status> {
        let mut stream = request.into_inner();
        let mut applied = 0u64;
        while let Some(entry) = stream.message().await.map_err(stream_broken)? {
            if let Err(status) = self.set_state(entry) {
                let status = Status::new(
                    status.code(),
                    format!("entry {applied}: {}", status.message()),
                );
                return Err(status);
            }
            applied += 1;
        }
        Ok(Response::new(pb::StreamAgentStatesResponse { applied }))
    }

    async fn confirm_reservation(
        &self,
        request: Request<pb::ConfirmReservationRequest>,
    ) -> Result<Response<pb::ConfirmReservationResponse>, Status> {
        let result = (|| {
            let id = convert::reservation_id(&request.get_ref().reservation_id)?;
            let now = self.clock.now();
            let (agent_id, contact_id) = self.call(|e| e.confirm(id, now))?;
            Ok(pb::ConfirmReservationResponse {
                agent_id: agent_id.to_string(),
                contact_id,
            })
        })();
        result.map(Response::new)
    }

    async fn release_reservation(
        &self,
        request: Request<pb::ReleaseReservationRequest>,
    ) -> Result<Response<pb::ReleaseReservationResponse>, Status> {
        let result = (|| {
            let r = request.get_ref();
            let id = convert::reservation_id(&r.reservation_id)?;
            let reason = convert::release_reason(r.reason)?;
            let now = self.clock.now();
            self.call(|e| e.release(id, now))?;
            tracing::debug!(reservation_id = %id, reason, "released");
            Ok(pb::ReleaseReservationResponse {})
        })();
        result.map(Response::new)
    }

    async fn complete_contact(
        &self,
        request: Request<pb::CompleteContactRequest>,
    ) -> Result<Response<pb::CompleteContactResponse>, Status> {
        let result = (|| {
            let r = request.into_inner();
            let agent_id = convert::agent_id("agent_id", r.agent_id)?;
            let contact_id = convert::contact_id("contact_id", r.contact_id)?;
            let now = self.clock.now();
            let until = self.call(|e| e.complete(&agent_id, &contact_id, now))?;
            Ok(pb::CompleteContactResponse {
                wrap_up_until: Some(convert::timestamp(until)),
            })
        })();
        result.map(Response::new)
    }

    async fn list_queues(
        &self,
        _request: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        let now = self.clock.now();
        let views = self.with_engine(|e| e.queues(now))?;
        Ok(Response::new(pb::ListQueuesResponse {
            queues: views.into_iter().map(pb::QueueView::from).collect(),
        }))
    }

    async fn cancel_contact(
        &self,
        request: Request<pb::CancelContactRequest>,
    ) -> Result<Response<pb::CancelContactResponse>, Status> {
        let contact_id = convert::contact_id("contact_id", request.into_inner().contact_id)?;
        let now = self.clock.now();
        self.call(|e| e.cancel(&contact_id, now))?;
        Ok(Response::new(pb::CancelContactResponse {}))
    }

    type WatchAssignmentsStream =
        Pin<Box<dyn Stream<Item = Result<pb::AssignmentEvent, Status>> + Send + 'static>>;

    async fn watch_assignments(
        &self,
        _request: Request<pb::WatchAssignmentsRequest>,
    ) -> Result<Response<Self::WatchAssignmentsStream>, Status> {
        enum Item {
            Event(pb::AssignmentEvent),
            Stop,
        }
        let events = BroadcastStream::new(self.events.subscribe()).filter_map(|e| match e {
            Ok(event) => Some(Item::Event(event)),
            // A watcher too slow to keep up misses events; their
            // reservations lapse after the TTL and the contacts go back in
            // line, so routing never waits for a watcher.
            Err(BroadcastStreamRecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "assignment watcher lagging; missed events will re-offer after their TTL"
                );
                None
            }
        });
        let stop = WatchStream::new(self.stopping.clone())
            .filter(|stopping| *stopping)
            .map(|_| Item::Stop);
        let events = events
            .merge(stop)
            .take_while(|item| matches!(item, Item::Event(_)))
            .filter_map(|item| match item {
                Item::Event(e) => Some(Ok(e)),
                Item::Stop => None,
            });
        Ok(Response::new(Box::pin(events)))
    }

    async fn get_contact_path(
        &self,
        request: Request<pb::GetContactPathRequest>,
    ) -> Result<Response<pb::GetContactPathResponse>, Status> {
        let result = (|| {
            let contact_id = convert::contact_id("contact_id", request.into_inner().contact_id)?;
            let engine = self.engine.lock()?;
            let hops = engine.path(&contact_id).ok_or_else(|| {
                Status::not_found(format!("contact `{contact_id}` has no recorded path"))
            })?;
            Ok(pb::GetContactPathResponse {
                hops: hops.iter().map(pb::ContactHop::from).collect(),
            })
        })();
        result.map(Response::new)
    }
}
