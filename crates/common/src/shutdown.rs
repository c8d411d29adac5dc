//! One shutdown path: a `Shutdown` handle that the process triggers on SIGTERM/SIGINT
//! (or a test triggers directly), and that every service's `run` awaits.

use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct Shutdown {
    tx: std::sync::Arc<watch::Sender<bool>>,
    rx: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        let (tx, rx) = watch::channel(false);
        Self { tx: std::sync::Arc::new(tx), rx }
    }

    /// Ask everything holding a clone of this handle to stop.
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once `trigger` was called (immediately if it already was).
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|v| *v).await;
    }

    /// Trigger on SIGTERM (what Docker sends) or SIGINT (Ctrl-C).
    pub fn trigger_on_signals(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            let ctrl_c = tokio::signal::ctrl_c();
            #[cfg(unix)]
            {
                let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for SIGTERM");
                        let _ = ctrl_c.await;
                        this.trigger();
                        return;
                    }
                };
                tokio::select! {
                    _ = ctrl_c => tracing::info!("SIGINT: shutting down"),
                    _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                }
            }
            #[cfg(not(unix))]
            {
                let _ = ctrl_c.await;
            }
            this.trigger();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_resolves_after_trigger() {
        let s = Shutdown::new();
        let c = s.clone();
        let h = tokio::spawn(async move { c.wait().await });
        s.trigger();
        h.await.unwrap();
        assert!(s.is_triggered());
        s.wait().await;
    }
}
