//! Group commit: appenders on many threads hand their events to one writer
//! thread, which takes everything queued while the previous fsync ran and
//! writes it as one batch with one fsync. Under load, the fsync cost is
//! shared; alone, an append costs exactly one fsync.
//!
//! A batch the store failed to write (a full disk, an I/O error) leaves the
//! store in doubt: fjall refuses every later write ("poisoned") until it is
//! opened again. So the writer answers that batch's appenders with the
//! failure and stops; its thread's result is the failure, which the daemon
//! waits on to restart and reopen the store (`node/src/daemon.rs`).

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use makiatto_events::Event;

use crate::ingest::Backend;
use crate::log::{AppendOutcome, Log};
use crate::store::StoreError;

type Reply = Sender<Result<(Vec<AppendOutcome>, Vec<Event>), String>>;

struct Request {
    events: Vec<Event>,
    reply: Reply,
}

/// A handle to the writer thread; cheap to clone.
#[derive(Clone)]
pub struct GroupCommitter {
    tx: Sender<Request>,
}

impl GroupCommitter {
    /// Starts the writer thread over a shared log. The thread ends when
    /// every handle is dropped (`Ok`), or at the first batch the store
    /// failed to write (that failure).
    pub fn start<B: Backend + Send + 'static>(
        log: Arc<Mutex<Log<B>>>,
    ) -> (Self, JoinHandle<Result<(), StoreError>>) {
        let (tx, rx) = mpsc::channel::<Request>();
        let handle = std::thread::Builder::new()
            .name("makiatto-commit".into())
            .spawn(move || writer(log, rx))
            .unwrap_or_else(|e| panic!("cannot start the log writer thread: {e}"));
        (Self { tx }, handle)
    }

    /// Appends verified events; returns once they are durable (or refused),
    /// with one outcome per event and every event stored by the batch that
    /// carried them (which may include other callers' events).
    pub fn append(&self, events: Vec<Event>) -> Result<(Vec<AppendOutcome>, Vec<Event>), String> {
        let (reply, answer) = mpsc::channel();
        self.tx
            .send(Request { events, reply })
            .map_err(|_| STOPPED.to_owned())?;
        answer.recv().map_err(|_| STOPPED.to_owned())?
    }
}

const STOPPED: &str = "the log writer stopped after the store failed to write; \
     the daemon restarts to reopen it (if the disk is full, free space)";

fn writer<B: Backend>(log: Arc<Mutex<Log<B>>>, rx: Receiver<Request>) -> Result<(), StoreError> {
    while let Ok(first) = rx.recv() {
        let mut requests = vec![first];
        requests.extend(rx.try_iter());
        let sizes: Vec<usize> = requests.iter().map(|r| r.events.len()).collect();
        let all: Vec<Event> = requests
            .iter_mut()
            .flat_map(|r| std::mem::take(&mut r.events))
            .collect();
        let result: Result<_, StoreError> = match log.lock() {
            Ok(mut log) => log.append(all),
            Err(_) => Err(StoreError::Corrupt(
                "the log lock was poisoned by a crash".into(),
            )),
        };
        match result {
            Ok(report) => {
                let mut outcomes = report.outcomes.into_iter();
                for (request, size) in requests.into_iter().zip(sizes) {
                    let mine: Vec<_> = outcomes.by_ref().take(size).collect();
                    let _ = request.reply.send(Ok((mine, report.stored.clone())));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for request in requests {
                    let _ = request.reply.send(Err(message.clone()));
                }
                return Err(e);
            }
        }
    }
    Ok(())
}
