//! Events this node writes itself (ACME challenges and certificates,
//! reseals of secrets): signed on top of its own feed, once it may sign,
//! and appended here; the mesh hands them to the others.
//!
//! A node signs only once a peer confirmed its own feed's tip since it
//! started (`makiatto_core::replication::own_feed`): a node restored from
//! an old backup would otherwise fork its feed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::bail;
use makiatto_core::GroupCommitter;
use makiatto_core::replication::SignGate;
use makiatto_core::replication::own_feed::LEARN_WITHIN;
use makiatto_events::{Event, FeedWriter, Payload, SigningKey};

use crate::changes::Changes;
use crate::clock::now_millis;
use crate::control;
use crate::liveness::Liveness;
use crate::replica::Replica;

/// Signs and appends this node's own events.
pub struct Signer {
    replica: Arc<Mutex<Replica>>,
    committer: GroupCommitter,
    liveness: Liveness,
    /// Told of each append, so the mesh hands the events on.
    log: Changes,
    signing: SigningKey,
    /// Said in the log that it signs without a peer's word.
    unconfirmed_said: AtomicBool,
}

impl Signer {
    pub fn new(
        replica: Arc<Mutex<Replica>>,
        committer: GroupCommitter,
        liveness: Liveness,
        log: Changes,
        signing: SigningKey,
    ) -> Signer {
        Signer {
            replica,
            committer,
            liveness,
            log,
            signing,
            unconfirmed_said: AtomicBool::new(false),
        }
    }

    /// Whether this node may sign now: once a peer confirmed its feed's
    /// tip since it started, or it has no peer, or none answered within
    /// the wait (said once in the log).
    pub fn may_sign(&self) -> bool {
        match self.liveness.sign_gate() {
            SignGate::Learnt => true,
            SignGate::Waiting { .. } => false,
            SignGate::Unconfirmed => {
                if !self.unconfirmed_said.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        waited_secs = LEARN_WITHIN.as_secs(),
                        "no peer confirmed this node's own feed since it started; signing on what it holds \
                         (if its data directory was restored from an old backup, its feed forks)"
                    );
                }
                true
            }
        }
    }

    /// Signs `payloads` as this node, on top of its own feed, and appends
    /// them here; the mesh hands them to the others.
    pub async fn append(&self, payloads: Vec<Payload>) -> anyhow::Result<()> {
        if !self.may_sign() {
            bail!(
                "this node has not learnt its own feed's tip from a peer since it started; nothing is signed yet"
            );
        }
        let replica = self.replica.clone();
        let committer = self.committer.clone();
        let signing = self.signing.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let (last, parents) = {
                let r = replica
                    .lock()
                    .map_err(|_| anyhow::anyhow!("replica lock poisoned"))?;
                (
                    r.latest_of(&signing.public())?,
                    r.heads()
                        .iter()
                        .map(|h| (h.id, h.hlc()))
                        .collect::<Vec<_>>(),
                )
            };
            let mut writer = match last {
                Some(bytes) => FeedWriter::resume(signing, &Event::decode(&bytes)?),
                None => FeedWriter::new(signing),
            };
            let mut parents = parents;
            let mut raw = Vec::new();
            for p in payloads {
                let e = writer.write(p, &parents, now_millis())?;
                parents = vec![(e.id(), e.hlc())];
                raw.push(Ok(e.to_bytes().to_vec()));
            }
            let ingested = control::ingest(&replica, &committer, raw, control::Arrival::Replicated)
                .map_err(anyhow::Error::msg)?;
            if let Some(bad) = ingested.bad.first() {
                bail!("this node's own event was refused: {bad}");
            }
            Ok(())
        })
        .await??;
        self.log.appended();
        Ok(())
    }
}
