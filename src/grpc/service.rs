//! The `careroute.v1.RoutingService` implementation. Each handler converts
//! the request into a command, applies it under the engine's lock (never
//! across an `.await`, so a cancelled request cannot leave a half-made
//! reservation) and queues it for the journal, waits until the journal
//! holds it, records metrics and converts back.

use std::{sync::Arc, time::Instant};

use std::pin::Pin;

use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use super::authorize::{self, Grant};
use super::event_ring::{EventRing, Replayed, Resumed};
use super::events::{self, Describe};
use super::status::{Reason, refusal};
use super::{convert, pb};
use crate::clock::Clock;
use crate::engine::{
    AgentSpec, Cancel, Command, Complete, Confirm, Engine, EngineError, Once, Release, RemoveAgent,
    Route, SetAgentState, Settle, Tick, Unwatch, UpsertAgent, Watch, WatchFilter, WatchId,
};
use crate::journal::{Entry, Journal, JournalError, Log, Snapshots, Ticket};
use crate::model::{Contact, Time};
use crate::shared::{Closed, Role, SharedEngine};
use crate::telemetry::{self, DecisionMetrics};

/// Shared state behind every handler.
#[derive(Clone)]
pub struct Routing {
    engine: Arc<SharedEngine>,
    clock: Arc<dyn Clock>,
    metrics: Arc<DecisionMetrics>,
    events: broadcast::Sender<Published>,
    /// Writes every command before its answer leaves, then publishes its
    /// events.
    journal: Arc<Journal<Published>>,
    /// The latest routing events, for WatchEvents.
    ring: Arc<EventRing>,
    /// When the engine next has something due; housekeeping wakes then.
    next_due: Arc<watch::Sender<Option<Time>>>,
    /// Turns true when the server drains: open assignment streams end, so
    /// a watching CTI never holds the shutdown up.
    stopping: watch::Receiver<bool>,
}

/// A command applied and queued for the journal: the engine's answer, the
/// sequence number to wait for before it may leave, and what was done
/// beside it under the lock.
pub struct Submitted<O, R> {
    out: Result<O, EngineError>,
    ticket: Ticket,
    also: R,
}

/// One command's events as watchers get them, once it is logged.
pub type Published = Arc<events::Published>;

/// Assignment events buffered per watcher before it counts as lagging.
const EVENT_BUFFER: usize = 4096;
/// Events queued for one watcher's connection.
const WATCHER_QUEUE: usize = 64;
/// How long a watcher may leave a full queue unread before it is ended.
const WATCHER_STALL: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a watcher of a process that stepped down waits for the new
/// leader's name before its stream ends without it.
const LEADER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl Routing {
    /// A service over `engine`, reading time from `clock`, logging every
    /// command to `log` (none: memory only) after `last_seq`, with
    /// `snapshots` of the log taken off the serving path; `failed` is told
    /// if a journal write fails.
    pub fn new(
        engine: Arc<SharedEngine>,
        clock: Arc<dyn Clock>,
        stopping: watch::Receiver<bool>,
        (log, last_seq): (Option<Log>, u64),
        snapshots: Option<Snapshots>,
        event_retention: usize,
        failed: impl FnOnce(&JournalError) + Send + 'static,
    ) -> Routing {
        let events = broadcast::channel(EVENT_BUFFER).0;
        let publisher = events.clone();
        let ring = Arc::new(EventRing::new(event_retention, last_seq));
        let keeper = Arc::clone(&ring);
        let journal = Journal::start(
            log,
            last_seq,
            snapshots,
            move |seq, batch: Vec<Published>| {
                // A record that told nothing is in the log all the same: a
                // watcher may resume after it.
                if batch.is_empty() {
                    keeper.keep(seq, None);
                }
                for p in batch {
                    keeper.push(&p);
                    // Assignment watchers are woken only for assignments.
                    if p.assignments.is_empty() {
                        continue;
                    }
                    // With no watcher connected nothing was offered; a
                    // callback with nobody watching is kept by the engine.
                    let _ = publisher.send(p);
                }
            },
            failed,
        );
        Routing {
            engine,
            clock,
            metrics: Arc::new(DecisionMetrics::new()),
            events,
            journal,
            ring,
            next_due: Arc::new(watch::channel(None).0),
            stopping,
        }
    }

    /// Reads the engine under its lock: views only, which change nothing
    /// (apply a [`Tick`] first for what is due). `UNAVAILABLE` once a panic
    /// has halted the engine.
    pub fn view<R>(&self, f: impl FnOnce(&Engine) -> R) -> Result<R, Status> {
        let engine = self.engine.lock()?;
        Ok(f(&engine))
    }

    /// [`Routing::view`] for an answer that leaves: it waits until the
    /// journal holds every command the view reflects.
    async fn settled_view<R>(&self, f: impl FnOnce(&Engine) -> R) -> Result<R, Status> {
        let (out, ticket) = {
            let engine = self.engine.lock_leading()?;
            (f(&engine), self.journal.last())
        };
        self.durable(ticket).await?;
        Ok(out)
    }

    /// The engine and its role, for the replication that drives them.
    pub fn engine(&self) -> &Arc<SharedEngine> {
        &self.engine
    }

    /// How many events are kept for watchers that resume.
    pub fn event_retention(&self) -> usize {
        self.ring.capacity()
    }

    /// The events kept for watchers that resume start over from those a
    /// replay kept (the engine rebuilt from the log).
    pub fn restore_events(&self, replayed: Replayed) {
        self.ring.restore(replayed);
    }

    /// Keeps the events of record `seq` (none: it told nothing) for
    /// watchers that resume, as a standby follows the leader.
    pub fn keep_events(&self, seq: u64, published: Option<&events::Published>) {
        self.ring.keep(seq, published);
    }

    /// The journal, for the replication that opens and ends its terms.
    pub fn journal(&self) -> &Journal<Published> {
        &self.journal
    }

    /// Applies one command under the engine's lock, at the time read under
    /// that lock, and queues it for the journal with the events it decided
    /// (and runs `also` under the same lock). Returns the engine's answer
    /// and the sequence number to wait for before the answer may leave. A
    /// tick with nothing due changes nothing that matters: it is not
    /// logged.
    fn submit_with<C, R>(
        &self,
        command: C,
        also: impl FnOnce() -> R,
    ) -> Result<Submitted<C::Output, R>, Status>
    where
        C: Describe + Clone + Into<Command>,
    {
        let mut engine = self.engine.lock_leading()?;
        let now = self.now_for(&engine);
        let nothing_due = engine.nothing_due(now);
        // Copied for the log only if a database keeps it.
        let mut kept: Option<Command> = self.journal.keeps().then(|| command.clone().into());
        // Told to event watchers with the engine's answer.
        let (out, change) = events::apply(&mut engine, command, now);
        let events = engine.take_events();
        let notices = engine.take_notices();
        let also = also();
        // A refusal that only let time pass is logged as the tick it was,
        // without what the refused request carried.
        let refused_as_tick = C::REFUSED_AS_TICK && out.is_err();
        if refused_as_tick {
            kept = kept.map(|_| Tick.into());
        }
        let only_time = C::ONLY_TIME || refused_as_tick;
        let idle = only_time && nothing_due && events.is_empty() && notices.is_empty();
        let entry = kept.map(|command| Entry {
            at: now,
            command,
            refused: Some(out.is_err() && !refused_as_tick),
            // Time passing is nobody's doing, whoever's call applied it.
            client: if only_time { None } else { authorize::caller() },
        });
        let ticket = self.journal.append(!idle, entry, |seq| {
            events.iter().for_each(telemetry::record_event);
            events::Published::new(seq, now, change, events, notices)
                .into_iter()
                .map(Arc::new)
                .collect()
        });
        self.publish_due(&engine);
        Ok(Submitted { out, ticket, also })
    }

    /// The time a command applied now is given: to the microsecond the
    /// log keeps, and never before the last command's.
    fn now_for(&self, engine: &Engine) -> Time {
        let now = self.clock.now();
        let now = crate::clock::as_logged(now);
        engine.now().map_or(now, |last| now.max(last))
    }

    /// Opens this process's term as leader of a replicated log, before its
    /// role lets any call in: the engine becomes `engine` (the log applied
    /// up to `last_seq`), and `opening`, the term's first records, is
    /// applied and logged under one hold of the lock (the first one only
    /// logged unless `first_applied`: a new log's policy, which the engine
    /// is built on). A refused record is logged as refused, as replay will
    /// refuse it. Returns once all of it is in the log.
    pub async fn open_term(
        &self,
        engine: Engine,
        last_seq: u64,
        opening: Vec<Command>,
        first_applied: bool,
    ) -> Result<(), JournalError> {
        let ticket = {
            let mut held = self
                .engine
                .lock()
                .map_err(|e| JournalError::Setup(e.to_string()))?;
            *held = engine;
            self.journal.lead(last_seq);
            let mut ticket = self.journal.last();
            // The event ring carries on from the records this process
            // applied as a standby (when it followed them all).
            self.ring.continue_after(last_seq);
            for (i, command) in opening.into_iter().enumerate() {
                let now = self.now_for(&held);
                // Applied first, so its refusal is logged with it; its
                // events take the number the journal gives it.
                let (told, refused) = if i > 0 || first_applied {
                    events::Published::replayed(&mut held, 0, now, command.clone())
                } else {
                    (None, Ok(()))
                };
                if let Err(e) = &refused {
                    tracing::warn!(error = %e, "replication: an opening record was refused");
                }
                let entry = Entry {
                    at: now,
                    command,
                    refused: Some(refused.is_err()),
                    client: None,
                };
                // Nobody watches yet (calls are let in once this is
                // logged): the events are kept for watchers that resume.
                ticket = self.journal.append(true, Some(entry), |seq| {
                    told.into_iter()
                        .map(|told| Arc::new(events::Published { seq, ..told }))
                        .collect()
                });
            }
            self.publish_due(&held);
            ticket
        };
        self.journal.durable(ticket).await
    }

    /// Tells housekeeping when the engine is next due.
    fn publish_due(&self, engine: &Engine) {
        let due = engine.next_due();
        self.next_due.send_if_modified(|d| {
            let changed = *d != due;
            *d = due;
            changed
        });
    }

    /// [`Routing::submit_with`] with nothing else to do under the lock.
    pub fn submit<C>(&self, command: C) -> Result<Submitted<C::Output, ()>, Status>
    where
        C: Describe + Clone + Into<Command>,
    {
        self.submit_with(command, || ())
    }

    /// Waits until the journal holds everything up to the ticket.
    async fn durable(&self, ticket: Ticket) -> Result<(), Status> {
        self.journal.durable(ticket).await.map_err(Status::from)
    }

    /// Applies one command through the engine's one door, at the time now,
    /// and answers once it is in the journal.
    pub async fn apply<C>(&self, command: C) -> Result<C::Output, Status>
    where
        C: Describe + Clone + Into<Command>,
    {
        let submitted = self.submit(command)?;
        self.durable(submitted.ticket).await?;
        submitted.out.map_err(Status::from)
    }

    /// Applies a settling command; with the client's request id, a retry
    /// is answered as the first was ([`Once`]).
    pub async fn settle<C>(
        &self,
        command: C,
        request_id: Option<String>,
    ) -> Result<C::Output, Status>
    where
        C: Settle + Describe + Clone + Into<Command>,
        C::Output: Clone,
    {
        match request_id {
            Some(request_id) => self
                .apply(Once::new(request_id, command))
                .await
                .map(|answered| answered.out),
            None => self.apply(command).await,
        }
    }

    /// When the engine is next due, updated after every call.
    pub fn next_due(&self) -> watch::Receiver<Option<Time>> {
        self.next_due.subscribe()
    }

    /// The time now, by the service's clock.
    pub fn now(&self) -> Time {
        self.clock.now()
    }

    /// Applies what is due now (expiries, wrap-up ends, closed queues).
    pub async fn tick(&self) -> Result<(), Status> {
        self.apply(Tick).await
    }

    /// The tonic server wrapper with message size limits.
    pub fn into_server(self) -> pb::routing_service_server::RoutingServiceServer<Routing> {
        pb::routing_service_server::RoutingServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    async fn set_state(
        &self,
        r: pb::SetAgentStateRequest,
    ) -> Result<pb::SetAgentStateResponse, Status> {
        let (agent_id, state) = convert::both(
            convert::agent_id("agent_id", r.agent_id),
            convert::agent_state(r.state),
        )?;
        let previous = self.apply(SetAgentState { agent_id, state }).await?;
        Ok(pb::SetAgentStateResponse {
            previous: pb::AgentState::from(previous).into(),
        })
    }
}

/// The ticks a watch checks its grant on: kept across its loop, so a busy
/// floor whose events pass a watch's filter by does not put them off.
fn recheck_every() -> tokio::time::Interval {
    let mut every = tokio::time::interval_at(
        tokio::time::Instant::now() + crate::secrets::RECHECK_EVERY,
        crate::secrets::RECHECK_EVERY,
    );
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every
}

/// Where a watch's task sends what its stream carries.
struct Outlet<T> {
    tx: mpsc::Sender<Result<T, Status>>,
    stopping: watch::Receiver<bool>,
    /// What let the call in, checked again before each event: a client
    /// whose credentials are withdrawn gets its refusal, and no more.
    grant: Option<Grant>,
    /// When a quiet watch checks its grant again.
    recheck: tokio::time::Interval,
}

impl<T> Outlet<T> {
    /// Queues one item for the watcher's connection. False when the
    /// watcher is gone, the server stops, the client's credentials were
    /// withdrawn (its refusal is queued instead), or the watcher has read
    /// nothing for [`WATCHER_STALL`]: one that stopped reading is ended, so
    /// its agents are no longer offered contacts it would never pass on.
    async fn deliver(&mut self, item: Result<T, Status>) -> bool {
        let (item, go_on) = match (item, &mut self.grant) {
            (Ok(item), Some(grant)) => match grant.recheck() {
                Ok(()) => (Ok(item), true),
                Err(refused) => (Err(refused), false),
            },
            (item, _) => (item, true),
        };
        tokio::select! {
            sent = self.tx.send(item) => sent.is_ok() && go_on,
            _ = self.stopping.wait_for(|s| *s) => false,
            _ = tokio::time::sleep(WATCHER_STALL) => {
                tracing::warn!("watcher stopped reading; ending its stream");
                false
            }
        }
    }
}

/// Resolves with the refusal once a watch's credentials are withdrawn,
/// looked at on each tick of `every` (an event sent is checked at once),
/// so a watch that sends nothing ends too; never without credentials.
async fn withdrawn(grant: &mut Option<Grant>, every: &mut tokio::time::Interval) -> Status {
    let Some(grant) = grant else {
        return std::future::pending().await;
    };
    loop {
        every.tick().await;
        if let Err(refused) = grant.recheck() {
            return refused;
        }
    }
}

/// Where a watcher stands once `event` is sent: a sequence sent whole is
/// `(sequence, u32::MAX)`.
fn sent(event: &pb::RoutingEvent) -> (u64, u32) {
    let index = if event.last_of_sequence {
        u32::MAX
    } else {
        event.index
    };
    (event.sequence, index)
}

/// The client that made a call, as the credentials file names it (none
/// without credentials).
fn caller<T>(request: &Request<T>) -> Option<Arc<str>> {
    request
        .extensions()
        .get::<super::authorize::Caller>()
        .map(|c| Arc::clone(&c.0))
}

/// Resolves once this process is a standby (an error: the role's sender
/// is gone, and it never will).
async fn stepped_down(role: &mut watch::Receiver<Role>) -> Result<(), watch::error::RecvError> {
    role.wait_for(|r| matches!(r, Role::Standby { .. }))
        .await
        .map(drop)
}

/// Where a watcher goes once this process stepped down: to the leader, once
/// this process has its name (looked up at once after the step-down),
/// waited for at most [`LEADER_WAIT`].
/// A stop of the service ends the wait.
async fn sent_away(
    role: &mut watch::Receiver<Role>,
    stopping: &mut watch::Receiver<bool>,
) -> Status {
    let named = async {
        let named = role.wait_for(|r| matches!(r, Role::Standby { leader: Some(_) }));
        match tokio::time::timeout(LEADER_WAIT, named).await {
            Ok(Ok(role)) => match &*role {
                Role::Standby { leader } => leader.clone(),
                _ => None,
            },
            _ => None,
        }
    };
    let leader = tokio::select! {
        leader = named => leader,
        _ = stopping.wait_for(|s| *s) => None,
    };
    Status::from(Closed::Standby { leader })
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
        // Logged, but nobody waits for an answer. A halted engine has nobody
        // left to tell.
        let _ = self.routing.submit(Unwatch(self.id));
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

/// Largest request decoded: far above any valid request (the longest is
/// an UpsertAgent of a few KiB), and high enough that an oversized field
/// still reaches its field check and is named (a 64 KiB `intent` is
/// `intent: longer than 64 bytes`). Larger requests get
/// `RESOURCE_EXHAUSTED` stating the limit.
pub const MAX_MESSAGE_BYTES: usize = 512 * 1024;

#[tonic::async_trait]
impl pb::routing_service_server::RoutingService for Routing {
    async fn route_contact(
        &self,
        request: Request<pb::RouteContactRequest>,
    ) -> Result<Response<pb::RouteContactResponse>, Status> {
        let result = async {
            let contact = Contact::try_from(request.into_inner())?;
            let started = Instant::now();
            let submitted = self.submit(Route(&contact))?;
            // The engine's time, before the wait for the journal.
            let elapsed = started.elapsed().as_secs_f64();
            self.durable(submitted.ticket).await?;
            let decision = submitted.out?;
            self.metrics.record(&decision, elapsed);
            super::trace::record(
                &decision.id,
                decision.rule_id.as_deref(),
                decision.outcome.kind(),
            );
            tracing::debug!(
                decision_id = %decision.id,
                rule = decision.rule_id.as_deref().unwrap_or("-"),
                outcome = decision.outcome.kind(),
                queue = decision.queue_id().unwrap_or("-"),
                level = decision.level,
                latency_us = elapsed * 1e6,
                "routed"
            );
            Ok::<_, Status>(pb::RouteContactResponse::from(decision))
        };
        result.await.map(Response::new)
    }

    async fn upsert_agent(
        &self,
        request: Request<pb::UpsertAgentRequest>,
    ) -> Result<Response<pb::UpsertAgentResponse>, Status> {
        let caller = caller(&request);
        let spec = AgentSpec::try_from(request.into_inner())?;
        let (agent_id, address) = (spec.id.clone(), spec.transfer_address.clone());
        let (queues, created) = self.apply(UpsertAgent(spec)).await?;
        // Who sent an agent's calls where: an audit record of every
        // profile change (the address is the PBX's, not a patient's).
        tracing::info!(
            agent_id = %agent_id,
            transfer_address = %address,
            created,
            by = caller.as_deref().unwrap_or("-"),
            "agent profile set"
        );
        Ok(Response::new(pb::UpsertAgentResponse {
            eligible_queue_ids: queues.iter().map(|q| q.to_string()).collect(),
            created,
        }))
    }

    async fn remove_agent(
        &self,
        request: Request<pb::RemoveAgentRequest>,
    ) -> Result<Response<pb::RemoveAgentResponse>, Status> {
        let caller = caller(&request);
        let agent_id = convert::agent_id("agent_id", request.into_inner().agent_id)?;
        self.apply(RemoveAgent(agent_id.clone())).await?;
        tracing::info!(
            agent_id = %agent_id,
            by = caller.as_deref().unwrap_or("-"),
            "agent removed"
        );
        Ok(Response::new(pb::RemoveAgentResponse {}))
    }

    async fn set_agent_state(
        &self,
        request: Request<pb::SetAgentStateRequest>,
    ) -> Result<Response<pb::SetAgentStateResponse>, Status> {
        self.set_state(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn stream_agent_states(
        &self,
        request: Request<Streaming<pb::StreamAgentStatesRequest>>,
    ) -> Result<Response<pb::StreamAgentStatesResponse>, Status> {
        let mut grant = request.extensions().get::<Grant>().cloned();
        let mut stream = request.into_inner();
        let mut applied = 0u64;
        while let Some(entry) = stream.message().await.map_err(stream_broken)? {
            let entry = pb::SetAgentStateRequest {
                agent_id: entry.agent_id,
                state: entry.state,
            };
            // Each entry is let in as its own call would be: credentials
            // withdrawn mid-stream stop it before the next entry applies.
            let checked = grant.as_mut().map_or(Ok(()), Grant::recheck);
            if let Err(status) = match checked {
                Ok(()) => self.set_state(entry).await,
                Err(refused) => Err(refused),
            } {
                // The entry's number first; the reason, violations and
                // metadata (a standby's careroute-leader) kept.
                let status = Status::with_details_and_metadata(
                    status.code(),
                    format!("entry {applied}: {}", status.message()),
                    status.details().to_vec().into(),
                    status.metadata().clone(),
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
        let r = request.into_inner();
        let (id, request_id) = convert::both(
            convert::reservation_id(&r.reservation_id),
            convert::request_id(r.request_id),
        )?;
        let (agent_id, contact_id) = self.settle(Confirm(id), request_id).await?;
        Ok(Response::new(pb::ConfirmReservationResponse {
            agent_id: agent_id.to_string(),
            contact_id,
        }))
    }

    async fn release_reservation(
        &self,
        request: Request<pb::ReleaseReservationRequest>,
    ) -> Result<Response<pb::ReleaseReservationResponse>, Status> {
        let r = request.get_ref();
        let (id, reason, request_id) = convert::three(
            convert::reservation_id(&r.reservation_id),
            convert::release_reason(r.reason),
            convert::request_id(r.request_id.clone()),
        )?;
        self.settle(Release(id, reason), request_id).await?;
        tracing::debug!(reservation_id = %id, reason = reason.as_str(), "released");
        Ok(Response::new(pb::ReleaseReservationResponse {}))
    }

    async fn complete_contact(
        &self,
        request: Request<pb::CompleteContactRequest>,
    ) -> Result<Response<pb::CompleteContactResponse>, Status> {
        let r = request.into_inner();
        let (agent_id, contact_id, request_id) = convert::three(
            convert::agent_id("agent_id", r.agent_id),
            convert::contact_id("contact_id", r.contact_id),
            convert::request_id(r.request_id),
        )?;
        let complete = Complete {
            agent_id,
            contact_id,
        };
        let until = self.settle(complete, request_id).await?;
        Ok(Response::new(pb::CompleteContactResponse {
            wrap_up_until: Some(convert::timestamp(until)),
        }))
    }

    async fn list_queues(
        &self,
        _request: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        self.apply(Tick).await?;
        let views = self.settled_view(|e| e.queues()).await?;
        Ok(Response::new(pb::ListQueuesResponse {
            queues: views.into_iter().map(pb::QueueView::from).collect(),
        }))
    }

    async fn get_agent(
        &self,
        request: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::GetAgentResponse>, Status> {
        let agent_id = convert::agent_id("agent_id", request.into_inner().agent_id)?;
        self.apply(Tick).await?;
        let view = self.settled_view(|e| e.agent_view(&agent_id)).await??;
        Ok(Response::new(pb::GetAgentResponse {
            agent: Some(pb::AgentView::from(view)),
        }))
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let query = convert::AgentQuery::try_from(request.into_inner())?;
        self.apply(Tick).await?;
        let page = self
            .settled_view(|e| e.agent_page(&query.filter, query.from, query.limit))
            .await??;
        Ok(Response::new(pb::ListAgentsResponse::from(page)))
    }

    async fn cancel_contact(
        &self,
        request: Request<pb::CancelContactRequest>,
    ) -> Result<Response<pb::CancelContactResponse>, Status> {
        let r = request.into_inner();
        let (contact_id, request_id) = convert::both(
            convert::contact_id("contact_id", r.contact_id),
            convert::request_id(r.request_id),
        )?;
        self.settle(Cancel(contact_id), request_id).await?;
        Ok(Response::new(pb::CancelContactResponse {}))
    }

    type WatchAssignmentsStream =
        Pin<Box<dyn Stream<Item = Result<pb::AssignmentEvent, Status>> + Send + 'static>>;

    async fn watch_assignments(
        &self,
        request: Request<pb::WatchAssignmentsRequest>,
    ) -> Result<Response<Self::WatchAssignmentsStream>, Status> {
        let grant = request.extensions().get::<Grant>().cloned();
        let filter = WatchFilter::try_from(request.into_inner())?;
        // Subscribed under the engine lock, and only to events of this
        // command and later ones: what it missed before is in `missed`, and
        // the offers it makes possible, and every event after them, reach it
        // exactly once.
        let submitted = self.submit_with(Watch(filter.clone()), || self.events.subscribe())?;
        let (since, mut events) = (submitted.ticket, submitted.also);
        let (id, missed) = submitted.out.map_err(Status::from)?;
        // Registered now: unregistered however this call ends, even if it
        // is dropped while waiting for the journal.
        let watching = Watching {
            routing: self.clone(),
            id,
        };
        let since_seq = since.seq;
        self.durable(since).await?;
        let mut role = self.engine.role();
        let (tx, rx) = mpsc::channel(WATCHER_QUEUE);
        let mut out = Outlet {
            tx,
            stopping: self.stopping.clone(),
            grant,
            recheck: recheck_every(),
        };
        tokio::spawn(async move {
            // Unwatched when this task ends: the client went away, the
            // server stops, or the watcher fell behind.
            let _watching = watching;
            for e in &missed {
                let mut wire = pb::AssignmentEvent::from(e);
                wire.resent = true;
                if !out.deliver(Ok(wire)).await {
                    return;
                }
            }
            loop {
                let published = tokio::select! {
                    // (Its guard dropped at once: the branch that refuses
                    // sends from its handler.)
                    _ = async { drop(out.stopping.wait_for(|s| *s).await) } => return,
                    _ = out.tx.closed() => return,
                    refused = withdrawn(&mut out.grant, &mut out.recheck) => {
                        out.deliver(Err(refused)).await;
                        return;
                    }
                    // This process stepped down: its offers are the new
                    // leader's to make, to a watcher connected there.
                    Ok(()) = stepped_down(&mut role) => None,
                    published = events.recv() => Some(published),
                };
                let Some(published) = published else {
                    let moved = sent_away(&mut role, &mut out.stopping).await;
                    out.deliver(Err(moved)).await;
                    return;
                };
                match published {
                    Ok(p) if p.seq >= since_seq => {
                        for (event, wire) in &p.assignments {
                            if event.passes(&filter) && !out.deliver(Ok(wire.clone())).await {
                                return;
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(behind)) => {
                        // Routing never waits for a watcher. One that fell
                        // behind is told to reconnect, and gets the live
                        // offers again on connect.
                        tracing::warn!(behind, "assignment watcher fell behind; ending its stream");
                        let aborted = refusal(
                            tonic::Code::Aborted,
                            format!(
                                "this watcher fell {behind} events behind; reconnect: offers still live are sent again on connect"
                            ),
                            Reason::WatcherBehind,
                            Vec::new(),
                        );
                        out.deliver(Err(aborted)).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type WatchEventsStream =
        Pin<Box<dyn Stream<Item = Result<pb::RoutingEvent, Status>> + Send + 'static>>;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let grant = request.extensions().get::<Grant>().cloned();
        let after = request.into_inner().after_sequence;
        // Only the leader (or a lone process) has the events.
        self.engine.leading()?;
        let Resumed {
            retained,
            live,
            head,
        } = self.ring.resume(after)?;
        // The last event sent, as (sequence, index); a whole sequence is
        // index u32::MAX.
        let seen = (after.unwrap_or(head), u32::MAX);
        let ring = Arc::clone(&self.ring);
        let mut role = self.engine.role();
        let (tx, rx) = mpsc::channel(WATCHER_QUEUE);
        let mut out = Outlet {
            tx,
            stopping: self.stopping.clone(),
            grant,
            recheck: recheck_every(),
        };
        tokio::spawn(async move {
            let (mut seen, mut retained, mut live) = (seen, retained, live);
            loop {
                for event in retained.drain(..) {
                    if (event.sequence, event.index) <= seen {
                        continue;
                    }
                    seen = sent(&event);
                    if !out.deliver(Ok(event.as_ref().clone())).await {
                        return;
                    }
                }
                let next = tokio::select! {
                    biased;
                    // (Its guard dropped at once: the branch that refuses
                    // sends from its handler.)
                    _ = async { drop(out.stopping.wait_for(|s| *s).await) } => return,
                    _ = out.tx.closed() => return,
                    refused = withdrawn(&mut out.grant, &mut out.recheck) => {
                        out.deliver(Err(refused)).await;
                        return;
                    }
                    Ok(()) = stepped_down(&mut role) => None,
                    next = live.recv() => Some(next),
                };
                let item = match next {
                    Some(Ok(event)) if (event.sequence, event.index) <= seen => continue,
                    Some(Ok(event)) => {
                        seen = sent(&event);
                        Ok(event.as_ref().clone())
                    }
                    // Behind the live feed: catch up from the ring, after the
                    // sequence last sent whole, or from the start of one
                    // sent in part (what was sent of it is skipped).
                    Some(Err(broadcast::error::RecvError::Lagged(_))) => {
                        let resume_after = if seen.1 == u32::MAX {
                            seen.0
                        } else {
                            seen.0.saturating_sub(1)
                        };
                        match ring.resume(Some(resume_after)) {
                            Ok(again) => {
                                (retained, live) = (again.retained, again.live);
                                continue;
                            }
                            Err(_) => {
                                tracing::warn!(
                                    "event watcher fell behind the ring; ending its stream"
                                );
                                Err(refusal(
                                    tonic::Code::Aborted,
                                    format!(
                                        "this watcher fell behind what is retained: read the records after {} from the journal (careroute journal --outcomes --from {}), then resume with after_sequence = the last of them",
                                        resume_after,
                                        resume_after + 1
                                    ),
                                    Reason::WatcherBehind,
                                    Vec::new(),
                                ))
                            }
                        }
                    }
                    Some(Err(broadcast::error::RecvError::Closed)) => return,
                    None => Err(sent_away(&mut role, &mut out.stopping).await),
                };
                let end = item.is_err();
                if !out.deliver(item).await || end {
                    return;
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
        self.apply(Tick).await?;
        let status = self.settled_view(|e| e.contact_status(&contact_id)).await?;
        let status = status.ok_or_else(|| {
            refusal(
                tonic::Code::NotFound,
                "contact_id: not known here (or forgotten after --path-window)",
                Reason::UnknownContact,
                Vec::new(),
            )
        })?;
        Ok(Response::new(pb::GetContactStatusResponse::from(status)))
    }

    async fn get_contact_path(
        &self,
        request: Request<pb::GetContactPathRequest>,
    ) -> Result<Response<pb::GetContactPathResponse>, Status> {
        let contact_id = convert::contact_id("contact_id", request.into_inner().contact_id)?;
        let hops = self
            .settled_view(|e| {
                e.path(&contact_id)
                    .map(|hops| hops.iter().map(pb::ContactHop::from).collect::<Vec<_>>())
            })
            .await?
            .ok_or_else(|| {
                refusal(
                    tonic::Code::NotFound,
                    "contact_id: no recorded path (never routed here, or forgotten)",
                    Reason::UnknownContact,
                    Vec::new(),
                )
            })?;
        Ok(Response::new(pb::GetContactPathResponse { hops }))
    }
}
