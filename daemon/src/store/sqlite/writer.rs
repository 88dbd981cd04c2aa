//! The one writer thread: queued closures run in batches inside one transaction, each in its
//! own savepoint, and are answered only after the COMMIT (group commit).

use super::*;

pub(crate) type Completion = Box<dyn FnOnce(Result<()>) + Send>;

/// A queued write: run inside the batch transaction, or abandoned when no transaction could
/// be started.
pub(crate) trait WriteJob: Send {
    /// Runs the job; returns whether it succeeded and how to answer its caller after COMMIT.
    fn run(self: Box<Self>, conn: &Connection, seal: Option<&Sealer>) -> (bool, Completion);
    fn abandon(self: Box<Self>, error: StoreError);
    /// A new seal key for every secret: runs in a transaction of its own (see `writer_loop`).
    fn rekey(self: Box<Self>) -> std::result::Result<Rekey, Box<dyn WriteJob>>;
}

/// `Store::rekey` queued for the writer.
pub(crate) struct Rekey {
    pub(crate) new: Arc<Sealer>,
    pub(crate) reply: SyncSender<Result<usize>>,
}

impl WriteJob for Rekey {
    fn run(self: Box<Self>, _: &Connection, _: Option<&Sealer>) -> (bool, Completion) {
        // Never batched: writer_loop takes it out through `rekey` first.
        let reply = self.reply;
        (
            false,
            Box::new(move |_| {
                let _ = reply.send(Err(StoreError::Unavailable));
            }),
        )
    }
    fn abandon(self: Box<Self>, error: StoreError) {
        let _ = self.reply.send(Err(error));
    }
    fn rekey(self: Box<Self>) -> std::result::Result<Rekey, Box<dyn WriteJob>> {
        Ok(*self)
    }
}

pub(crate) struct Queued<F, R> {
    pub(crate) f: F,
    pub(crate) reply: SyncSender<Result<R>>,
}

impl<F, R> WriteJob for Queued<F, R>
where
    R: Send + 'static,
    F: FnOnce(&dyn Tx) -> Result<R> + Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection, seal: Option<&Sealer>) -> (bool, Completion) {
        let Queued { f, reply } = *self;
        let outcome = f(&SqliteTx(conn, seal));
        let ok = outcome.is_ok();
        (
            ok,
            Box::new(move |commit: Result<()>| {
                let _ = reply.send(commit.and(outcome));
            }),
        )
    }

    fn abandon(self: Box<Self>, error: StoreError) {
        let _ = self.reply.send(Err(error));
    }

    fn rekey(self: Box<Self>) -> std::result::Result<Rekey, Box<dyn WriteJob>> {
        Err(self)
    }
}

pub(crate) type Job = Box<dyn WriteJob>;

pub(crate) fn writer_loop(conn: Connection, rx: Receiver<Job>, seal: SealSlot) {
    // A rekey met while filling a batch waits for that batch to commit.
    let mut held: Option<Job> = None;
    loop {
        let first = match held.take() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        let first = match first.rekey() {
            Ok(rekey) => {
                let result = rekey_all(&conn, &seal, &rekey.new);
                let _ = rekey.reply.send(result);
                continue;
            }
            Err(job) => job,
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => match job.rekey() {
                    Ok(rekey) => {
                        held = Some(Box::new(rekey));
                        break;
                    }
                    Err(job) => batch.push(job),
                },
                Err(_) => break,
            }
        }
        let guard = seal.read().unwrap_or_else(|p| p.into_inner());
        let sealer = guard.as_deref();
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let msg = e.to_string();
            batch
                .into_iter()
                .for_each(|job| job.abandon(StoreError::Commit(msg.clone())));
            continue;
        }
        let mut completions = Vec::with_capacity(batch.len());
        let mut jobs = batch.into_iter();
        let mut broken = None;
        for job in jobs.by_ref() {
            if let Err(e) = conn.execute_batch("SAVEPOINT job") {
                job.abandon(StoreError::Commit(e.to_string()));
                broken = Some(e.to_string());
                break;
            }
            let (ok, complete) = job.run(&conn, sealer);
            if !ok {
                let _ = conn.execute_batch("ROLLBACK TO job");
            }
            let _ = conn.execute_batch("RELEASE job");
            completions.push(complete);
            // SQLite rolls the whole transaction back by itself on some errors (disk full,
            // I/O error, out of memory). Jobs run after that would autocommit one by one while
            // their callers hear "failed": stop here, so nothing is half done.
            if conn.is_autocommit() {
                broken = Some("the transaction was rolled back by the database".into());
                break;
            }
        }
        if let Some(why) = broken {
            jobs.for_each(|job| job.abandon(StoreError::Commit(why.clone())));
            let _ = conn.execute_batch("ROLLBACK");
            completions
                .into_iter()
                .for_each(|c| c(Err(StoreError::Commit(why.clone()))));
            continue;
        }
        match conn.execute_batch("COMMIT") {
            Ok(()) => completions.into_iter().for_each(|c| c(Ok(()))),
            Err(e) => {
                // Nothing of this batch is durable: every caller hears so, none hears success.
                let _ = conn.execute_batch("ROLLBACK");
                let msg = e.to_string();
                completions
                    .into_iter()
                    .for_each(|c| c(Err(StoreError::Commit(msg.clone()))));
            }
        }
    }
}
