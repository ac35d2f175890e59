//! JSON request decoding with Go's `encoding/json` leniency, which MicroK8s clients rely on:
//! object keys match field names case-insensitively (exact match preferred), unknown keys are
//! ignored, `null` for the whole body or a field means "zero value".

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Why a request body could not be decoded; the text is for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

/// Decodes `body` into `T` whose JSON field names are `fields`.
pub fn decode<T: DeserializeOwned>(body: &[u8], fields: &[&str]) -> Result<T, DecodeError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(DecodeError("Unexpected end of JSON input".into()));
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| DecodeError(format!("Invalid JSON: {e}")))?;
    let object = match value {
        Value::Null => Map::new(),
        Value::Object(map) => normalise(map, fields),
        other => {
            return Err(DecodeError(format!(
                "Json: cannot unmarshal {} into a request object",
                kind(&other)
            )))
        }
    };
    serde_json::from_value(Value::Object(object)).map_err(|e| DecodeError(format!("Json: {e}")))
}

fn normalise(map: Map<String, Value>, fields: &[&str]) -> Map<String, Value> {
    let mut out = Map::new();
    // Exact matches win over case-insensitive ones, whatever their order in the body.
    let (exact, other): (Vec<_>, Vec<_>) = map
        .into_iter()
        .partition(|(k, _)| fields.contains(&k.as_str()));
    for (key, value) in other {
        if let Some(field) = fields.iter().find(|f| f.eq_ignore_ascii_case(&key)) {
            if !value.is_null() {
                out.insert(field.to_string(), value);
            }
        }
    }
    for (key, value) in exact {
        if value.is_null() {
            out.remove(&key);
        } else {
            out.insert(key, value);
        }
    }
    out
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// MicroK8s's lenient v2 `worker`: true iff the raw value is `true` or `"as-worker"`.
pub fn lenient_worker(v: &Option<Value>) -> bool {
    matches!(v, Some(Value::Bool(true))) || matches!(v, Some(Value::String(s)) if s == "as-worker")
}

/// MicroK8s's lenient v1 `restart`: true iff the raw value is `true` or `"yes"`.
pub fn lenient_restart(v: &Option<Value>) -> bool {
    matches!(v, Some(Value::Bool(true))) || matches!(v, Some(Value::String(s)) if s == "yes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, Default)]
    struct Req {
        #[serde(default)]
        token: String,
        #[serde(default)]
        can_handle_x509_auth: bool,
        #[serde(default)]
        worker: Option<Value>,
    }
    const F: &[&str] = &["token", "can_handle_x509_auth", "worker"];

    #[test]
    fn keys_are_case_insensitive_and_unknown_keys_ignored() {
        let r: Req = decode(br#"{"TOKEN":"t","Can_Handle_X509_Auth":true,"x":1}"#, F).unwrap();
        assert_eq!(r.token, "t");
        assert!(r.can_handle_x509_auth);
        let r: Req = decode(br#"{"Token":"a","token":"b"}"#, F).unwrap();
        assert_eq!(r.token, "b", "exact match wins");
    }

    #[test]
    fn null_body_and_null_fields_are_zero() {
        let r: Req = decode(b"null", F).unwrap();
        assert_eq!(r.token, "");
        let r: Req = decode(br#"{"token":null}"#, F).unwrap();
        assert_eq!(r.token, "");
    }

    #[test]
    fn errors() {
        assert!(
            matches!(decode::<Req>(b"", F), Err(DecodeError(m)) if m == "Unexpected end of JSON input")
        );
        assert!(decode::<Req>(b"{", F).is_err());
        assert!(decode::<Req>(b"{} x", F).is_err());
        assert!(decode::<Req>(br#"{"token":5}"#, F).is_err());
        assert!(decode::<Req>(br#"{"can_handle_x509_auth":"true"}"#, F).is_err());
        assert!(decode::<Req>(b"[1]", F).is_err());
    }

    #[test]
    fn worker_decoding() {
        let cases = [
            ("true", true),
            ("false", false),
            ("null", false),
            ("\"as-worker\"", true),
            ("\"as-controlplane\"", false),
            ("1", false),
            ("\"true\"", false),
        ];
        for (raw, want) in cases {
            let r: Req = decode(format!(r#"{{"worker":{raw}}}"#).as_bytes(), F).unwrap();
            assert_eq!(lenient_worker(&r.worker), want, "{raw}");
        }
        assert!(lenient_restart(&Some(Value::String("yes".into()))));
        assert!(!lenient_restart(&Some(Value::String("no".into()))));
    }
}
