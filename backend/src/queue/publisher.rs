//! Publishes order messages with publisher confirms and `mandatory`.
//!
//! A publish counts only when the broker confirmed it with a plain ack: a
//! nack, a returned (unroutable) message, a connection error or a timeout is
//! a [`PublishError`], and the caller must assume the message may or may not
//! be in the queue (the order writer's claim makes either outcome safe).
//!
//! One connection and one confirm channel are shared by all buys; after any
//! failure the next publish reconnects, at most once per back-off interval,
//! so a broker outage costs each buy one fast failure instead of a timeout.
//!
//! Group commit (with `rabbitmq.publish_batch` above 1; the default, 1,
//! publishes each message alone from its caller's task): publishes that
//! arrive together are sent as a group by one task (gathered for at most
//! `rabbitmq.publish_window_us` after the first), queued on the channel at
//! once, and their confirms awaited together under one deadline while the
//! next group is already being sent. Each caller still gets the outcome of
//! its own message's confirm; a group whose confirms do not come in time
//! fails every publish in it.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::future::join_all;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{FieldTable, ShortString},
};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{OrderMessage, broker, topology::Topology};
use crate::config::RabbitConfig;

/// Why a message was not confirmed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker unreachable: {0}")]
    Connect(String),
    #[error("broker error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("broker refused the message (nack)")]
    Nacked,
    #[error("message was unroutable and returned")]
    Returned,
    #[error("no confirm within {0:?}")]
    Timeout(Duration),
    #[error("reconnect suppressed after a recent failure")]
    BackingOff,
    #[error("the publisher is shutting down")]
    Closed,
}

struct Live {
    // Kept so the connection lives as long as its channel.
    _conn: Connection,
    channel: Channel,
}

struct State {
    live: Option<Live>,
    last_failure: Option<Instant>,
}

/// The connection and its confirm channel, shared by the caller-facing
/// [`Publisher`] and its group task.
struct Link {
    cfg: RabbitConfig,
    topology: Topology,
    state: Mutex<State>,
    backoff: Duration,
}

/// One message waiting for its group.
struct Job {
    queue: String,
    payload: Vec<u8>,
    props: BasicProperties,
    reply: oneshot::Sender<Result<(), PublishError>>,
}

/// The buy path's confirmed publisher.
pub struct Publisher {
    link: Arc<Link>,
    /// The group task's inbox, started on first use (it needs a runtime).
    groups: OnceLock<mpsc::Sender<Job>>,
}

impl Publisher {
    /// Creates a publisher; it connects on first use and declares
    /// `topology`'s queues on every connection.
    pub fn new(cfg: RabbitConfig, topology: Topology) -> Self {
        Self {
            link: Arc::new(Link {
                cfg,
                topology,
                state: Mutex::new(State {
                    live: None,
                    last_failure: None,
                }),
                backoff: Duration::from_millis(250),
            }),
            groups: OnceLock::new(),
        }
    }

    /// Connects now (used at start-up so the first buys do not pay for it).
    pub async fn warm_up(&self) -> Result<(), PublishError> {
        self.link.channel().await.map(|_| ())
    }

    pub fn topology(&self) -> &Topology {
        &self.link.topology
    }

    /// Publishes one order message to the order queue and waits for the
    /// broker's confirm.
    pub async fn publish(&self, msg: &OrderMessage) -> Result<(), PublishError> {
        let payload = serde_json::to_vec(msg).expect("order message serializes");
        self.publish_to(
            self.link.topology.orders(),
            &payload,
            &msg.attempt_id,
            msg.reserved_at_ms,
            FieldTable::default(),
        )
        .await
    }

    /// Publishes a persistent JSON message to `queue` (through the default
    /// exchange) and waits for the broker's confirm.
    pub async fn publish_to(
        &self,
        queue: &str,
        payload: &[u8],
        message_id: &str,
        timestamp_ms: i64,
        headers: FieldTable,
    ) -> Result<(), PublishError> {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"))
            .with_message_id(ShortString::from(message_id))
            .with_timestamp((timestamp_ms / 1000).max(0) as u64)
            .with_headers(headers);
        if self.link.cfg.publish_batch <= 1 {
            return self.link.publish_one(queue, payload, props).await;
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            queue: queue.to_owned(),
            payload: payload.to_vec(),
            props,
            reply,
        };
        self.inbox()
            .send(job)
            .await
            .map_err(|_| PublishError::Closed)?;
        answer.await.unwrap_or(Err(PublishError::Closed))
    }

    fn inbox(&self) -> &mpsc::Sender<Job> {
        self.groups.get_or_init(|| {
            let max = self.link.cfg.publish_batch.max(1);
            let (tx, rx) = mpsc::channel(max * 4);
            let window = Duration::from_micros(self.link.cfg.publish_window_us);
            tokio::spawn(run_groups(self.link.clone(), rx, window, max));
            tx
        })
    }
}

/// The group task: gathers the messages waiting (up to `max`, for at most
/// `window` after the first), sends them as one group, and goes on with the
/// next while that group's confirms are awaited. Ends when the publisher is
/// dropped.
async fn run_groups(link: Arc<Link>, mut inbox: mpsc::Receiver<Job>, window: Duration, max: usize) {
    while let Some(first) = inbox.recv().await {
        let deadline = tokio::time::Instant::now() + window;
        let mut group = vec![first];
        while group.len() < max {
            match inbox.try_recv() {
                Ok(job) => group.push(job),
                Err(_) if window.is_zero() => break,
                Err(_) => match tokio::time::timeout_at(deadline, inbox.recv()).await {
                    Ok(Some(job)) => group.push(job),
                    _ => break,
                },
            }
        }
        metrics::histogram!("seckill_publish_group_size").record(group.len() as f64);
        link.send_group(group).await;
    }
}

impl Link {
    async fn channel(&self) -> Result<Channel, PublishError> {
        let mut st = self.state.lock().await;
        if let Some(live) = &st.live {
            if live.channel.status().connected() {
                return Ok(live.channel.clone());
            }
            st.live = None;
        }
        if let Some(t) = st.last_failure
            && t.elapsed() < self.backoff
        {
            return Err(PublishError::BackingOff);
        }
        match self.connect().await {
            Ok(live) => {
                let ch = live.channel.clone();
                st.live = Some(live);
                st.last_failure = None;
                Ok(ch)
            }
            Err(e) => {
                st.last_failure = Some(Instant::now());
                Err(e)
            }
        }
    }

    async fn connect(&self) -> Result<Live, PublishError> {
        let open = broker::open(&self.cfg, &self.topology)
            .await
            .map_err(|e| PublishError::Connect(e.to_string()))?;
        open.channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| PublishError::Connect(e.to_string()))?;
        tracing::info!(queue = %self.cfg.queue, "publisher connected");
        Ok(Live {
            _conn: open.conn,
            channel: open.channel,
        })
    }

    async fn invalidate(&self, failed: &Channel) {
        let mut st = self.state.lock().await;
        if st
            .live
            .as_ref()
            .is_some_and(|l| l.channel.id() == failed.id())
        {
            st.live = None;
        }
    }

    /// Sends a group's messages in order on one channel, then awaits their
    /// confirms in a task of their own under one deadline.
    async fn send_group(self: &Arc<Self>, group: Vec<Job>) {
        let channel = match self.channel().await {
            Ok(c) => c,
            Err(e) => {
                for job in group {
                    let _ = job.reply.send(Err(e.clone()));
                }
                return;
            }
        };
        let timeout = Duration::from_millis(self.cfg.confirm_timeout_ms);
        let deadline = tokio::time::Instant::now() + timeout;
        // Every publish of the group is queued on the channel at once (in
        // order: each is queued when first polled), then awaited together.
        let (replies, jobs): (Vec<_>, Vec<_>) = group
            .into_iter()
            .map(|j| (j.reply, (j.queue, j.payload, j.props)))
            .unzip();
        let sends = jobs.iter().map(|(queue, payload, props)| {
            channel.basic_publish(
                ShortString::from(""),
                ShortString::from(queue.as_str()),
                mandatory(),
                payload,
                props.clone(),
            )
        });
        let sent = tokio::time::timeout_at(deadline, join_all(sends)).await;
        let mut pending = Vec::with_capacity(replies.len());
        match sent {
            Ok(results) => {
                let mut failed = false;
                for (reply, r) in replies.into_iter().zip(results) {
                    match r {
                        Ok(confirm) => pending.push((reply, confirm)),
                        Err(e) => {
                            failed = true;
                            let _ = reply.send(Err(PublishError::Amqp(e)));
                        }
                    }
                }
                if failed {
                    self.invalidate(&channel).await;
                }
            }
            Err(_) => {
                self.invalidate(&channel).await;
                for reply in replies {
                    let _ = reply.send(Err(PublishError::Timeout(timeout)));
                }
                return;
            }
        }
        if pending.is_empty() {
            return;
        }
        let link = self.clone();
        tokio::spawn(async move {
            let (replies, confirms): (Vec<_>, Vec<_>) = pending.into_iter().unzip();
            match tokio::time::timeout_at(deadline, join_all(confirms)).await {
                Ok(outcomes) => {
                    let mut broken = false;
                    for (reply, outcome) in replies.into_iter().zip(outcomes) {
                        let outcome = confirmed(outcome);
                        broken |= matches!(outcome, Err(PublishError::Amqp(_)));
                        let _ = reply.send(outcome);
                    }
                    if broken {
                        link.invalidate(&channel).await;
                    }
                }
                Err(_) => {
                    link.invalidate(&channel).await;
                    for reply in replies {
                        let _ = reply.send(Err(PublishError::Timeout(timeout)));
                    }
                }
            }
        });
    }

    /// Publishes one message alone and waits for its confirm.
    async fn publish_one(
        &self,
        queue: &str,
        payload: &[u8],
        props: BasicProperties,
    ) -> Result<(), PublishError> {
        let channel = self.channel().await?;
        let timeout = Duration::from_millis(self.cfg.confirm_timeout_ms);
        let fut = async {
            let confirm = channel
                .basic_publish(
                    ShortString::from(""),
                    ShortString::from(queue),
                    mandatory(),
                    payload,
                    props,
                )
                .await?;
            Ok(confirm.await)
        };
        let outcome = match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(c)) => confirmed(c),
            Ok(Err(e)) => Err(PublishError::Amqp(e)),
            Err(_) => Err(PublishError::Timeout(timeout)),
        };
        if matches!(
            outcome,
            Err(PublishError::Amqp(_)) | Err(PublishError::Timeout(_))
        ) {
            self.invalidate(&channel).await;
        }
        outcome
    }
}

fn mandatory() -> BasicPublishOptions {
    BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    }
}

/// What a confirm means for the caller.
fn confirmed(c: lapin::Result<Confirmation>) -> Result<(), PublishError> {
    match c {
        Ok(Confirmation::Ack(None)) => Ok(()),
        Ok(Confirmation::Ack(Some(_))) => Err(PublishError::Returned),
        Ok(Confirmation::Nack(_)) | Ok(Confirmation::NotRequested) => Err(PublishError::Nacked),
        Err(e) => Err(PublishError::Amqp(e)),
    }
}
