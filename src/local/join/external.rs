//! The control-plane half of `join` inside the snap (`--datastore external`), after the
//! cluster granted it. k8s-dqlite hosts the member, so this is MicroK8s's `update_dqlite`
//! done safely: stop the API server and k8s-dqlite, move the backend directory aside,
//! install the cluster's files (as the embedded join does) and an `init.yaml` naming this
//! node's new member and the cluster's voters, start k8s-dqlite (which adds the member to
//! the cluster by itself), wait with a deadline until the cluster lists it, start the API
//! server. No fixed sleeps: the cluster is polled from the moment k8s-dqlite starts.
//!
//! All or nothing: any failure, or a member that is not listed in time, stops k8s-dqlite,
//! has the cluster drop the half-joined member if it took it, puts the old backend and files
//! back and starts the old single-node datastore again.
//!
//! Crash-safe as the embedded join (`control_plane`): the journal records the install, then
//! `Starting` before k8s-dqlite is started with `init.yaml` (from then on the cluster says
//! whether the join happened), then `Joined`. Writes: as `control_plane`, plus
//! `var/kubernetes/backend/init.yaml` (consumed by k8s-dqlite).

use std::net::SocketAddr;
use std::time::Duration;

use super::control_plane::{self, cluster_ca_key, fail, install_files, Progress, StepFailed};
use super::error::JoinError;
use crate::cluster::journal::JoinStep;
use crate::cluster::k8s_dqlite;
use crate::cluster::node::Node;
use crate::dqlite::external::ExternalMember;
use crate::dqlite::{Client, ClientTls, Options};
use crate::format::wire::JoinResponseV2;
use crate::sys::blocking::{blocking, TaskFailed};
use crate::sys::services::ServiceAction;

/// How long k8s-dqlite may take to start and have the cluster list its new member.
const MEMBER_WAIT: Duration = Duration::from_secs(60);
/// How often the cluster is asked while waiting.
const POLL: Duration = Duration::from_millis(100);

/// Makes this node a control plane of the cluster that sent `answer` (reached at
/// `contacted`), through k8s-dqlite. Returns the lines to show the user.
pub async fn join(
    node: &Node,
    answer: JoinResponseV2,
    contacted: SocketAddr,
    ticket: &crate::cluster::operation::Ticket,
    registration: &super::adopt::Registration,
) -> Result<Vec<String>, JoinError> {
    let external = node
        .external()
        .cloned()
        .ok_or_else(|| JoinError::NoMember("no external datastore is configured".into()))?;
    let ca_key = cluster_ca_key(&answer)?;
    let previous = external.own().map(|(_, address)| address);
    let address = k8s_dqlite::member_address(&answer.hostname_override, previous.as_deref());
    let mut progress = Progress::new(node, ticket, &answer, contacted);
    progress.registration = registration.clone();
    progress.begin().await?;

    let result = install(node, &external, &answer, &ca_key, &address, &mut progress).await;
    let mut messages = std::mem::take(&mut progress.messages);
    match result {
        Ok(()) => {}
        // The journal says how far it went; the next start settles it.
        Err(StepFailed::Stopping) => return Err(JoinError::Stopped),
        Err(StepFailed::Failed(cause)) => {
            // Decided: undone, whatever the cluster says by now.
            let _ = progress.record(JoinStep::Undoing).await;
            return Err(rollback(node, &external, &answer.voters, &address, cause).await);
        }
    }
    let _ = node.checkpoint("join-cp-joined").await;
    // kubelite was stopped for the join: it starts now.
    messages.extend(control_plane::conclude(node, contacted, ServiceAction::Start).await?);
    Ok(messages)
}

/// A client to the cluster at `seeds`, with the cluster certificate now in the backend.
fn cluster_client(node: &Node, seeds: &[String]) -> Result<Client, String> {
    let l = node.state().layout();
    let tls = ClientTls::load(&l.backend("cluster.crt"), &l.backend("cluster.key"))
        .map_err(|e| e.to_string())?;
    let options = Options {
        dial_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        call_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    Client::new(seeds.to_vec(), Some(tls), options).map_err(|e| e.to_string())
}

async fn install(
    node: &Node,
    external: &ExternalMember,
    answer: &JoinResponseV2,
    ca_key: &str,
    address: &str,
    progress: &mut Progress<'_>,
) -> Result<(), StepFailed> {
    let ticket = progress.ticket;
    ticket.step("stopping the API server and k8s-dqlite");
    let failure_domain = crate::local::reset::current_failure_domain(node.state());
    let node2 = node.clone();
    blocking(move || k8s_dqlite::stop(node2.services()).map_err(fail)).await?;

    ticket.step("replacing this node's datastore and certificates");
    let (state, files, bind) = (node.state().clone(), answer.clone(), node.settings().bind);
    let (ca_key, init_address) = (ca_key.to_string(), address.to_string());
    let registration = progress.registration.clone();
    blocking(move || {
        install_files(&state, bind, &files, &ca_key, failure_domain, &registration)?;
        k8s_dqlite::write_init(&state, &init_address, &files.voters).map_err(fail)
    })
    .await?;
    // The certificate changed under the cached client.
    external.forget();
    node.checkpoint("join-cp-installed").await?;

    // From here k8s-dqlite may add the member at any moment: the cluster has the answer.
    progress
        .record(JoinStep::Starting {
            address: address.to_string(),
        })
        .await?;
    node.checkpoint("join-cp-starting").await?;
    ticket.step("starting k8s-dqlite with the new member");
    let node2 = node.clone();
    blocking(move || {
        node2
            .services()
            .apply(ServiceAction::Start, k8s_dqlite::SERVICE)
            .map_err(|e| fail(format!("starting k8s-dqlite: {e}")))
    })
    .await?;
    node.checkpoint("join-cp-started").await?;

    ticket.step("waiting for the cluster to list this member");
    let client = cluster_client(node, &answer.voters).map_err(fail)?;
    let started = tokio::time::Instant::now();
    let mut last_error;
    let mut dots = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), client.cluster()).await {
            Ok(Ok(nodes)) if k8s_dqlite::listed_at(&nodes, address).is_some() => break,
            Ok(Ok(_)) => last_error = format!("the cluster does not list {address} yet"),
            Ok(Err(e)) => last_error = e.to_string(),
            Err(_) => last_error = "the cluster did not answer within 5s".into(),
        }
        let waited = started.elapsed();
        if waited > MEMBER_WAIT {
            return Err(fail(format!(
                "this node's new member ({address}) was not listed by the cluster within {}s ({last_error}); see k8s-dqlite's log",
                MEMBER_WAIT.as_secs()
            )));
        }
        // A dot a second, as MicroK8s prints while it waits.
        if waited.as_secs() > dots {
            dots = waited.as_secs();
            progress.messages.push(". ".into());
        }
        tokio::time::sleep(POLL).await;
    }
    progress.record(JoinStep::Joined).await?;
    tracing::info!(
        address,
        waited_ms = started.elapsed().as_millis() as u64,
        "the cluster lists this node's new member"
    );
    Ok(())
}

/// Undoes a join that failed after its first write: k8s-dqlite stops, the cluster drops the
/// half-joined member if it took it, the old backend and files come back, the old
/// single-node datastore and the API server start again.
async fn rollback(
    node: &Node,
    external: &ExternalMember,
    voters: &[String],
    address: &str,
    cause: String,
) -> JoinError {
    let mut failures = Vec::new();
    let node2 = node.clone();
    let stopped = blocking(move || {
        Ok::<_, TaskFailed>(
            node2
                .services()
                .apply(ServiceAction::Stop, k8s_dqlite::SERVICE)
                .map_err(|e| e.to_string()),
        )
    })
    .await;
    if let Ok(Err(e)) | Err(e) = stopped.map_err(|e| e.to_string()) {
        failures.push(format!("stopping k8s-dqlite: {e}"));
    }
    let mut stale_member = None;
    match cluster_client(node, voters) {
        Ok(client) => {
            if let Err(e) = k8s_dqlite::remove_if_listed(&client, address).await {
                tracing::warn!(error = %e, address, "could not make sure the cluster dropped the half-joined member");
                stale_member = Some(e);
            }
        }
        Err(e) => stale_member = Some(e),
    }
    let state = node.state().clone();
    match blocking(move || Ok::<_, TaskFailed>(control_plane::undo(&state))).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => failures.push(e),
        Err(e) => failures.push(e.to_string()),
    }
    external.forget();
    if failures.is_empty() {
        let node2 = node.clone();
        match blocking(move || Ok::<_, TaskFailed>(k8s_dqlite::start(node2.services()))).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(e),
            Err(e) => failures.push(e.to_string()),
        }
    }
    if let Err(e) = node.reload_serving_cert().await {
        failures.push(format!("reloading the :25000 certificate: {e}"));
    }
    let host = crate::util::addr::host_of(address).to_string();
    match (failures.is_empty(), stale_member) {
        (true, None) => JoinError::RolledBack {
            cause,
            restored: "This node was restored to its previous single-node cluster and k8s-dqlite runs it again.".into(),
        },
        (true, Some(e)) => JoinError::RollbackFailed {
            cause,
            restore_error: format!(
                "This node was restored to its previous single-node cluster, but the cluster may still list its new member at {address} ({e}); remove it there with 'remove-node --force {host}'."
            ),
        },
        (false, _) => JoinError::RollbackFailed {
            cause,
            restore_error: format!(
                "Restoring the previous state failed too ({}); the daemon tries again when it starts.",
                failures.join("; ")
            ),
        },
    }
}
