//! What every cluster command needs: the profile, the operator, SSH to the
//! machines, and the way events reach the log — signed here on top of the
//! operator's own feed, recorded in the outbox, handed to a node through
//! its control socket.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use makiatto_events::{Event, EventId, Hlc, Payload, VersionVector};
use makiatto_protocol::append::{Outcome, hex_events};
use makiatto_protocol::client::{Answers, Batch, Slot};
use makiatto_protocol::request as op;
use makiatto_protocol::status::{Head, NodeClock};

use crate::operator::{Operator, Outbox};
use crate::profile::{Machine, Profile};
use crate::ssh::{ANSWER_WITHIN, HostKeyPolicy, Remote, Target};

/// How long a kept connection may take to answer a `hello` before the
/// command logs in itself: a kept connection is one round trip from an
/// answer, so a dead one is told apart quickly.
const KEPT_PROBE_WITHIN: Duration = Duration::from_secs(3);

/// How long [`Ctx::any_node`] waits on one machine before it tries the
/// next one as well (a machine that fails sooner is passed over sooner):
/// long enough for a login over a slow link, short enough that a machine
/// that is down costs a command little.
const NEXT_MACHINE_AFTER: Duration = Duration::from_secs(1);

/// The profile, operator and SSH key of one `maki` invocation.
pub struct Ctx {
    pub profile_path: PathBuf,
    pub profile: Profile,
    pub operator_key_path: PathBuf,
    pub ssh_key: Option<PathBuf>,
}

/// Wall-clock milliseconds (the HLC keeps events ordered even if it jumps).
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Ctx {
    pub fn operator(&self) -> anyhow::Result<Operator> {
        Operator::load_or_create(&self.operator_key_path)
    }

    pub fn ssh_key(&self) -> anyhow::Result<PathBuf> {
        match &self.ssh_key {
            Some(p) => Ok(p.clone()),
            None => crate::ssh::default_key_file(),
        }
    }

    pub fn save_profile(&self) -> anyhow::Result<()> {
        self.profile.save(&self.profile_path)
    }

    pub fn cluster_id(&self) -> anyhow::Result<String> {
        self.profile.cluster_id.clone().context(
            "the profile has no cluster yet; run `maki machine init` first (or pass --profile)",
        )
    }

    /// Where and as whom `maki` logs in to a machine of the profile.
    fn target(&self, m: &Machine) -> anyhow::Result<Target> {
        Ok(Target {
            user: m.ssh_user.clone(),
            host: m.ssh_host.clone(),
            port: m.ssh_port,
            key_file: self.ssh_key()?,
        })
    }

    /// Connects to a machine of the profile, its host key pinned.
    ///
    /// A connection kept by an earlier command (`mux.rs`) carries the
    /// control requests if it answers a `hello` within
    /// [`KEPT_PROBE_WITHIN`]; one that does not (the machine went away
    /// since, and the keeper has not noticed yet) is skipped, and this
    /// command logs in itself (within [`crate::ssh::LOGIN_WITHIN`]), leaving a keeper
    /// for the commands that follow.
    pub async fn connect(&self, m: &Machine) -> anyhow::Result<Remote> {
        let target = self.target(m)?;
        let keep = crate::mux::enabled();
        if keep
            && let Some(remote) = crate::mux::attach(&target, &m.host_key).await
            && remote.probe(KEPT_PROBE_WITHIN).await.is_ok()
        {
            return Ok(remote);
        }
        let remote = Remote::connect(&target, HostKeyPolicy::Pinned(&m.host_key))
            .await
            .with_context(|| format!("machine {}", m.name))?;
        if keep {
            crate::mux::spawn(&m.name, &self.profile_path, &target.key_file);
        }
        Ok(remote)
    }

    /// [`Ctx::connect`], and the machine's `makiatto control` answered: a
    /// node a command can work through, reached within
    /// [`crate::ssh::LOGIN_WITHIN`] and [`ANSWER_WITHIN`].
    pub async fn reach(&self, m: &Machine) -> anyhow::Result<Remote> {
        let remote = self.connect(m).await?;
        remote
            .probe(ANSWER_WITHIN)
            .await
            .with_context(|| format!("machine {}", m.name))?;
        Ok(remote)
    }

    /// `maki __keep <machine>`: keeps a connection to it for the commands
    /// that follow (`mux.rs`).
    pub async fn keep(&self, name: &str) -> anyhow::Result<()> {
        let m = self
            .profile
            .machines
            .iter()
            .find(|m| m.name == name)
            .with_context(|| format!("no machine {name} in the profile"))?;
        crate::mux::keep(&self.target(m)?, &m.host_key).await
    }

    /// Connects to the first machine of the profile that answers.
    pub async fn any_node(&self) -> anyhow::Result<(Machine, Remote)> {
        self.any_node_except("").await
    }

    /// Reaches a machine other than `skip` whose `makiatto control`
    /// answers, trying them in the profile's order without waiting on one
    /// that does not answer: the next starts when the one before fails, or
    /// [`NEXT_MACHINE_AFTER`] after it started, whichever comes first, and
    /// the first to answer is the one used (the others are dropped). A
    /// machine that is down or cut off therefore costs a command about
    /// [`NEXT_MACHINE_AFTER`], not a login timeout; when none answers, the
    /// error lists why for each, in the profile's order.
    pub async fn any_node_except(&self, skip: &str) -> anyhow::Result<(Machine, Remote)> {
        use futures::StreamExt;
        let machines: Vec<&Machine> = self
            .profile
            .machines
            .iter()
            .filter(|m| m.name != skip)
            .collect();
        if machines.is_empty() {
            bail!(
                "the profile {} has no machines; run `maki machine init` first",
                self.profile_path.display()
            );
        }
        let mut errors: Vec<Option<String>> = vec![None; machines.len()];
        let mut waiting = machines.iter().enumerate();
        let mut attempts = futures::stream::FuturesUnordered::new();
        if let Some((i, m)) = waiting.next() {
            attempts.push(reach_nth(self, i, m));
        }
        while !attempts.is_empty() {
            let more = waiting.len() > 0;
            tokio::select! {
                Some((i, m, reached)) = attempts.next() => match reached {
                    Ok(remote) => return Ok((m.clone(), remote)),
                    Err(e) => {
                        errors[i] = Some(format!("{e:#}"));
                        if let Some((i, m)) = waiting.next() {
                            attempts.push(reach_nth(self, i, m));
                        }
                    }
                },
                () = tokio::time::sleep(NEXT_MACHINE_AFTER), if more => {
                    if let Some((i, m)) = waiting.next() {
                        attempts.push(reach_nth(self, i, m));
                    }
                }
            }
        }
        // Every machine was tried (each names itself in its error).
        let errors: Vec<String> = errors.into_iter().flatten().collect();
        bail!(
            "no machine of the profile answers (run `maki health` to see each):\n  {}",
            errors.join("\n  ")
        )
    }

    /// Signs `payloads` in order as the operator, on top of the operator's
    /// feed and the heads `via` knows, and records them in the outbox.
    pub async fn sign(
        &self,
        via: &Remote,
        cluster_id: &str,
        payloads: Vec<Payload>,
    ) -> anyhow::Result<Vec<Event>> {
        Ok(self.signed(via, cluster_id, payloads, None, None).await?.0)
    }

    /// Adds to `batch` the requests whose answers are the node's [`Tip`]:
    /// a command that will publish asks them with its first question.
    pub fn ask_tip(&self, batch: &mut Batch) -> anyhow::Result<TipSlots> {
        let author = self.operator()?.key().public();
        Ok(TipSlots {
            heads: batch.push(op::Heads {}),
            feed: batch.push(op::Feed { author }),
            status: batch.push(op::GetStatus {}),
        })
    }

    /// Signs `payloads` as [`Ctx::sign`] does, with `also` among the first
    /// event's parents (a rollback names its target version this way), and
    /// hands them to the same node, after whatever part of the operator's
    /// feed it lacks: signing and delivering, which both need the node's
    /// tip of the feed, ask for it once. With `tip` (the answers to
    /// [`Ctx::ask_tip`], asked a moment ago with another question)
    /// they do not ask at all: heads a little stale only make the events
    /// concurrent with what came since, which the log merges.
    pub async fn publish(
        &self,
        via: &Remote,
        cluster_id: &str,
        payloads: Vec<Payload>,
        also: Option<(EventId, Hlc)>,
        tip: Option<Tip>,
    ) -> anyhow::Result<Vec<Event>> {
        let (events, node_seq, outbox) = self.signed(via, cluster_id, payloads, also, tip).await?;
        append(via, &unsent(outbox.after(node_seq), &events)).await?;
        Ok(events)
    }

    /// The signed events, the seq of the operator's latest event that
    /// `via` holds (0: none), and the outbox that now records them.
    async fn signed(
        &self,
        via: &Remote,
        cluster_id: &str,
        payloads: Vec<Payload>,
        also: Option<(EventId, Hlc)>,
        tip: Option<Tip>,
    ) -> anyhow::Result<(Vec<Event>, u64, Outbox)> {
        let operator = self.operator()?;
        let mut outbox = operator.outbox(cluster_id)?;
        let tip = match tip {
            Some(tip) => tip,
            None => {
                let mut batch = Batch::new();
                let slots = self.ask_tip(&mut batch)?;
                let mut answers = via.send(batch).await?;
                slots.take(&mut answers, via)?
            }
        };
        let Tip {
            heads,
            feed: node_latest,
            clock,
        } = tip;
        let now = now_millis();
        if let Some(clock) = clock {
            check_clock(now, &clock, via.target())?;
        }
        let mut parents: Vec<(EventId, Hlc)> = heads.iter().map(|h| (h.id, h.hlc())).collect();
        if let Some(extra) = also
            && !parents.iter().any(|(id, _)| *id == extra.0)
        {
            parents.truncate(makiatto_events::MAX_PARENTS - 1);
            parents.push(extra);
        }
        let mut writer = outbox.writer(operator.key(), node_latest.as_ref());
        let mut events = Vec::new();
        for payload in payloads {
            let e = writer
                .write(payload, &parents, now)
                .context("cannot sign the event")?;
            parents = vec![(e.id(), e.hlc())];
            events.push(e);
        }
        outbox.record(&events)?;
        let node_seq = node_latest.map_or(0, |e| e.seq());
        Ok((events, node_seq, outbox))
    }

    /// Hands `events` to a node, after whatever part of the operator's own
    /// feed the node lacks. Fails if any event is refused.
    pub async fn deliver(
        &self,
        remote: &Remote,
        cluster_id: &str,
        events: &[Event],
    ) -> anyhow::Result<()> {
        let operator = self.operator()?;
        let outbox = operator.outbox(cluster_id)?;
        let author = operator.key().public();
        let seq = match remote.ask(op::Feed { author }).await? {
            Some(h) => feed_event(&h, remote)?.seq(),
            None => 0,
        };
        append(remote, &unsent(outbox.after(seq), events)).await
    }
}

/// [`Ctx::reach`] of the `i`-th machine tried, told apart by `i`.
async fn reach_nth<'a>(
    ctx: &'a Ctx,
    i: usize,
    m: &'a Machine,
) -> (usize, &'a Machine, anyhow::Result<Remote>) {
    (i, m, ctx.reach(m).await)
}

/// A node's heads and the operator's latest event there, as answered to
/// [`Ctx::ask_tip`]: what signing builds on.
pub struct Tip {
    pub heads: Vec<Head>,
    pub feed: Option<Event>,
    /// The node's clock and the cluster's bound on stamps (`None` from an
    /// older daemon, which checks nothing).
    pub clock: Option<NodeClock>,
}

/// Where a batch's answers hold the [`Tip`].
pub struct TipSlots {
    heads: Slot<op::Heads>,
    feed: Slot<op::Feed>,
    status: Slot<op::GetStatus>,
}

impl TipSlots {
    /// The tip, from the answers of the batch these slots were made in.
    pub fn take(self, answers: &mut Answers, via: &Remote) -> anyhow::Result<Tip> {
        let heads = answers
            .take(self.heads)
            .map_err(|e| anyhow::anyhow!("{}: {e}", via.target()))?;
        let feed = answers
            .take(self.feed)
            .map_err(|e| anyhow::anyhow!("{}: {e}", via.target()))?
            .map(|h| feed_event(&h, via))
            .transpose()?;
        // A daemon that cannot say (an older one) is not held against us.
        let clock = answers.take(self.status).ok().and_then(|s| s.clock);
        Ok(Tip { heads, feed, clock })
    }
}

/// Refuses to sign when this machine's clock (`now`, Unix ms) is further
/// from the node's than the cluster's bound on stamps: ahead, the node
/// would refuse the events (and hold back everything after them on
/// every peer); behind, their times would lie in `maki log` and `--at`.
/// The node's clock was read during the round trip that brought it, a
/// moment ago: well within the bound's seconds.
fn check_clock(now: u64, node: &NodeClock, via: impl std::fmt::Display) -> anyhow::Result<()> {
    let off = now as i64 - node.now_millis as i64;
    if off.unsigned_abs() <= node.max_skew_millis {
        return Ok(());
    }
    let (secs, way) = (
        off.unsigned_abs() / 1000,
        if off > 0 { "ahead of" } else { "behind" },
    );
    bail!(
        "this machine's clock is {secs} s {way} the clock of {} (the cluster allows {} s, \
         `log.max_clock_skew`); nothing was signed. Set the wrong clock right (NTP: `timedatectl`, \
         `chronyc tracking`) and run the command again",
        via,
        node.max_skew_millis / 1000
    )
}

/// The operator's event a node sent (hex), verified.
fn feed_event(hex_event: &str, via: &Remote) -> anyhow::Result<Event> {
    let bytes = hex::decode(hex_event)
        .with_context(|| format!("{}: the node sent an event that is not hex", via.target()))?;
    Event::decode(&bytes).with_context(|| {
        format!(
            "{}: the node sent an invalid event of our feed",
            via.target()
        )
    })
}

/// What the outbox holds after the node's tip, then `events` not among it.
fn unsent(mut send: Vec<Event>, events: &[Event]) -> Vec<Event> {
    for e in events {
        if !send.iter().any(|s| s.id() == e.id()) {
            send.push(e.clone());
        }
    }
    send
}

/// Appends events to a node; duplicates are fine, any other refusal is not.
pub async fn append(remote: &Remote, events: &[Event]) -> anyhow::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let results = remote
        .ask(op::Append {
            events: hex_events(events),
        })
        .await?;
    if let Some(refused) = results.iter().find(|r| !r.is_accepted()) {
        bail!(
            "{}: the node refused an event: {}",
            remote.target(),
            refused.error.as_deref().unwrap_or("?")
        );
    }
    Ok(())
}

/// Copies every event `from` holds that `to` lacks, by version vectors.
///
/// Pipelined: while `to` verifies and stores one batch, `from` already
/// reads the next, asked for with the version vector `to` will have once
/// the batch is stored (advanced here from the batch's headers). When
/// `from` has nothing more for that vector, `to`'s own vector is asked
/// for, so anything it did not store is offered again; a batch of which
/// nothing is stored ends the copy with the refusals.
pub async fn copy_log(from: &Remote, to: &Remote) -> anyhow::Result<usize> {
    let missing = |vv: &VersionVector| op::Missing {
        vv: vv.clone(),
        max_bytes: 4 * 1024 * 1024,
    };
    let mut copied = 0;
    let mut vv = to.ask(op::GetVersionVector {}).await?;
    let mut batch = from.ask(missing(&vv)).await?;
    // Whether `vv` is what `to` should hold (advanced here), not what it
    // said it holds.
    let mut advanced = false;
    loop {
        if batch.is_empty() && !advanced {
            return Ok(copied);
        }
        if !batch.is_empty() {
            copied += batch.len();
            let (results, following) = match advance(&vv, &batch) {
                Some(next) => {
                    let (results, following) = tokio::join!(
                        to.ask(op::Append { events: batch }),
                        from.ask(missing(&next)),
                    );
                    vv = next;
                    advanced = true;
                    (results?, Some(following?))
                }
                None => (to.ask(op::Append { events: batch }).await?, None),
            };
            let stored = results
                .iter()
                .filter(|r| r.outcome == Outcome::Stored)
                .count();
            if stored == 0 {
                let why: Vec<&str> = results.iter().filter_map(|r| r.error.as_deref()).collect();
                bail!(
                    "{}: copying the log made no progress: {}",
                    to.target(),
                    why.join("; ")
                );
            }
            if let Some(following) = following {
                batch = following;
                continue;
            }
        }
        // Nothing more after the vector `to` should hold, or it could not
        // be advanced: ask what `to` does hold.
        vv = to.ask(op::GetVersionVector {}).await?;
        advanced = false;
        batch = from.ask(missing(&vv)).await?;
    }
}

/// `vv` with the events of `batch` (hex, as `missing` sends them) added,
/// read from their headers; `None` if one does not decode (then the
/// receiver is asked what it holds).
fn advance(vv: &VersionVector, batch: &[String]) -> Option<VersionVector> {
    let mut vv = vv.clone();
    for text in batch {
        let bytes = hex::decode(text).ok()?;
        let header = Event::peek_header(&bytes)?;
        vv.observe(header.author, header.seq, &EventId::of(&bytes));
    }
    Some(vv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maki_signs_only_with_a_clock_within_the_bound_of_the_nodes() {
        let node = NodeClock {
            now_millis: 1_000_000_000,
            max_skew_millis: 60_000,
        };
        for off in [0i64, 60_000, -60_000, 59_999] {
            check_clock((1_000_000_000 + off) as u64, &node, "vector").unwrap();
        }
        let ahead = check_clock(1_000_600_000, &node, "vector").unwrap_err();
        assert!(
            ahead
                .to_string()
                .contains("600 s ahead of the clock of vector"),
            "{ahead}"
        );
        assert!(ahead.to_string().contains("log.max_clock_skew"), "{ahead}");
        let behind = check_clock(999_000_000, &node, "vector").unwrap_err();
        assert!(behind.to_string().contains("1000 s behind"), "{behind}");
    }
}
