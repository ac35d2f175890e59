//! The control-plane endpoints as the Kubernetes API reports them: an EndpointSliceList for
//! service `default/kubernetes`, or the `default/kubernetes` Endpoints object. Pure: JSON in,
//! a sorted upstream list out.
//!
//! Rules (MicroK8s's, with its IPv6 bug fixed): the port is the one named `https`, else
//! 16443; IPv4 and IPv6 addresses are used (IPv6 bracketed in both APIs), FQDN slices are
//! skipped, empty or unparsable addresses are skipped. Unlike MicroK8s we also skip endpoints
//! explicitly marked not ready (`conditions.ready: false`, Endpoints `notReadyAddresses`) and
//! remove duplicates.

use std::net::IpAddr;

use serde::Deserialize;

use crate::format::traefik::Upstream;

/// The API server port when the object names none.
pub const DEFAULT_PORT: u16 = 16443;

#[derive(Debug, thiserror::Error)]
#[error("cannot decode the {what} response: {reason}")]
pub struct DecodeError {
    pub what: &'static str,
    pub reason: String,
}

#[derive(Deserialize)]
struct SliceList {
    #[serde(default)]
    items: Option<Vec<Slice>>,
}

#[derive(Deserialize)]
struct Slice {
    #[serde(rename = "addressType", default)]
    address_type: Option<String>,
    #[serde(default)]
    endpoints: Option<Vec<SliceEndpoint>>,
    #[serde(default)]
    ports: Option<Vec<Port>>,
}

#[derive(Deserialize)]
struct SliceEndpoint {
    #[serde(default)]
    addresses: Option<Vec<String>>,
    #[serde(default)]
    conditions: Option<Conditions>,
}

#[derive(Deserialize)]
struct Conditions {
    #[serde(default)]
    ready: Option<bool>,
}

#[derive(Deserialize)]
struct Port {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    port: Option<i64>,
}

#[derive(Deserialize)]
struct Endpoints {
    #[serde(default)]
    subsets: Option<Vec<Subset>>,
}

#[derive(Deserialize)]
struct Subset {
    #[serde(default)]
    addresses: Option<Vec<Address>>,
    #[serde(default)]
    ports: Option<Vec<Port>>,
}

#[derive(Deserialize)]
struct Address {
    #[serde(default)]
    ip: Option<String>,
}

fn https_port(ports: &Option<Vec<Port>>) -> u16 {
    ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("https"))
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .unwrap_or(DEFAULT_PORT)
}

fn upstream(ip: &str, port: u16) -> Option<Upstream> {
    let ip: IpAddr = ip.trim().parse().ok()?;
    Some(Upstream::from_parts(&ip.to_string(), port))
}

fn finish(mut list: Vec<Upstream>) -> Vec<Upstream> {
    list.sort();
    list.dedup();
    list
}

/// Upstreams from an `EndpointSliceList` JSON body.
pub fn from_endpoint_slices(body: &[u8]) -> Result<Vec<Upstream>, DecodeError> {
    let list: SliceList = serde_json::from_slice(body).map_err(|e| DecodeError {
        what: "EndpointSlice list",
        reason: e.to_string(),
    })?;
    let mut out = Vec::new();
    for slice in list.items.iter().flatten() {
        if !matches!(slice.address_type.as_deref(), Some("IPv4" | "IPv6")) {
            continue;
        }
        let port = https_port(&slice.ports);
        for endpoint in slice.endpoints.iter().flatten() {
            if endpoint.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            out.extend(
                endpoint
                    .addresses
                    .iter()
                    .flatten()
                    .filter_map(|a| upstream(a, port)),
            );
        }
    }
    Ok(finish(out))
}

/// Upstreams from an `Endpoints` JSON body (ready addresses only).
pub fn from_endpoints(body: &[u8]) -> Result<Vec<Upstream>, DecodeError> {
    let endpoints: Endpoints = serde_json::from_slice(body).map_err(|e| DecodeError {
        what: "Endpoints",
        reason: e.to_string(),
    })?;
    let mut out = Vec::new();
    for subset in endpoints.subsets.iter().flatten() {
        let port = https_port(&subset.ports);
        out.extend(
            subset
                .addresses
                .iter()
                .flatten()
                .filter_map(|a| a.ip.as_deref())
                .filter_map(|ip| upstream(ip, port)),
        );
    }
    Ok(finish(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: Vec<Upstream>) -> Vec<String> {
        list.into_iter().map(|u| u.to_string()).collect()
    }

    #[test]
    fn endpoints_nil_and_empty() {
        assert!(from_endpoints(b"{}").unwrap().is_empty());
        assert!(from_endpoints(br#"{"subsets":null}"#).unwrap().is_empty());
        assert!(from_endpoints(br#"{"subsets":[{}]}"#).unwrap().is_empty());
        assert!(from_endpoints(b"not json").is_err());
    }

    #[test]
    fn endpoints_subsets_ports_and_sorting() {
        // Upstream's conformance case: default port, per-subset https override, sorted output.
        let body = br#"{
          "kind":"Endpoints","metadata":{"name":"kubernetes","namespace":"default"},
          "subsets":[
            {"addresses":[{"ip":"3.3.3.3"},{"ip":"1.1.1.1"}],"ports":[{"name":"metrics","port":1}]},
            {"addresses":[{"ip":"2.2.2.2"}],"notReadyAddresses":[{"ip":"9.9.9.9"}],
             "ports":[{"name":"https","port":10000,"protocol":"TCP"}]}
          ]}"#;
        assert_eq!(
            strings(from_endpoints(body).unwrap()),
            vec!["1.1.1.1:16443", "2.2.2.2:10000", "3.3.3.3:16443"]
        );
    }

    #[test]
    fn endpoints_ipv6_is_bracketed() {
        let body = br#"{"subsets":[{"addresses":[{"ip":"fe80::e0b9:bfff:fe90:8d37"},{"ip":""},{"ip":"junk"}],
            "ports":[{"name":"https","port":16643}]}]}"#;
        assert_eq!(
            strings(from_endpoints(body).unwrap()),
            vec!["[fe80::e0b9:bfff:fe90:8d37]:16643"]
        );
    }

    #[test]
    fn slices_nil_and_empty() {
        assert!(from_endpoint_slices(b"{}").unwrap().is_empty());
        assert!(from_endpoint_slices(br#"{"items":null}"#)
            .unwrap()
            .is_empty());
        assert!(
            from_endpoint_slices(br#"{"items":[{"addressType":"IPv4","endpoints":null}]}"#)
                .unwrap()
                .is_empty()
        );
        assert!(from_endpoint_slices(b"[").is_err());
    }

    #[test]
    fn slices_multiple_with_port_override_and_sorting() {
        let body = br#"{"kind":"EndpointSliceList","apiVersion":"discovery.k8s.io/v1","items":[
          {"addressType":"IPv4","endpoints":[{"addresses":["3.3.3.3"]},{"addresses":["1.1.1.1"],"conditions":{"ready":true}}],
           "ports":[{"name":"https","port":16443,"protocol":"TCP"}]},
          {"addressType":"IPv4","endpoints":[{"addresses":["2.2.2.2",""]}],
           "ports":[{"name":"https","port":10000}]},
          {"addressType":"FQDN","endpoints":[{"addresses":["api.example.com"]}]}
        ]}"#;
        assert_eq!(
            strings(from_endpoint_slices(body).unwrap()),
            vec!["1.1.1.1:16443", "2.2.2.2:10000", "3.3.3.3:16443"]
        );
    }

    #[test]
    fn slices_ipv6_default_port_not_ready_and_duplicates() {
        let body = br#"{"items":[
          {"addressType":"IPv6","endpoints":[{"addresses":["fe80::e0b9:bfff:fe90:8d37"]}],
           "ports":[{"name":"https","port":16643}]},
          {"addressType":"IPv4","endpoints":[
             {"addresses":["10.0.0.1"]},
             {"addresses":["10.0.0.2"],"conditions":{"ready":false}},
             {"addresses":["10.0.0.1"],"conditions":{"ready":null}}]}
        ]}"#;
        assert_eq!(
            strings(from_endpoint_slices(body).unwrap()),
            vec!["10.0.0.1:16443", "[fe80::e0b9:bfff:fe90:8d37]:16643"]
        );
    }

    #[test]
    fn out_of_range_port_falls_back_to_default() {
        let body = br#"{"subsets":[{"addresses":[{"ip":"1.1.1.1"}],"ports":[{"name":"https","port":70000}]}]}"#;
        assert_eq!(
            strings(from_endpoints(body).unwrap()),
            vec!["1.1.1.1:16443"]
        );
    }
}
