//! The log on a NATS JetStream stream (`--journal nats://...`): one message
//! per command, its stream sequence its log sequence, its time in a header
//! and its body the same JSON the local journal keeps. The leader appends
//! with the stream's expected-last-sequence check, so a deposed leader's
//! append fails and it never answers from state the log does not hold;
//! standbys read the stream back and tail it. Beside the stream, two KV
//! buckets: the leader's lease (an entry that expires unless renewed, taken
//! with create-if-absent and renewed with compare-and-set on its revision)
//! and the log's metadata (the id key its engine uses, the routing rules
//! version it was written under). Snapshots of the engine's state go to
//! an object store bucket, taken by a standby from its own copy (so the
//! leader never waits for one); after each, the stream is purged up to the
//! snapshot before it, which is kept as the fallback.

use std::{
    collections::{HashMap, VecDeque},
    future::{Future, IntoFuture},
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    task::{Context as TaskContext, Poll, Waker},
    time::Duration,
};

use async_nats::jetstream::{
    self, Context,
    consumer::{DeliverPolicy, pull::OrderedConfig},
    context::{PublishError, PublishErrorKind},
    kv,
    message::PublishMessage,
    object_store::{self, ObjectMetadata, ObjectStore},
    publish::PublishAck,
    stream,
};
use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio_stream::StreamExt;

use super::{Entry, JournalError};
use crate::engine::{Engine, IdKey, ROUTING_VERSION, STATE_FORMAT};
use crate::model::Time;

/// The header holding a command's time, in microseconds since the epoch.
const AT: &str = "Careroute-At";
/// The header naming the client that sent a command, if one did.
const CLIENT: &str = "Careroute-Client";
/// The header that says whether a record was refused when first applied.
const REFUSED: &str = "Careroute-Refused";
/// The lease bucket's one key.
const LEADER: &str = "leader";
/// How long a call to NATS may take before the log counts as unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long listing or reading the snapshots may go without a message
/// before it counts as stalled. Both run on an ordered consumer, which a
/// request's timeout does not bound: a stalled one would otherwise hold a
/// standby's saves (one at a time) forever.
const STALL: Duration = Duration::from_secs(10);
/// How often the stream and buckets are asked for at start while
/// JetStream is not ready (a cluster still electing its leader), a second
/// apart.
const SETUP_TRIES: u32 = 30;

/// Why a NATS call failed, as the journal reports it.
fn nats(what: &str, e: impl std::fmt::Display) -> JournalError {
    JournalError::Nats(format!("{what}: {e}"))
}

/// The replicated log of one cluster id, and its buckets.
#[derive(Clone)]
pub struct Nats {
    js: Context,
    stream: String,
    subject: String,
    lease: kv::Store,
    meta: kv::Store,
    snapshots: ObjectStore,
}

/// What a cluster id's log is kept in on JetStream.
struct Names {
    stream: String,
    subject: String,
    lease: String,
    meta: String,
    snapshots: String,
}

impl Names {
    fn of(cluster_id: &str) -> Names {
        let bucket = |suffix: &str| format!("careroute_{cluster_id}_{suffix}");
        Names {
            stream: format!("CAREROUTE_{cluster_id}"),
            subject: format!("careroute.{cluster_id}.log"),
            lease: bucket("lease"),
            meta: bucket("meta"),
            snapshots: bucket("snapshots"),
        }
    }
}

/// The snapshot the log is rebuilt from, and the newer ones refused.
pub struct NatsSnapshot {
    /// The newest that loaded: its sequence number and engine.
    pub loaded: Option<(u64, Engine)>,
    /// Newer ones that did not load, each with why.
    pub refused: Vec<(u64, String)>,
}

/// Where the log's records come from, in order.
pub struct Tail {
    messages: jetstream::consumer::pull::Ordered,
}

/// A standby's claim: the lease's revision while this process holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease(u64);

/// How this process checks the NATS servers and proves itself to them.
#[derive(Debug, Clone, Default)]
pub struct NatsSecurity {
    /// A file holding an NKEY user seed: it signs the server's challenge.
    pub nkey_seed: Option<PathBuf>,
    /// The CA of the servers' certificates: with it, TLS is required.
    pub ca: Option<PathBuf>,
    /// This process's certificate and key, for servers that verify clients.
    pub client: Option<(PathBuf, PathBuf)>,
}

impl NatsSecurity {
    /// The connection options they make; a file that cannot serve is
    /// refused here, naming it (a seed is never shown).
    fn options(&self) -> Result<async_nats::ConnectOptions, JournalError> {
        let refused =
            |path: &PathBuf, why: String| JournalError::Setup(format!("{}: {why}", path.display()));
        let mut options = match &self.nkey_seed {
            Some(path) => {
                // Checked now, so a start with a bad seed fails at once;
                // read again at every connection, so a rotated seed is
                // used from the next reconnect on, without a restart.
                user_seed(path).map_err(|why| refused(path, why))?;
                let path = path.clone();
                async_nats::ConnectOptions::with_auth_callback(move |nonce| {
                    let signed = user_seed(&path).and_then(|key| {
                        let signature = key.sign(&nonce).map_err(|e| e.to_string())?;
                        let mut auth = async_nats::Auth::new();
                        auth.nkey = Some(key.public_key());
                        auth.signature = Some(signature);
                        Ok(auth)
                    });
                    let path = path.display().to_string();
                    async move {
                        signed.map_err(|why| async_nats::AuthError::new(format!("{path}: {why}")))
                    }
                })
            }
            None => async_nats::ConnectOptions::new(),
        };
        if let Some(ca) = &self.ca {
            std::fs::metadata(ca).map_err(|e| refused(ca, format!("cannot read: {e}")))?;
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some((cert, key)) = &self.client {
            for path in [cert, key] {
                std::fs::metadata(path).map_err(|e| refused(path, format!("cannot read: {e}")))?;
            }
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        Ok(options)
    }
}

impl Nats {
    /// Connects to `urls` (comma-separated) and opens, creating if absent,
    /// the stream and buckets of `cluster_id` with `replicas` replicas; the
    /// lease expires `lease_ttl` after it was last renewed. Returns the log
    /// and the id key of its engine (`proposed`, for a new log).
    pub async fn connect(
        urls: &str,
        security: &NatsSecurity,
        cluster_id: &str,
        replicas: usize,
        lease_ttl: Duration,
        proposed: IdKey,
    ) -> Result<(Nats, IdKey), JournalError> {
        let js = jetstream_at(urls, security, cluster_id).await?;
        let mut tries = 0;
        loop {
            let opened = async {
                let nats = Nats::open(js.clone(), cluster_id, replicas, lease_ttl).await?;
                let key = nats.id_key(proposed).await?;
                Ok((nats, key))
            };
            match opened.await {
                Ok(opened) => return Ok(opened),
                Err(e @ JournalError::OtherRouting { .. }) => return Err(e),
                Err(e) if tries < SETUP_TRIES => {
                    tries += 1;
                    tracing::warn!(error = %e, "journal on NATS: JetStream not ready; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Opens the log of `cluster_id` to read it (`careroute journal`),
    /// creating nothing: a cluster id with no log is refused.
    pub async fn open_to_read(
        urls: &str,
        security: &NatsSecurity,
        cluster_id: &str,
    ) -> Result<Nats, JournalError> {
        let js = jetstream_at(urls, security, cluster_id).await?;
        let names = Names::of(cluster_id);
        js.get_stream(&names.stream).await.map_err(|e| {
            let absent = matches!(
                e.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            );
            if absent {
                JournalError::Setup(format!(
                    "no log for --cluster-id {cluster_id} on {urls} (no stream {})",
                    names.stream
                ))
            } else {
                nats(&format!("stream {}", names.stream), e)
            }
        })?;
        let lease = js
            .get_key_value(&names.lease)
            .await
            .map_err(|e| nats(&format!("bucket {}", names.lease), e))?;
        let meta = js
            .get_key_value(&names.meta)
            .await
            .map_err(|e| nats(&format!("bucket {}", names.meta), e))?;
        let snapshots = js
            .get_object_store(&names.snapshots)
            .await
            .map_err(|e| nats(&format!("bucket {}", names.snapshots), e))?;
        Ok(Nats {
            js,
            stream: names.stream,
            subject: names.subject,
            lease,
            meta,
            snapshots,
        })
    }

    /// The routing rules version the log was written under (1: before the
    /// version was kept).
    pub async fn routing_version(&self) -> Result<u32, JournalError> {
        Ok(self.meta_value("routing_version").await?.unwrap_or(1))
    }

    /// The id key of the log's engine, if one is kept.
    pub async fn kept_id_key(&self) -> Result<Option<IdKey>, JournalError> {
        let value = self
            .meta
            .get("id_key")
            .await
            .map_err(|e| nats("metadata", e))?;
        match value {
            None => Ok(None),
            Some(v) => std::str::from_utf8(&v)
                .ok()
                .and_then(super::store::parse_key)
                .map(Some)
                .ok_or_else(|| nats("metadata", "id_key is not 32 hexadecimal digits")),
        }
    }

    /// Opens, creating if absent, the stream and buckets of `cluster_id`.
    async fn open(
        js: Context,
        cluster_id: &str,
        replicas: usize,
        lease_ttl: Duration,
    ) -> Result<Nats, JournalError> {
        let names = Names::of(cluster_id);
        let (name, subject) = (names.stream, names.subject);
        js.get_or_create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            num_replicas: replicas,
            storage: stream::StorageType::File,
            // Nothing is ever dropped by age or size: the log is the state.
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .map_err(|e| nats(&format!("stream {name}"), e))?;
        let lease = open_bucket(&js, names.lease, lease_ttl, replicas).await?;
        let meta = open_bucket(&js, names.meta, Duration::ZERO, replicas).await?;
        let snapshots = match js.get_object_store(&names.snapshots).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: names.snapshots,
                    storage: stream::StorageType::File,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| nats("snapshot bucket", e))?,
        };
        Ok(Nats {
            js,
            stream: name,
            subject,
            lease,
            meta,
            snapshots,
        })
    }

    /// The id key of the log's engine: the one kept with the log, or
    /// `proposed` kept now for a new log. A log written under other routing
    /// rules is refused, as the local journal refuses one.
    async fn id_key(&self, proposed: IdKey) -> Result<IdKey, JournalError> {
        let version = ROUTING_VERSION.to_string();
        match self.meta.create("routing_version", version.into()).await {
            Ok(_) => {}
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let found = self.meta_value("routing_version").await?;
                if found != Some(ROUTING_VERSION) {
                    return Err(JournalError::OtherRouting {
                        file: self.stream.clone().into(),
                        found: found.unwrap_or(1),
                    });
                }
            }
            Err(e) => return Err(nats("metadata", e)),
        }
        match self
            .meta
            .create("id_key", hex::encode(proposed.0).into())
            .await
        {
            Ok(_) => Ok(proposed),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => self
                .kept_id_key()
                .await?
                .ok_or_else(|| nats("metadata", "id_key is missing")),
            Err(e) => Err(nats("metadata", e)),
        }
    }

    async fn meta_value(&self, key: &str) -> Result<Option<u32>, JournalError> {
        let value = self.meta.get(key).await.map_err(|e| nats("metadata", e))?;
        Ok(value.and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok()))
    }

    /// The stream's last sequence number (0: empty).
    pub async fn last_seq(&self) -> Result<u64, JournalError> {
        Ok(self.span().await?.1)
    }

    /// The first record the stream keeps (the one after its last if it
    /// keeps none) and its last sequence number.
    pub async fn span(&self) -> Result<(u64, u64), JournalError> {
        let mut stream = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| nats("stream", e))?;
        let info = stream.info().await.map_err(|e| nats("stream", e))?;
        let state = &info.state;
        let first = if state.messages == 0 {
            state.last_sequence + 1
        } else {
            state.first_sequence
        };
        Ok((first, state.last_sequence))
    }

    /// The record the newest snapshot kept was taken after (none kept).
    pub async fn newest_snapshot(&self) -> Result<Option<u64>, JournalError> {
        Ok(self.snapshot_names().await?.first().map(|(seq, _)| *seq))
    }

    /// The snapshots kept, newest first: each one's sequence number and
    /// object name.
    async fn snapshot_names(&self) -> Result<Vec<(u64, String)>, JournalError> {
        let mut list = self
            .snapshots
            .list()
            .await
            .map_err(|e| nats("snapshots", e))?;
        let mut names = Vec::new();
        while let Some(info) = tokio::time::timeout(STALL, list.next())
            .await
            .map_err(|_| nats("snapshots", format!("listing stalled for {STALL:?}")))?
        {
            let info = info.map_err(|e| nats("snapshots", e))?;
            if let Some(seq) = info
                .name
                .strip_prefix("state-")
                .and_then(|s| s.parse::<u64>().ok())
            {
                names.push((seq, info.name));
            }
        }
        names.sort_unstable_by_key(|(seq, _)| std::cmp::Reverse(*seq));
        Ok(names)
    }

    /// Saves `state`, the engine after record `seq`; keeps it and the one
    /// before it (the fallback), drops older ones, and purges the stream's
    /// records up to the fallback if it loads. Returns the first record the
    /// stream still keeps, if it was purged.
    pub async fn save_snapshot(&self, seq: u64, state: &[u8]) -> Result<Option<u64>, JournalError> {
        let metadata = HashMap::from([
            ("format".to_owned(), STATE_FORMAT.to_string()),
            ("crc".to_owned(), crc32fast::hash(state).to_string()),
        ]);
        self.snapshots
            .put(
                ObjectMetadata {
                    name: format!("state-{seq:020}"),
                    metadata,
                    ..Default::default()
                },
                &mut &state[..],
            )
            .await
            .map_err(|e| nats("snapshot", e))?;
        let names = self.snapshot_names().await.map_err(|e| {
            JournalError::Nats(format!(
                "snapshot {seq} is stored, but older ones are kept and the stream is not purged: {e}"
            ))
        })?;
        // Older snapshots are dropped, and the stream purged, only behind a
        // fallback that loads: otherwise an older one may be the last that
        // does.
        let fallback = match names.get(1) {
            Some((seq, name)) => match self.read_snapshot(name).await {
                Ok(_) => Some(*seq),
                Err(why) => {
                    tracing::warn!(
                        snapshot = seq,
                        why = why.as_str(),
                        "replication: the fallback snapshot does not load; the stream is not purged"
                    );
                    None
                }
            },
            None => None,
        };
        if let Some(fallback) = fallback {
            for (_, name) in names.iter().skip(2) {
                self.snapshots
                    .delete(name)
                    .await
                    .map_err(|e| nats("snapshot", e))?;
            }
            let stream = self
                .js
                .get_stream(&self.stream)
                .await
                .map_err(|e| nats("stream", e))?;
            stream
                .purge()
                .sequence(fallback + 1)
                .await
                .map_err(|e| nats("purge", e))?;
        }
        Ok(fallback.map(|f| f + 1))
    }

    /// The newest snapshot that reads back whole (checksum, layout,
    /// decoding), and the newer ones refused, with why.
    pub async fn load_snapshot(&self) -> Result<NatsSnapshot, JournalError> {
        self.load_snapshot_before(u64::MAX).await
    }

    /// [`Nats::load_snapshot`] among the snapshots of records before
    /// `before`.
    pub async fn load_snapshot_before(&self, before: u64) -> Result<NatsSnapshot, JournalError> {
        let mut refused = Vec::new();
        let names = self.snapshot_names().await?;
        for (seq, name) in names.into_iter().filter(|(seq, _)| *seq < before) {
            match self.read_snapshot(&name).await {
                Ok(engine) => {
                    return Ok(NatsSnapshot {
                        loaded: Some((seq, engine)),
                        refused,
                    });
                }
                Err(why) => refused.push((seq, why)),
            }
        }
        Ok(NatsSnapshot {
            loaded: None,
            refused,
        })
    }

    async fn read_snapshot(&self, name: &str) -> Result<Engine, String> {
        let mut object = self.snapshots.get(name).await.map_err(|e| e.to_string())?;
        let info = object.info().clone();
        let mut body = Vec::with_capacity(info.size);
        // Read a chunk at a time, so a stall is told from a long read.
        loop {
            match tokio::time::timeout(STALL, object.read_buf(&mut body)).await {
                Ok(Ok(0)) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err(format!("reading stalled for {STALL:?}")),
            }
        }
        let crc = info.metadata.get("crc").and_then(|c| c.parse::<u32>().ok());
        if crc != Some(crc32fast::hash(&body)) {
            return Err("checksum mismatch".into());
        }
        let format = info
            .metadata
            .get("format")
            .and_then(|f| f.parse::<u32>().ok());
        if format != Some(STATE_FORMAT) {
            return Err(format!(
                "layout {}, this build reads layout {STATE_FORMAT}",
                format.map_or("unknown".into(), |f| f.to_string())
            ));
        }
        Engine::decode_state(&body).map_err(|e| e.to_string())
    }

    /// The records after `after`, in order, then each new one as it is
    /// appended.
    pub async fn tail(&self, after: u64) -> Result<Tail, JournalError> {
        let stream = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| nats("stream", e))?;
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: self.subject.clone(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: after + 1,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| nats("consumer", e))?;
        let messages = consumer.messages().await.map_err(|e| nats("consumer", e))?;
        Ok(Tail { messages })
    }

    /// Takes the lease for `me` if nobody holds it.
    pub async fn try_lead(&self, me: &str) -> Result<Option<Lease>, JournalError> {
        match self.lease.create(LEADER, Bytes::from(me.to_owned())).await {
            Ok(revision) => Ok(Some(Lease(revision))),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(nats("lease", e)),
        }
    }

    /// Renews the lease; fails if another process took it.
    pub async fn renew(&self, me: &str, lease: Lease) -> Result<Lease, JournalError> {
        self.lease
            .update(LEADER, Bytes::from(me.to_owned()), lease.0)
            .await
            .map(Lease)
            .map_err(|e| nats("lease", e))
    }

    /// Gives the lease up at once (a clean stop), if still held.
    pub async fn resign(&self, lease: Lease) {
        let _ = self
            .lease
            .delete_expect_revision(LEADER, Some(lease.0))
            .await;
    }

    /// Who holds the lease, as they advertise themselves.
    pub async fn leader(&self) -> Option<String> {
        let value = self.lease.get(LEADER).await.ok()??;
        String::from_utf8(value.to_vec()).ok()
    }

    /// Appends `batch` in the term named `term` (unique to this process and
    /// term): [`Nats::send`], then [`Acks::confirm`].
    pub async fn append(
        &self,
        batch: &[(u64, Entry)],
        term: &str,
        chain: &mut Option<String>,
    ) -> Result<(), JournalError> {
        self.send(batch, term, chain).await?.confirm().await
    }

    /// Publishes `batch` in the term named `term` (unique to this process
    /// and term), returning the acknowledgements to come. `chain` is the id
    /// of the term's last record sent (none at its start): the term's first
    /// record is accepted only if the stream's last sequence is the one
    /// before it, and every later record only if the stream's last message
    /// is this term's record before it. So once another leader's record is
    /// in between, nothing more of this term is accepted, even a record
    /// whose sequence would fit; and a batch sent before the one before it
    /// is acknowledged is accepted only after all of that one.
    pub async fn send(
        &self,
        batch: &[(u64, Entry)],
        term: &str,
        chain: &mut Option<String>,
    ) -> Result<Acks, JournalError> {
        let mut acks = VecDeque::with_capacity(batch.len());
        for (seq, entry) in batch {
            let body = serde_json::to_vec(&entry.command)
                .map_err(|e| JournalError::Encode(e.to_string()))?;
            let id = format!("{term}.{seq}");
            let message = PublishMessage::build()
                .payload(body.into())
                .header(AT, entry.at.timestamp_micros().to_string().as_str())
                .message_id(&id);
            let message = match &entry.client {
                Some(client) => message.header(CLIENT, &**client),
                None => message,
            };
            let message = match entry.refused {
                Some(refused) => message.header(REFUSED, if refused { "true" } else { "false" }),
                None => message,
            };
            let message = match chain.replace(id) {
                Some(previous) => message.expected_last_message_id(previous),
                None => message.expected_last_sequence(seq - 1),
            };
            let ack = self
                .js
                .send_publish(self.subject.clone(), message)
                .await
                .map_err(|e| append_error(*seq, e.kind(), e))?;
            acks.push_back((*seq, ack.into_future()));
        }
        Ok(Acks {
            pending: acks,
            failed: None,
        })
    }
}

/// A record's acknowledgement to come.
type Ack = Pin<Box<dyn Future<Output = Result<PublishAck, PublishError>> + Send>>;

/// A batch's acknowledgements to come, one per record, in order.
pub struct Acks {
    pending: VecDeque<(u64, Ack)>,
    /// The first that failed, once taken.
    failed: Option<JournalError>,
}

impl Acks {
    /// Takes the acknowledgements already in, without waiting, on
    /// `runtime` (the one the client runs on): whether none is still to
    /// come, because all are in or one failed, so [`Acks::confirm`]
    /// answers at once.
    pub fn arrived(&mut self, runtime: &tokio::runtime::Handle) -> bool {
        // An acknowledgement's timeout is a timer of the runtime.
        let _within = runtime.enter();
        let mut cx = TaskContext::from_waker(Waker::noop());
        while self.failed.is_none() {
            let Some((seq, ack)) = self.pending.front_mut() else {
                return true;
            };
            let Poll::Ready(ack) = ack.as_mut().poll(&mut cx) else {
                return false;
            };
            let seq = *seq;
            self.pending.pop_front();
            self.failed = checked(seq, ack).err();
        }
        true
    }

    /// Waits for every record to be acknowledged at its own sequence
    /// number; any failure fails the batch (and ends the term).
    pub async fn confirm(self) -> Result<(), JournalError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        for (seq, ack) in self.pending {
            checked(seq, ack.await)?;
        }
        Ok(())
    }
}

/// Record `seq`'s acknowledgement, checked: at its own sequence number, and
/// not a duplicate of one already there.
fn checked(seq: u64, ack: Result<PublishAck, PublishError>) -> Result<(), JournalError> {
    let ack = ack.map_err(|e| append_error(seq, e.kind(), e))?;
    if ack.sequence != seq || ack.duplicate {
        return Err(JournalError::Fenced { seq });
    }
    Ok(())
}

/// A failed append: another leader's record in the way, or NATS not
/// answering.
fn append_error(seq: u64, kind: PublishErrorKind, e: impl std::fmt::Display) -> JournalError {
    match kind {
        PublishErrorKind::WrongLastSequence | PublishErrorKind::WrongLastMessageId => {
            JournalError::Fenced { seq }
        }
        _ => nats(&format!("append of record {seq}"), e),
    }
}

/// Opens a KV bucket, creating its stream if absent. The stream is made
/// here, as the KV convention lays it out (`KV_<bucket>` over
/// `$KV.<bucket>.>`), rather than by the client's bucket creation, which
/// first asks for account details that NATS 2.9 does not give in the shape
/// the client reads.
/// The NKEY user in the seed file at `path`, or why there is none (a seed
/// is never shown).
fn user_seed(path: &std::path::Path) -> Result<nkeys::KeyPair, String> {
    let seed = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    nkeys::KeyPair::from_seed(seed.trim())
        .ok()
        .filter(|k| matches!(k.key_pair_type(), nkeys::KeyPairType::User))
        .ok_or_else(|| "not an NKEY user seed (one line starting SU)".to_owned())
}

async fn open_bucket(
    js: &Context,
    bucket: String,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store, JournalError> {
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: replicas,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .map_err(|e| nats(&format!("bucket {bucket}"), e))?;
    js.get_key_value(&bucket)
        .await
        .map_err(|e| nats(&format!("bucket {bucket}"), e))
}

/// One record of the stream as stored, and read.
pub struct Record {
    /// Its sequence number.
    pub seq: u64,
    /// Its body as stored (JSON).
    pub body: Bytes,
    /// The record, or why it cannot be read.
    pub read: Read,
}

impl Tail {
    /// The next record, with its sequence number. `None` if the
    /// subscription ended.
    pub async fn next(&mut self) -> Option<Result<(u64, Entry), JournalError>> {
        let message = match self.messages.next().await? {
            Ok(m) => m,
            Err(e) => return Some(Err(nats("tail", e))),
        };
        Some(read(&message).and_then(|(seq, read)| {
            read.map(|entry| (seq, entry))
                .map_err(|why| JournalError::Corrupt {
                    file: "the NATS stream".into(),
                    seq,
                    why,
                })
        }))
    }

    /// The next record as stored, and read. `None` if the subscription
    /// ended.
    pub async fn next_record(&mut self) -> Option<Result<Record, JournalError>> {
        let message = match self.messages.next().await? {
            Ok(m) => m,
            Err(e) => return Some(Err(nats("tail", e))),
        };
        Some(read(&message).map(|(seq, read)| Record {
            seq,
            body: message.payload.clone(),
            read,
        }))
    }
}

/// A message's header `name`, if it has one.
fn header(message: &jetstream::Message, name: &str) -> Option<String> {
    Some(message.headers.as_ref()?.get(name)?.as_str().to_owned())
}

/// A record, or why it cannot be read.
type Read = Result<Entry, String>;

/// A message's record sequence number, and the record read.
fn read(message: &jetstream::Message) -> Result<(u64, Read), JournalError> {
    let seq = message.info().map_err(|e| nats("tail", e))?.stream_sequence;
    let at = header(message, AT)
        .and_then(|v| v.parse::<i64>().ok())
        .and_then(Time::from_timestamp_micros)
        .ok_or_else(|| format!("no {AT} header"));
    // Records appended before refusals were kept have none.
    let refused = match header(message, REFUSED).as_deref() {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(other) => Err(format!("{REFUSED} header {other:?}")),
    };
    let read = at.and_then(|at| {
        let command =
            serde_json::from_slice(&message.payload).map_err(|e| format!("undecodable: {e}"))?;
        Ok(Entry {
            at,
            command,
            refused: refused?,
            client: header(message, CLIENT).map(Arc::from),
        })
    });
    Ok((seq, read))
}

/// JetStream on the servers `urls` (comma-separated), connected as this
/// process of `cluster_id`.
async fn jetstream_at(
    urls: &str,
    security: &NatsSecurity,
    cluster_id: &str,
) -> Result<Context, JournalError> {
    let servers = urls
        .split(',')
        .map(|u| u.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| nats(&format!("--journal {urls}"), e))?;
    let client = security
        .options()?
        .name(format!("careroute {cluster_id}"))
        .connection_timeout(CALL_TIMEOUT)
        .connect(servers)
        .await
        .map_err(|e| nats(&format!("cannot connect to {urls}"), e))?;
    let mut js = jetstream::new(client);
    js.set_timeout(CALL_TIMEOUT);
    Ok(js)
}
