//! SIGHUP, the reload signal, for each part that reloads on it (the token
//! file, the TLS files, the rule files): every listener sees every signal.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// The SIGHUPs the process receives from now on.
pub struct Hangups(Option<Signal>);

impl Hangups {
    /// Starts listening; when the signal cannot be listened for, says so
    /// for `what` (which then reloads by its other means only) and
    /// [`Hangups::next`] never resolves.
    pub fn listen(what: &str) -> Hangups {
        match signal(SignalKind::hangup()) {
            Ok(hangups) => Hangups(Some(hangups)),
            Err(error) => {
                tracing::error!(%error, what, "SighupUnavailable: no reload on SIGHUP");
                Hangups(None)
            }
        }
    }

    /// Resolves at the next SIGHUP.
    pub async fn next(&mut self) {
        match &mut self.0 {
            Some(hangups) => {
                hangups.recv().await;
            }
            None => std::future::pending().await,
        }
    }
}
