//! Refreshing the upstream list from the Kubernetes API, as MicroK8s does: list the
//! EndpointSlices of service `default/kubernetes`, fall back to the `default/kubernetes`
//! Endpoints object, using the server, CA and client certificate of `--kubeconfig` (on a
//! worker that server is this proxy itself).
//!
//! Invariant: a failed or empty answer never replaces the current list; only a non-empty list
//! that differs from the current one does (then provider.yaml is rewritten, mode 0644).

use std::path::PathBuf;
use std::time::Duration;

use super::endpoints;
use super::pool::Pool;
use crate::clients::kubernetes::{ApiClient, KubeconfigError};
use crate::format::traefik::{render_provider, Upstream};

pub const SLICES_PATH: &str = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dkubernetes";
pub const ENDPOINTS_PATH: &str = "/api/v1/namespaces/default/endpoints/kubernetes";

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Kubeconfig(#[from] KubeconfigError),
    #[error("EndpointSlices: {slices}; Endpoints: {endpoints}")]
    Api { slices: String, endpoints: String },
}

/// What one refresh round produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Updated(Vec<Upstream>),
    Unchanged,
    Empty,
    Failed(String),
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Updated(_) => "updated",
            Outcome::Unchanged => "unchanged",
            Outcome::Empty => "empty",
            Outcome::Failed(_) => "failed",
        }
    }
}

/// The control-plane endpoints: EndpointSlices, else Endpoints.
pub async fn control_plane_endpoints(api: &ApiClient) -> Result<Vec<Upstream>, RefreshError> {
    let slices = match api.get(SLICES_PATH).await {
        Ok(body) => match endpoints::from_endpoint_slices(&body) {
            Ok(list) => return Ok(list),
            Err(e) => e.to_string(),
        },
        Err(e) => e,
    };
    tracing::debug!(error = %slices, "EndpointSlices unavailable, falling back to Endpoints");
    let endpoints = match api.get(ENDPOINTS_PATH).await {
        Ok(body) => match endpoints::from_endpoints(&body) {
            Ok(list) => return Ok(list),
            Err(e) => e.to_string(),
        },
        Err(e) => e,
    };
    Err(RefreshError::Api { slices, endpoints })
}

/// Compares a fetched list with the current one.
pub fn decide(current: &[Upstream], fetched: Result<Vec<Upstream>, String>) -> Outcome {
    match fetched {
        Err(e) => Outcome::Failed(e),
        Ok(list) if list.is_empty() => Outcome::Empty,
        Ok(list) if list == current => Outcome::Unchanged,
        Ok(list) => Outcome::Updated(list),
    }
}

/// What to log for an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Note {
    /// Log it (a change, or the first problem of a streak).
    Log,
    /// Problems are over: say so once.
    Recovered,
    /// Nothing new.
    Quiet,
}

/// Logs a failing or empty refresh once per streak instead of on every tick.
#[derive(Debug, Default)]
pub struct LogOnce {
    failing: Option<&'static str>,
}

impl LogOnce {
    pub fn note(&mut self, outcome: &Outcome) -> Note {
        match outcome {
            Outcome::Updated(_) => {
                self.failing = None;
                Note::Log
            }
            Outcome::Unchanged => match self.failing.take() {
                Some(_) => Note::Recovered,
                None => Note::Quiet,
            },
            Outcome::Empty | Outcome::Failed(_) => {
                let label = outcome.label();
                if self.failing.replace(label) == Some(label) {
                    Note::Quiet
                } else {
                    Note::Log
                }
            }
        }
    }
}

/// Settings of the refresh loop.
#[derive(Debug, Clone)]
pub struct Refresher {
    pub kubeconfig: PathBuf,
    pub provider_file: PathBuf,
    pub interval: Duration,
}

impl Refresher {
    /// Refreshes now and then every `interval`, forever.
    pub async fn run(self, pool: Pool) {
        let mut log = LogOnce::default();
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.once(&pool, &mut log).await;
        }
    }

    /// One round: fetch, decide, apply, log.
    pub async fn once(&self, pool: &Pool, log: &mut LogOnce) -> Outcome {
        let fetched = match ApiClient::from_kubeconfig(&self.kubeconfig) {
            Ok(client) => control_plane_endpoints(&client).await,
            Err(e) => Err(RefreshError::from(e)),
        };
        let outcome = decide(&pool.upstreams(), fetched.map_err(|e| e.to_string()));
        pool.count_refresh(outcome.label());
        let note = log.note(&outcome);
        match &outcome {
            Outcome::Updated(list) => {
                let shown: Vec<&str> = list.iter().map(Upstream::as_str).collect();
                tracing::info!(upstreams = ?shown, "updating control plane endpoints");
                let text = render_provider(list);
                let file = self.provider_file.clone();
                let saved = tokio::task::spawn_blocking(move || {
                    crate::state::write_atomic(&file, text.as_bytes(), crate::state::mode::PUBLIC)
                        .map_err(|e| e.to_string())
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
                if let Err(e) = saved {
                    tracing::warn!(error = %e, "cannot save the endpoint list; using it anyway");
                }
                pool.set_upstreams(list);
            }
            Outcome::Empty if note == Note::Log => tracing::warn!(
                "the API returned an empty list of control plane endpoints; keeping the current list"
            ),
            Outcome::Failed(e) if note == Note::Log => tracing::warn!(
                error = %e,
                "cannot refresh control plane endpoints; keeping the current list"
            ),
            Outcome::Unchanged if note == Note::Recovered => {
                tracing::info!("control plane endpoints refreshed again")
            }
            _ => {}
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ups(list: &[&str]) -> Vec<Upstream> {
        list.iter().map(|s| Upstream::parse(s).unwrap()).collect()
    }

    #[test]
    fn decide_keeps_the_list_on_empty_or_error() {
        let current = ups(&["1.1.1.1:16443"]);
        assert_eq!(decide(&current, Ok(vec![])), Outcome::Empty);
        assert_eq!(
            decide(&current, Err("boom".into())),
            Outcome::Failed("boom".into())
        );
        assert_eq!(decide(&current, Ok(current.clone())), Outcome::Unchanged);
        let new = ups(&["1.1.1.1:16443", "2.2.2.2:16443"]);
        assert_eq!(decide(&current, Ok(new.clone())), Outcome::Updated(new));
    }

    #[test]
    fn problems_are_logged_once_per_streak() {
        let mut log = LogOnce::default();
        let failed = Outcome::Failed("x".into());
        let failed2 = Outcome::Failed("y".into());
        assert_eq!(log.note(&Outcome::Unchanged), Note::Quiet);
        assert_eq!(log.note(&failed), Note::Log);
        assert_eq!(log.note(&failed2), Note::Quiet);
        assert_eq!(log.note(&Outcome::Empty), Note::Log);
        assert_eq!(log.note(&Outcome::Empty), Note::Quiet);
        assert_eq!(log.note(&Outcome::Unchanged), Note::Recovered);
        assert_eq!(log.note(&Outcome::Unchanged), Note::Quiet);
        assert_eq!(log.note(&failed), Note::Log);
        assert_eq!(log.note(&Outcome::Updated(vec![])), Note::Log);
        assert_eq!(log.note(&failed), Note::Log);
    }
}
