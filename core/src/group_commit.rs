//! Group commit: appenders on many threads hand their events to one writer
//! thread, which takes everything queued while the previous fsync ran and
//! writes it as one batch with one fsync. Under load, the fsync cost is
//! shared; alone, an append costs exactly one fsync.

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
    /// Starts the writer thread over a shared log.
    pub fn start<B: Backend + Send + 'static>(log: Arc<Mutex<Log<B>>>) -> (Self, JoinHandle<()>) {
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
            .map_err(|_| "the log writer has stopped".to_owned())?;
        answer
            .recv()
            .map_err(|_| "the log writer has stopped".to_owned())?
    }
}

fn writer<B: Backend>(log: Arc<Mutex<Log<B>>>, rx: Receiver<Request>) {
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
            }
        }
    }
}
