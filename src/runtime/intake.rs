//! Group commit for the inbox: concurrent webhook requests hand their
//! delivery to one writer task, which commits everything waiting in one
//! transaction and answers each request with its own result. One commit per
//! delivery caps intake at the disk's sync rate; one per group does not.

use std::sync::Arc;

use tokio::sync::{Notify, mpsc, oneshot};

use crate::store::{NewDelivery, Store};

/// The most deliveries committed together.
const MAX_GROUP: usize = 512;
/// Requests waiting for the writer before new ones wait for room.
const QUEUE: usize = 8192;

type Reply = oneshot::Sender<Result<bool, String>>;

#[derive(Clone)]
pub struct InboxWriter {
    tx: mpsc::Sender<(NewDelivery, Reply)>,
}

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("the inbox could not be written: {0}")]
    Store(String),
    #[error("convoy is shutting down")]
    Closed,
}

impl InboxWriter {
    /// Starts the writer task. `wake` is notified after each commit that
    /// stored something new, so the worker starts at once.
    pub fn spawn(store: Arc<dyn Store>, wake: Arc<Notify>) -> InboxWriter {
        let (tx, mut rx) = mpsc::channel::<(NewDelivery, Reply)>(QUEUE);
        tokio::spawn(async move {
            let mut group = Vec::with_capacity(MAX_GROUP);
            while rx.recv_many(&mut group, MAX_GROUP).await > 0 {
                let (deliveries, replies): (Vec<NewDelivery>, Vec<Reply>) =
                    std::mem::take(&mut group).into_iter().unzip();
                match store.insert_deliveries(&deliveries).await {
                    Ok(fresh) => {
                        if fresh.iter().any(|f| *f) {
                            wake.notify_one();
                        }
                        for (reply, is_new) in replies.into_iter().zip(fresh) {
                            let _ = reply.send(Ok(is_new));
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, count = deliveries.len(), "writing deliveries to the inbox failed");
                        for reply in replies {
                            let _ = reply.send(Err(e.to_string()));
                        }
                    }
                }
            }
        });
        InboxWriter { tx }
    }

    /// Stores the delivery; `Ok(true)` when new, `Ok(false)` when its id was
    /// seen before. Returns only once the delivery is committed.
    pub async fn write(&self, delivery: NewDelivery) -> Result<bool, IntakeError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((delivery, reply))
            .await
            .map_err(|_| IntakeError::Closed)?;
        answer
            .await
            .map_err(|_| IntakeError::Closed)?
            .map_err(IntakeError::Store)
    }
}
