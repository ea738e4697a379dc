//! SIGTERM and SIGINT, and the deadline they start: no new backup begins
//! after the signal, and a running one gets `--shutdown-timeout` to finish.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::lock::lock;

pub struct Shutdown {
    pub token: CancellationToken,
    signalled: Arc<Mutex<Option<Instant>>>,
}

impl Shutdown {
    pub fn listen() -> Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("listen for SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("listen for SIGINT")?;
        let token = CancellationToken::new();
        let signalled = Arc::new(Mutex::new(None));
        let (t, at) = (token.clone(), Arc::clone(&signalled));
        tokio::spawn(async move {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            *lock(&at) = Some(Instant::now());
            tracing::info!("{name}: stopping; no new backups will start");
            t.cancel();
        });
        Ok(Shutdown { token, signalled })
    }

    pub fn requested(&self) -> bool {
        self.token.is_cancelled()
    }

    /// When a running backup must be done: `budget` after the signal, or as
    /// long after it as the clock can tell (a budget the command line would refuse).
    pub fn deadline(&self, budget: Duration) -> Instant {
        let signalled = *lock(&self.signalled);
        let from = signalled.unwrap_or_else(Instant::now);
        from.checked_add(budget)
            .or_else(|| from.checked_add(crate::schedule::MAX_WAIT.max))
            .unwrap_or(from)
    }
}
