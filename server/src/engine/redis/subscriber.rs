//! The subscriber: the node's one pub/sub link. It (re)subscribes,
//! delivers each channel's publications in seq order, repairs gaps from
//! the stream, and reconnects with backoff.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use redis::Value;
use tokio::sync::oneshot;

use super::Shared;
use super::connection::{BACKOFF_FIRST, BACKOFF_MAX, bounded, call, unavailable};
use super::ctl::{load_revocations, on_ctl};
use super::keys::{CTL_CHANNEL, PREFIX, parse_message, pubsub_channel, seq_key};
use crate::engine::{EngineError, Publication};
use crate::protocol::ChannelName;

/// The subscriber link is PINGed this often, and is dead when a PING is
/// not answered within [`PING_TIMEOUT`]: a half-open link (a failover, a
/// NAT or route dropped without a reset) is found within 3 s, where TCP
/// alone would wait for minutes, or for ever on an idle link.
pub(super) const PING_EVERY: Duration = Duration::from_secs(1);
pub(super) const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// What the node asks of its subscriber task.
pub(super) enum Control {
    Subscribe(Vec<ChannelName>, oneshot::Sender<Result<(), EngineError>>),
    Unsubscribe(Vec<ChannelName>),
    SubscribeAll(oneshot::Sender<Result<(), EngineError>>),
    UnsubscribeAll,
}

/// The node's subscriptions and what it has delivered, per channel.
#[derive(Default)]
pub(super) struct Subscriptions {
    counts: HashMap<ChannelName, usize>,
    watch_all: usize,
    /// The epoch `delivered` counts in.
    epoch: String,
    /// The last seq delivered per channel: the gap detector.
    delivered: HashMap<ChannelName, u64>,
}

impl Subscriptions {
    /// Whether a local connection reads this channel now.
    fn reads(&self, channel: &ChannelName) -> bool {
        self.watch_all > 0 || self.counts.contains_key(channel)
    }

    /// Seqs of another epoch are not comparable: every channel served
    /// starts again from 0, so what the new epoch already holds is
    /// repaired from its stream before anything live.
    fn enter_epoch(&mut self, epoch: &str) {
        if self.epoch != epoch {
            self.epoch = epoch.to_owned();
            self.delivered.clear();
            for channel in self.counts.keys() {
                self.delivered.insert(channel.clone(), 0);
            }
        }
    }
}

/// Owns the pub/sub connection: (re)subscribes, delivers in seq order,
/// repairs gaps from the stream, reconnects with backoff.
pub(super) async fn subscriber(shared: Arc<Shared>) {
    shared.subscribed.store(false, Ordering::Relaxed);
    let mut commands = shared.commands.lock().await;
    let mut subs = shared.subs.lock().await;
    let subs = &mut *subs;
    let mut backoff = BACKOFF_FIRST;
    loop {
        let (mut sink, mut stream) = match connect_and_resync(&shared, subs).await {
            Ok(link) => link,
            Err(e) => {
                shared.subscribed.store(false, Ordering::Relaxed);
                tracing::warn!(error = %e, retry_in = ?backoff, "redis subscriber not connected; retrying");
                // Answer requests while down instead of leaving them waiting.
                let deadline = tokio::time::sleep(backoff);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        () = &mut deadline => break,
                        command = commands.recv() => match command {
                            None => return,
                            Some(command) => refuse_while_down(subs, command),
                        },
                    }
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        shared.subscribed.store(true, Ordering::Relaxed);
        backoff = BACKOFF_FIRST;
        tracing::info!(channels = subs.counts.len(), "redis subscriber connected");

        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.reset();
        loop {
            tokio::select! {
                command = commands.recv() => {
                    let Some(command) = command else { return };
                    // What else is waiting goes with it: a connect storm's
                    // thousands of subscriptions become a few SUBSCRIBEs.
                    let mut batch = vec![command];
                    while batch.len() < SUBSCRIBE_BATCH {
                        match commands.try_recv() {
                            Ok(command) => batch.push(command),
                            Err(_) => break,
                        }
                    }
                    if let Err(e) = apply_batch(&shared, &mut sink, subs, batch).await {
                        tracing::warn!(error = %e, "redis subscribe failed");
                        break;
                    }
                }
                _ = ping.tick() => {
                    // The command link too: one that stopped answering, or
                    // whose server is no longer the master (a failover), is
                    // replaced, and this link follows it to the new master.
                    if !shared.command_link_ok().await {
                        tracing::warn!("redis command link unhealthy or not the master; reconnecting both links");
                        if let Err(e) = shared.rebuild_conn().await {
                            tracing::warn!(error = %e, "redis command link not rebuilt yet");
                        }
                        break;
                    }
                    // Messages wait in the connection's buffer meanwhile.
                    match tokio::time::timeout(PING_TIMEOUT, sink.ping::<Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "redis subscriber PING failed");
                            break;
                        }
                        Err(_) => {
                            tracing::warn!(timeout = ?PING_TIMEOUT, "redis subscriber PING unanswered: the link is dead");
                            break;
                        }
                    }
                }
                message = stream.next() => {
                    let Some(message) = message else { break };
                    if message.get_channel_name() == CTL_CHANNEL {
                        on_ctl(&shared, message.get_payload_bytes());
                        continue;
                    }
                    let Some((epoch, publication)) =
                        parse_message(message.get_channel_name(), message.get_payload_bytes())
                    else {
                        continue;
                    };
                    if epoch != subs.epoch {
                        shared.observe_epoch(&epoch);
                        subs.enter_epoch(&epoch);
                    }
                    deliver_in_order(&shared, subs, publication).await;
                }
            }
        }
        shared.subscribed.store(false, Ordering::Relaxed);
        tracing::warn!("redis subscriber connection lost; reconnecting");
    }
}

/// One (re)connect: a new pub/sub link subscribed to every channel this
/// node serves and to the control channel, then what happened while the
/// node was not listening: the epoch, the revocations (and the open
/// connections they now refuse), and every channel's missed events.
async fn connect_and_resync(
    shared: &Shared,
    subs: &mut Subscriptions,
) -> Result<(redis::aio::PubSubSink, redis::aio::PubSubStream), EngineError> {
    let client = shared.target.client().await?;
    let pubsub = call(client.get_async_pubsub()).await?;
    let (mut sink, stream) = pubsub.split();
    let mut channels: Vec<String> = subs.counts.keys().map(pubsub_channel).collect();
    channels.push(CTL_CHANNEL.to_owned());
    call(sink.subscribe(channels)).await?;
    if subs.watch_all > 0 {
        call(sink.psubscribe(format!("{PREFIX}ch:*"))).await?;
    }
    let epoch = shared.load_epoch().await?;
    subs.enter_epoch(&epoch);
    load_revocations(shared).await?;
    // Revocations told while this link was down came with disconnects
    // this node never heard: its open connections are checked again.
    let now = std::time::Instant::now();
    let closed = shared
        .deliver
        .close_revoked(&|user| shared.revocations.revoked_at(user, now));
    if closed > 0 {
        tracing::warn!(
            closed,
            "closed connections revoked while the control link was down"
        );
    }
    repair_all(shared, subs).await?;
    Ok((sink, stream))
}

fn refuse_while_down(subs: &mut Subscriptions, command: Control) {
    let down = || Err(unavailable("not connected"));
    match command {
        Control::Subscribe(_, ack) | Control::SubscribeAll(ack) => {
            let _ = ack.send(down());
        }
        Control::Unsubscribe(channels) => {
            release(subs, &channels);
        }
        Control::UnsubscribeAll => subs.watch_all = subs.watch_all.saturating_sub(1),
    }
}

/// Drops references; answers the channels nobody reads any more.
fn release(subs: &mut Subscriptions, channels: &[ChannelName]) -> Vec<ChannelName> {
    let mut gone = Vec::new();
    for channel in channels {
        if let Some(count) = subs.counts.get_mut(channel) {
            *count -= 1;
            if *count == 0 {
                subs.counts.remove(channel);
                subs.delivered.remove(channel);
                gone.push(channel.clone());
            }
        }
    }
    gone
}

/// Subscribes to the channels no local connection read yet and records
/// the seq each was at once subscribed: the baseline from which a later
/// reconnect repairs it, even if it never delivers a message before then.
async fn subscribe_new(
    shared: &Shared,
    sink: &mut redis::aio::PubSubSink,
    subs: &mut Subscriptions,
    new: &[ChannelName],
) -> redis::RedisResult<()> {
    if new.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = new.iter().map(pubsub_channel).collect();
    bounded(sink.subscribe(names)).await?;
    // Read after the subscription holds: a publish in between is both
    // counted here and delivered live, and the live copy is a duplicate.
    let keys: Vec<String> = new.iter().map(seq_key).collect();
    let mut conn = shared.conn();
    let seqs: Vec<Option<u64>> =
        bounded(redis::cmd("MGET").arg(keys).query_async(&mut conn)).await?;
    for (channel, seq) in new.iter().zip(seqs) {
        subs.delivered
            .entry(channel.clone())
            .or_insert(seq.unwrap_or(0));
    }
    Ok(())
}

/// Most subscriber requests handled in one round.
const SUBSCRIBE_BATCH: usize = 1024;

/// Applies waiting requests: every `Subscribe` of the batch in one
/// SUBSCRIBE (and one MGET for the new channels' baselines), then the rest
/// in order. Taking subscriptions first is safe: counts only add, and a
/// later unsubscribe of the same channel then finds it counted.
async fn apply_batch(
    shared: &Shared,
    sink: &mut redis::aio::PubSubSink,
    subs: &mut Subscriptions,
    batch: Vec<Control>,
) -> redis::RedisResult<()> {
    let mut subscribes = Vec::new();
    let mut others = Vec::new();
    for command in batch {
        match command {
            Control::Subscribe(channels, ack) => subscribes.push((channels, ack)),
            other => others.push(other),
        }
    }
    if !subscribes.is_empty() {
        let mut seen = std::collections::HashSet::new();
        let mut new: Vec<ChannelName> = Vec::new();
        for (channels, _) in &subscribes {
            for channel in channels {
                if !subs.counts.contains_key(channel) && seen.insert(channel) {
                    new.push(channel.clone());
                }
            }
        }
        match subscribe_new(shared, sink, subs, &new).await {
            Ok(()) => {
                for (channels, ack) in subscribes {
                    for channel in channels {
                        *subs.counts.entry(channel).or_default() += 1;
                    }
                    let _ = ack.send(Ok(()));
                }
            }
            Err(e) => {
                for (_, ack) in subscribes {
                    let _ = ack.send(Err(unavailable(&e)));
                }
                return Err(e);
            }
        }
    }
    for command in others {
        apply(shared, sink, subs, command).await?;
    }
    Ok(())
}

async fn apply(
    shared: &Shared,
    sink: &mut redis::aio::PubSubSink,
    subs: &mut Subscriptions,
    command: Control,
) -> redis::RedisResult<()> {
    match command {
        Control::Subscribe(channels, ack) => {
            let new: Vec<ChannelName> = channels
                .iter()
                .filter(|c| !subs.counts.contains_key(*c))
                .cloned()
                .collect();
            let result = subscribe_new(shared, sink, subs, &new).await;
            match result {
                Ok(()) => {
                    for channel in channels {
                        *subs.counts.entry(channel).or_default() += 1;
                    }
                    let _ = ack.send(Ok(()));
                    Ok(())
                }
                Err(e) => {
                    let _ = ack.send(Err(unavailable(&e)));
                    Err(e)
                }
            }
        }
        Control::Unsubscribe(channels) => {
            let gone = release(subs, &channels);
            if !gone.is_empty() {
                let names: Vec<String> = gone.iter().map(pubsub_channel).collect();
                bounded(sink.unsubscribe(names)).await?;
            }
            Ok(())
        }
        Control::SubscribeAll(ack) => {
            let result = if subs.watch_all == 0 {
                bounded(sink.psubscribe(format!("{PREFIX}ch:*"))).await
            } else {
                Ok(())
            };
            match result {
                Ok(()) => {
                    subs.watch_all += 1;
                    let _ = ack.send(Ok(()));
                    Ok(())
                }
                Err(e) => {
                    let _ = ack.send(Err(unavailable(&e)));
                    Err(e)
                }
            }
        }
        Control::UnsubscribeAll => {
            subs.watch_all = subs.watch_all.saturating_sub(1);
            if subs.watch_all == 0 {
                bounded(sink.punsubscribe(format!("{PREFIX}ch:*"))).await?;
                // Forget channels only the watchers read.
                subs.delivered.retain(|c, _| subs.counts.contains_key(c));
            }
            Ok(())
        }
    }
}

/// Delivers `publication` after any events of its channel this node
/// missed; drops what was already delivered.
async fn deliver_in_order(
    shared: &Shared,
    subs: &mut Subscriptions,
    publication: Arc<Publication>,
) {
    let channel = publication.channel.clone();
    // A message can still arrive after this node unsubscribed. Tracking
    // its seq again would leave a stale "last delivered" behind, and a
    // later subscriber of the channel would get a needless gap repair (or
    // a spurious resync when that range is no longer in history).
    if !subs.reads(&channel) {
        return;
    }
    let last = subs.delivered.get(&channel).copied();
    match last {
        Some(last) if publication.seq <= last => return,
        Some(last) if publication.seq > last + 1 => {
            match shared.range(&channel, last + 1, publication.seq - 1).await {
                Ok(missed) => {
                    let complete = missed.len() as u64 == publication.seq - 1 - last;
                    for p in &missed {
                        shared.deliver.deliver(p);
                    }
                    if !complete {
                        tracing::warn!(channel = %channel, "gap not in history any more; connections resync");
                        shared.deliver.resync(Some(&channel));
                    }
                }
                Err(e) => {
                    tracing::warn!(channel = %channel, error = %e, "gap repair failed; connections resync");
                    shared.deliver.resync(Some(&channel));
                }
            }
        }
        _ => {}
    }
    shared.deliver.deliver(&publication);
    subs.delivered.insert(channel, publication.seq);
}

/// After a reconnect: delivers what every channel this node serves got
/// while it was not listening, from the seq it last delivered or was at
/// when subscribed. A channel whose seq in Redis is below that was rolled
/// back (an older RDB restored, a lagging replica promoted): an epoch
/// change for that channel, told in band, never a silent drop of what
/// comes next.
async fn repair_all(shared: &Shared, subs: &mut Subscriptions) -> Result<(), EngineError> {
    let served: Vec<(ChannelName, u64)> = subs
        .delivered
        .iter()
        .map(|(c, s)| (c.clone(), *s))
        .collect();
    if served.is_empty() {
        return Ok(());
    }
    let keys: Vec<String> = served.iter().map(|(c, _)| seq_key(c)).collect();
    let mut conn = shared.conn();
    let latest: Vec<Option<u64>> =
        call(redis::cmd("MGET").arg(keys).query_async(&mut conn)).await?;
    for ((channel, last), latest) in served.into_iter().zip(latest) {
        let latest = latest.unwrap_or(0);
        if latest < last {
            tracing::warn!(channel = %channel, delivered = last, redis = latest,
                "redis holds an older seq than this node delivered (rolled back); connections resync in band");
            shared
                .deliver
                .epoch_changed(Some(&channel), &shared.current_epoch(), latest);
            subs.delivered.insert(channel, latest);
            continue;
        }
        if latest == last {
            continue;
        }
        match shared.range(&channel, last + 1, latest).await {
            Ok(missed) => {
                if missed.first().is_none_or(|first| first.seq != last + 1) {
                    shared.deliver.resync(Some(&channel));
                }
                for p in &missed {
                    shared.deliver.deliver(p);
                    subs.delivered.insert(channel.clone(), p.seq);
                }
            }
            Err(_) => shared.deliver.resync(Some(&channel)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_released_channel_is_no_longer_read() {
        let mut subs = Subscriptions::default();
        let org = ChannelName::parse("org:7").unwrap();
        subs.counts.insert(org.clone(), 1);
        subs.delivered.insert(org.clone(), 5);
        assert!(subs.reads(&org));
        let gone = release(&mut subs, std::slice::from_ref(&org));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0], org);
        assert!(!subs.reads(&org));
        assert!(!subs.delivered.contains_key(&org));
        subs.watch_all = 1;
        assert!(subs.reads(&org), "a watcher of every channel reads it");
    }
}
