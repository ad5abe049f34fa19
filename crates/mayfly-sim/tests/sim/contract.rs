//! Contract checks against GitHub's published descriptions in `testdata/github/schemas`: REST
//! responses against the OpenAPI 3.0 subset (converted to JSON Schema), webhook bodies and
//! headers against the webhooks subset (JSON Schema 2020-12).

use std::path::PathBuf;
use std::sync::OnceLock;

use jsonschema::Validator;
use mayfly_github::webhook::{signature_header, WebhookSecret};
use mayfly_sim::{Delivery, Exchange};
use serde_json::{json, Map, Value};

fn contract_dir() -> PathBuf {
    match std::env::var_os("MAYFLY_GITHUB_CONTRACT_DIR") {
        Some(dir) => PathBuf::from(dir).join("schemas"),
        None => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testdata/github/schemas"
        )),
    }
}

fn load(name: &str) -> Value {
    let path = contract_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn rest_spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| load("github-rest-subset.openapi.json"))
}

fn webhook_spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| load("github-webhooks-subset.schema.json"))
}

/// OpenAPI 3.0 → JSON Schema: `nullable: true` becomes `"null"` in `type` (and in `enum`), or an
/// `anyOf` with `{"type":"null"}` where the schema has no `type` of its own.
pub fn openapi_to_json_schema(schema: &Value) -> Value {
    match schema {
        Value::Array(items) => Value::Array(items.iter().map(openapi_to_json_schema).collect()),
        Value::Object(map) => {
            let mut out: Map<String, Value> = map
                .iter()
                .filter(|(k, _)| k.as_str() != "nullable")
                .map(|(k, v)| (k.clone(), openapi_to_json_schema(v)))
                .collect();
            if map.get("nullable") != Some(&Value::Bool(true)) {
                return Value::Object(out);
            }
            if let Some(Value::Array(values)) = out.get_mut("enum") {
                if !values.contains(&Value::Null) {
                    values.push(Value::Null);
                }
            }
            match out.get("type").cloned() {
                Some(Value::String(t)) => {
                    out.insert("type".into(), json!([t, "null"]));
                    Value::Object(out)
                }
                _ => json!({ "anyOf": [Value::Object(out), { "type": "null" }] }),
            }
        }
        other => other.clone(),
    }
}

fn validator(schema: &Value) -> Validator {
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(schema)
        .unwrap_or_else(|e| panic!("schema does not compile: {e}"))
}

fn errors(validator: &Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .take(10)
        .collect()
}

/// `<basic-error>`, as declared for e.g. GET /app/installations/{installation_id} 404.
fn basic_error_schema() -> Value {
    rest_spec()["paths"]["/app/installations/{installation_id}"]["get"]["responses"]["404"]
        ["content"]["application/json"]["schema"]
        .clone()
}

/// Checks one recorded REST exchange against the OpenAPI operation for its route and status.
pub fn check_exchange(exchange: &Exchange) {
    let what = format!(
        "{} {} -> {}",
        exchange.method, exchange.path, exchange.status
    );
    let header = |name: &str| {
        exchange
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    for name in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-used",
        "x-ratelimit-reset",
        "x-ratelimit-resource",
    ] {
        assert!(header(name).is_some(), "{what}: missing {name}");
    }
    let operation = exchange.route.as_ref().and_then(|route| {
        let op = &rest_spec()["paths"][route.as_str()][exchange.method.to_lowercase()];
        (!op.is_null()).then_some(op)
    });
    if exchange.route.is_some() && exchange.status < 300 {
        assert!(
            operation.is_some(),
            "{what}: route {:?} is not in the spec",
            exchange.route
        );
    }
    let declared = operation.map(|op| &op["responses"][exchange.status.to_string()]);
    if let Some(response) = declared.filter(|r| !r.is_null()) {
        if response.get("content").is_none() {
            assert!(
                exchange.body.is_empty(),
                "{what}: declared without a body, has one"
            );
            return;
        }
        let schema = openapi_to_json_schema(&response["content"]["application/json"]["schema"]);
        validate_body(&what, &schema, exchange, &header);
        return;
    }
    assert!(
        exchange.status >= 400,
        "{what}: a success status the operation does not declare"
    );
    // Undeclared error statuses (401 on most operations, 404 from unknown paths, injected 5xx
    // and rate limits) are checked against <basic-error>, the shape GitHub documents for them.
    validate_body(
        &what,
        &openapi_to_json_schema(&basic_error_schema()),
        exchange,
        &header,
    );
}

fn validate_body(
    what: &str,
    schema: &Value,
    exchange: &Exchange,
    header: &dyn Fn(&str) -> Option<String>,
) {
    assert_eq!(
        header("content-type").as_deref(),
        Some("application/json; charset=utf-8"),
        "{what}: content type"
    );
    let body: Value = serde_json::from_slice(&exchange.body)
        .unwrap_or_else(|e| panic!("{what}: body is not JSON: {e}"));
    let problems = errors(&validator(schema), &body);
    assert!(problems.is_empty(), "{what}: {problems:#?}\nbody: {body}");
}

/// Checks every recorded exchange; returns how many were checked.
pub fn check_exchanges(exchanges: &[Exchange]) -> usize {
    assert!(!exchanges.is_empty(), "nothing was recorded");
    for exchange in exchanges {
        check_exchange(exchange);
    }
    exchanges.len()
}

fn webhook_key(event: &str, action: Option<&str>) -> String {
    let mut key = event.replace('_', "-");
    if let Some(action) = action {
        key.push('-');
        key.push_str(&action.replace('_', "-"));
    }
    key
}

/// Checks a delivered webhook: the spec's required headers, the signature, and the body schema
/// for its event and action.
pub fn check_webhook(headers: &[(String, String)], body: &[u8], secret: &WebhookSecret) -> Value {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let json: Value = serde_json::from_slice(body).unwrap();
    let event = header("x-github-event").expect("X-GitHub-Event");
    let action = json.get("action").and_then(Value::as_str);
    let key = webhook_key(&event, action);
    let spec = &webhook_spec()["webhooks"][key.as_str()];
    assert!(!spec.is_null(), "no webhook schema for {key}");
    for required in spec["headers"].as_array().unwrap() {
        let name = required["name"].as_str().unwrap();
        assert!(header(name).is_some(), "{key}: missing header {name}");
    }
    assert!(header("user-agent")
        .unwrap()
        .starts_with("GitHub-Hookshot/"));
    assert_eq!(header("content-type").as_deref(), Some("application/json"));
    assert_eq!(
        header("x-github-hook-installation-target-type").as_deref(),
        Some("integration")
    );
    let guid = header("x-github-delivery").unwrap();
    let parsed = uuid::Uuid::parse_str(&guid).unwrap();
    assert_eq!(parsed.get_version_num(), 4, "delivery GUID is a v4 UUID");
    assert_eq!(
        header("x-hub-signature-256").unwrap(),
        signature_header(secret, body),
        "{key}: signature"
    );
    let problems = errors(&validator(&spec["schema"]), &json);
    assert!(problems.is_empty(), "{key}: {problems:#?}");
    json
}

/// Checks the logged (sent) deliveries the same way.
pub fn check_deliveries(deliveries: &[Delivery], secret: &WebhookSecret) {
    for d in deliveries {
        let json = check_webhook(&d.headers, &d.body, secret);
        assert_eq!(
            json.get("action").and_then(Value::as_str),
            d.action.as_deref()
        );
    }
}

#[test]
fn nullable_conversion_covers_typed_and_untyped_schemas() {
    let typed = openapi_to_json_schema(&json!({"type": "string", "nullable": true, "enum": ["a"]}));
    assert_eq!(
        typed,
        json!({"type": ["string", "null"], "enum": ["a", null]})
    );
    let untyped = openapi_to_json_schema(&json!({"nullable": true, "allOf": [{"type": "object"}]}));
    assert_eq!(
        untyped,
        json!({"anyOf": [{"allOf": [{"type": "object"}]}, {"type": "null"}]})
    );
}
