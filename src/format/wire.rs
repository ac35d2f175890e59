//! The :25000 wire types: every request and response body of the v1/v2 API, in MicroK8s's
//! field names, order, omissions and `null`s. The server decodes requests with Go's
//! leniency (`decode`) and encodes responses; the joining side (`local::join`) encodes
//! requests and decodes responses with the same types, so both ends agree by construction.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::decode::{decode, lenient_restart, lenient_worker, DecodeError};

/// The body of every refusal: `{"error": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    pub error: String,
}

/// `POST /cluster/api/v{1,2}.0/join`. v1 clients send `callback`; v2 clients do not.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct JoinRequest {
    #[serde(default)]
    pub token: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub port: String,
    /// MicroK8s accepts `true` or `"as-worker"` (see [`JoinRequest::is_worker`]).
    #[serde(default)]
    pub worker: Option<Value>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub callback: String,
    #[serde(default)]
    pub can_handle_x509_auth: bool,
    #[serde(default)]
    pub can_handle_custom_etcd: bool,
}

const JOIN_FIELDS: &[&str] = &[
    "token",
    "hostname",
    "port",
    "worker",
    "callback",
    "can_handle_x509_auth",
    "can_handle_custom_etcd",
];

impl JoinRequest {
    pub fn decode(body: &[u8]) -> Result<JoinRequest, DecodeError> {
        decode(body, JOIN_FIELDS)
    }

    pub fn is_worker(&self) -> bool {
        lenient_worker(&self.worker)
    }
}

/// The v2 join answer; field order, omission and `null`s as MicroK8s's Go structs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JoinResponseV2 {
    pub ca: String,
    pub callback_token: String,
    pub apiport: String,
    pub api_authz_mode: String,
    pub kubelet_args: String,
    pub hostname_override: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub voters: Vec<String>,
    pub service_account_key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub admin_token: String,
    pub ca_key: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster_cert: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster_key: String,
    pub control_plane_nodes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster_cidr: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub etcd_servers: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub etcd_ca: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub etcd_cert: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub etcd_key: String,
}

/// The v1 join answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JoinResponseV1 {
    pub ca: String,
    pub etcd: String,
    pub api_authn_mode: String,
    pub apiport: String,
    pub kubeproxy: String,
    pub kubelet: String,
    pub kubelet_args: String,
    pub hostname_override: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster_cidr: String,
}

/// `POST /cluster/api/v1.0/sign-cert`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SignCertRequest {
    #[serde(default)]
    pub token: String,
    /// The PEM certificate signing request.
    #[serde(default)]
    pub request: String,
}

impl SignCertRequest {
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        decode(body, &["token", "request"])
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignCertResponse {
    pub certificate: String,
}

/// `{"result": "ok"}`, the answer of configure and upgrade.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct ResultOk {
    pub result: String,
}

impl ResultOk {
    pub fn ok() -> Self {
        ResultOk {
            result: "ok".into(),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ServiceUpdate {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub arguments_update: Vec<BTreeMap<String, String>>,
    #[serde(default)]
    pub arguments_remove: Vec<String>,
    /// MicroK8s accepts `true` or `"yes"` (see [`ServiceUpdate::restarts`]).
    #[serde(default)]
    pub restart: Option<Value>,
}

impl ServiceUpdate {
    pub fn restarts(&self) -> bool {
        lenient_restart(&self.restart)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct AddonToggle {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub enable: bool,
    #[serde(default)]
    pub disable: bool,
}

/// `POST /cluster/api/v1.0/configure`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ConfigureRequest {
    #[serde(default)]
    pub callback: String,
    #[serde(default)]
    pub service: Vec<ServiceUpdate>,
    #[serde(default)]
    pub addon: Vec<AddonToggle>,
}

impl ConfigureRequest {
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        decode(body, &["callback", "service", "addon", "action_str"])
    }
}

/// `POST /cluster/api/v1.0/upgrade`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct UpgradeRequest {
    #[serde(default)]
    pub callback: String,
    #[serde(default)]
    pub upgrade: String,
    #[serde(default)]
    pub phase: String,
}

impl UpgradeRequest {
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        decode(body, &["callback", "upgrade", "phase"])
    }
}

/// `POST /cluster/api/v2.0/dqlite/remove`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct DqliteRemoveRequest {
    #[serde(default)]
    pub remove_endpoint: String,
}

impl DqliteRemoveRequest {
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        decode(body, &["remove_endpoint"])
            .map_err(|e| DecodeError(format!("Failed to unmarshal JSON: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_response_has_microk8s_nulls() {
        let resp = JoinResponseV2 {
            ca: "CA".into(),
            callback_token: "cb".into(),
            apiport: "16443".into(),
            api_authz_mode: "Node,RBAC".into(),
            kubelet_args: "k\n".into(),
            hostname_override: "10.10.10.12".into(),
            voters: vec![],
            service_account_key: String::new(),
            admin_token: String::new(),
            ca_key: None,
            cluster_cert: String::new(),
            cluster_key: String::new(),
            control_plane_nodes: Some(vec!["10.0.0.1".into(), "10.0.0.2".into()]),
            cluster_cidr: "10.1.0.0/16".into(),
            etcd_servers: String::new(),
            etcd_ca: String::new(),
            etcd_cert: String::new(),
            etcd_key: String::new(),
        };
        assert_eq!(
            serde_json::to_string(&resp).unwrap(),
            r#"{"ca":"CA","callback_token":"cb","apiport":"16443","api_authz_mode":"Node,RBAC","kubelet_args":"k\n","hostname_override":"10.10.10.12","service_account_key":"","ca_key":null,"control_plane_nodes":["10.0.0.1","10.0.0.2"],"cluster_cidr":"10.1.0.0/16"}"#
        );
    }

    #[test]
    fn a_joiners_request_is_what_microk8s_clients_send() {
        let req = JoinRequest {
            token: "t".into(),
            hostname: "h".into(),
            port: "25000".into(),
            worker: Some(Value::Bool(true)),
            callback: String::new(),
            can_handle_x509_auth: true,
            can_handle_custom_etcd: false,
        };
        let text = serde_json::to_string(&req).unwrap();
        assert_eq!(
            text,
            r#"{"token":"t","hostname":"h","port":"25000","worker":true,"can_handle_x509_auth":true,"can_handle_custom_etcd":false}"#
        );
        assert_eq!(JoinRequest::decode(text.as_bytes()).unwrap(), req);
        assert!(req.is_worker());
    }
}
