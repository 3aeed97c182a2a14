//! The `careroute.v1.RoutingService` implementation. Each handler converts
//! the request, calls the engine under its lock (never across an `.await`,
//! so a cancelled request cannot leave a half-made reservation), records
//! metrics and converts back.

use std::{sync::Arc, time::Instant};

use std::pin::Pin;

use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use super::{convert, pb};
use crate::clock::Clock;
use crate::engine::{
    AgentSpec, Apply, Cancel, Complete, Confirm, Engine, Event, Release, RemoveAgent, Route,
    SetAgentState, Tick, Unwatch, UpsertAgent, Watch, WatchFilter, WatchId,
};
use crate::model::{Contact, Time};
use crate::shared::SharedEngine;
use crate::telemetry::{self, DecisionMetrics};

/// Shared state behind every handler.
#[derive(Clone)]
pub struct Routing {
    engine: Arc<SharedEngine>,
    clock: Arc<dyn Clock>,
    metrics: Arc<DecisionMetrics>,
    events: broadcast::Sender<Published>,
    /// When the engine next has something due; housekeeping wakes then.
    next_due: Arc<watch::Sender<Option<Time>>>,
    /// Turns true when the server drains: open assignment streams end, so
    /// a watching CTI never holds the shutdown up.
    stopping: watch::Receiver<bool>,
}

/// An event as watchers get it: the domain event their filters read, and
/// its wire form, converted once for all of them.
type Published = Arc<(Event, pb::AssignmentEvent)>;

/// Assignment events buffered per watcher before it counts as lagging.
const EVENT_BUFFER: usize = 4096;
/// Events queued for one watcher's connection.
const WATCHER_QUEUE: usize = 64;
/// How long a watcher may leave a full queue unread before it is ended.
const WATCHER_STALL: std::time::Duration = std::time::Duration::from_secs(10);

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
            next_due: Arc::new(watch::channel(None).0),
            stopping,
        }
    }

    /// Runs `f` on the engine under its lock, then publishes the events it
    /// decided (assignments, callbacks) to watchers and when the engine is
    /// next due, still under the lock: watchers see events in the order the
    /// engine decided them, and one that subscribes under the lock misses
    /// none and sees none twice. `UNAVAILABLE` once a panic has halted the
    /// engine.
    pub fn with_engine<R>(&self, f: impl FnOnce(&mut Engine, Time) -> R) -> Result<R, Status> {
        let mut engine = self.engine.lock()?;
        // Read once, under the lock that applies it: commands are applied
        // in the order of their times.
        let now = self.clock.now();
        let result = f(&mut engine, now);
        for e in engine.take_events() {
            telemetry::record_event(&e);
            let wire = pb::AssignmentEvent::from(&e);
            // With no watcher connected nothing was offered; a callback
            // with nobody watching is also recorded in the contact's path.
            let _ = self.events.send(Arc::new((e, wire)));
        }
        let due = engine.next_due();
        self.next_due.send_if_modified(|d| {
            let changed = *d != due;
            *d = due;
            changed
        });
        Ok(result)
    }

    /// When the engine is next due, updated after every call.
    pub fn next_due(&self) -> watch::Receiver<Option<Time>> {
        self.next_due.subscribe()
    }

    /// The time now, by the service's clock.
    pub fn now(&self) -> Time {
        self.clock.now()
    }

    /// Applies one command through the engine's one door, at the time now.
    pub fn apply<C: Apply>(&self, command: C) -> Result<C::Output, Status> {
        self.with_engine(|e, now| e.apply(command, now))?
            .map_err(Status::from)
    }

    /// Applies what is due now (expiries, wrap-up ends, closed queues).
    pub fn tick(&self) -> Result<(), Status> {
        self.apply(Tick)
    }

    /// The tonic server wrapper with message size limits.
    pub fn into_server(self) -> pb::routing_service_server::RoutingServiceServer<Routing> {
        pb::routing_service_server::RoutingServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn set_state(&self, r: pb::SetAgentStateRequest) -> Result<pb::SetAgentStateResponse, Status> {
        let agent_id = convert::agent_id("agent_id", r.agent_id)?;
        let state = convert::agent_state(r.state)?;
        let previous = self.apply(SetAgentState { agent_id, state })?;
        Ok(pb::SetAgentStateResponse {
            previous: pb::AgentState::from(previous).into(),
        })
    }
}

/// Queues one item for a watcher's connection. False when the watcher is
/// gone, the server stops, or the watcher has read nothing for
/// [`WATCHER_STALL`]: one that stopped reading is ended, so its agents are
/// no longer offered contacts it would never pass on.
async fn deliver(
    tx: &mpsc::Sender<Result<pb::AssignmentEvent, Status>>,
    item: Result<pb::AssignmentEvent, Status>,
    stopping: &mut watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        sent = tx.send(item) => sent.is_ok(),
        _ = stopping.wait_for(|s| *s) => false,
        _ = tokio::time::sleep(WATCHER_STALL) => {
            tracing::warn!("assignment watcher stopped reading; ending its stream");
            false
        }
    }
}

/// A connected watcher; dropping it unregisters the watcher, so offers to
/// the agents it covered are no longer made, and those out are not counted
/// as the agents' misses if they lapse.
struct Watching {
    routing: Routing,
    id: WatchId,
}

impl Drop for Watching {
    fn drop(&mut self) {
        // A halted engine has nobody left to tell.
        let _ = self.routing.apply(Unwatch(self.id));
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
            let started = Instant::now();
            let decision = self.apply(Route(&contact))?;
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
        let (queues, created) = self.apply(UpsertAgent(spec))?;
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
        self.apply(RemoveAgent(agent_id.clone()))?;
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
            let (agent_id, contact_id) = self.apply(Confirm(id))?;
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
            self.apply(Release(id, reason))?;
            tracing::debug!(reservation_id = %id, reason = reason.as_str(), "released");
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
            let until = self.apply(Complete {
                agent_id,
                contact_id,
            })?;
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
        let views = self.with_engine(|e, now| e.apply(Tick, now).map(|()| e.queues()))??;
        Ok(Response::new(pb::ListQueuesResponse {
            queues: views.into_iter().map(pb::QueueView::from).collect(),
        }))
    }

    async fn cancel_contact(
        &self,
        request: Request<pb::CancelContactRequest>,
    ) -> Result<Response<pb::CancelContactResponse>, Status> {
        let contact_id = convert::contact_id("contact_id", request.into_inner().contact_id)?;
        self.apply(Cancel(contact_id))?;
        Ok(Response::new(pb::CancelContactResponse {}))
    }

    type WatchAssignmentsStream =
        Pin<Box<dyn Stream<Item = Result<pb::AssignmentEvent, Status>> + Send + 'static>>;

    async fn watch_assignments(
        &self,
        request: Request<pb::WatchAssignmentsRequest>,
    ) -> Result<Response<Self::WatchAssignmentsStream>, Status> {
        let filter = WatchFilter::try_from(request.into_inner())?;
        // Subscribed under the engine lock: the offers the new watcher makes
        // possible, and every event after them, reach it exactly once.
        let (mut events, watched) = self.with_engine(|e, now| {
            let events = self.events.subscribe();
            (events, e.apply(Watch(filter.clone()), now))
        })?;
        let (id, missed) = watched.map_err(Status::from)?;
        let watching = Watching {
            routing: self.clone(),
            id,
        };
        let mut stopping = self.stopping.clone();
        let (tx, rx) = mpsc::channel(WATCHER_QUEUE);
        tokio::spawn(async move {
            // Unwatched when this task ends: the client went away, the
            // server stops, or the watcher fell behind.
            let _watching = watching;
            for e in &missed {
                let mut wire = pb::AssignmentEvent::from(e);
                wire.resent = true;
                if !deliver(&tx, Ok(wire), &mut stopping).await {
                    return;
                }
            }
            loop {
                let published = tokio::select! {
                    _ = stopping.wait_for(|s| *s) => return,
                    _ = tx.closed() => return,
                    published = events.recv() => published,
                };
                match published {
                    Ok(p) if p.0.passes(&filter) => {
                        if !deliver(&tx, Ok(p.1.clone()), &mut stopping).await {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(behind)) => {
                        // Routing never waits for a watcher. One that fell
                        // behind is told to reconnect, and gets the live
                        // offers again on connect.
                        tracing::warn!(behind, "assignment watcher fell behind; ending its stream");
                        let aborted = Status::aborted(format!(
                            "this watcher fell {behind} events behind; reconnect: offers still live are sent again on connect"
                        ));
                        deliver(&tx, Err(aborted), &mut stopping).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_contact_status(
        &self,
        request: Request<pb::GetContactStatusRequest>,
    ) -> Result<Response<pb::GetContactStatusResponse>, Status> {
        let contact_id = convert::contact_id("contact_id", request.into_inner().contact_id)?;
        let status =
            self.with_engine(|e, now| e.apply(Tick, now).map(|()| e.contact_status(&contact_id)))??;
        let status = status.ok_or_else(|| {
            Status::not_found(format!(
                "contact `{contact_id}` is not known (or was forgotten)"
            ))
        })?;
        Ok(Response::new(pb::GetContactStatusResponse::from(status)))
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
