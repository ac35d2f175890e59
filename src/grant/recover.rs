//! The recovery calls another survivor of this cluster makes on this node
//! (`/cluster/api/v2.0/recover/<step>`, see `format::recovery`): each is signed with the
//! cluster's key and checked before anything else; then `cluster::recovery` does the step.

use crate::cluster::node::Node;
use crate::cluster::recovery::{self, RecoveryError};
use crate::format::recovery::{ReconfigureRequest, RunRequest};
use crate::grant::GrantError;

/// A recovery call as it arrived.
pub struct SignedCall<'a> {
    /// The step: the last part of the path.
    pub step: &'a str,
    /// The whole path, as signed.
    pub path: &'a str,
    pub proof: Option<&'a str>,
    pub body: &'a [u8],
}

/// The answer's body and whether it is JSON (else a bundle).
pub struct StepAnswer {
    pub body: Vec<u8>,
    pub json: bool,
}

impl From<RecoveryError> for GrantError {
    fn from(e: RecoveryError) -> Self {
        match e {
            RecoveryError::Unauthorized => GrantError::Unauthorized(e.to_string()),
            RecoveryError::Busy(_) | RecoveryError::NotPrepared(_) => {
                GrantError::Conflict(e.to_string())
            }
            RecoveryError::NoMember => GrantError::BadRequest(e.to_string()),
            RecoveryError::Failed(_) => GrantError::Refused(e.to_string()),
        }
    }
}

fn json<T: serde::Serialize>(value: &T) -> Result<StepAnswer, GrantError> {
    Ok(StepAnswer {
        body: serde_json::to_vec(value).map_err(|e| GrantError::Internal(e.to_string()))?,
        json: true,
    })
}

fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, GrantError> {
    serde_json::from_slice(body)
        .map_err(|e| GrantError::BadRequest(format!("Bad recovery request: {e}")))
}

/// Checks the call's proof, then runs its step. `install` carries the run in the query
/// (`?run=…&coordinator=…`) and the bundle as its body.
pub async fn recover_step(
    node: &Node,
    call: SignedCall<'_>,
    query: RunRequest,
) -> Result<StepAnswer, GrantError> {
    recovery::authorize(node, call.proof, "POST", call.path, call.body)?;
    match call.step {
        "survey" => json(&recovery::survey(node).await?),
        "progress" => json(&recovery::progress(node).await?),
        "prepare" => {
            let req: RunRequest = decode(call.body)?;
            json(&recovery::prepare(node, &req).await?)
        }
        "export" => Ok(StepAnswer {
            body: recovery::export(node, &decode(call.body)?).await?,
            json: false,
        }),
        "reconfigure" => {
            let req: ReconfigureRequest = decode(call.body)?;
            let run = RunRequest {
                run: req.run,
                coordinator: req.coordinator,
            };
            json(&recovery::reconfigure(node, &run, &req.members).await?)
        }
        "install" => json(&recovery::install(node, &query, call.body).await?),
        "start" => json(&recovery::start(node, &decode(call.body)?).await?),
        "finish" => json(&recovery::finish(node, &decode(call.body)?).await?),
        _ => Err(GrantError::BadRequest(format!(
            "No recovery step {:?}",
            call.step
        ))),
    }
}
