//! The HTTP guard as an OAuth 2.1 resource server: JWT access tokens from a
//! real (test) issuer, its keys served as a JWKS over HTTP; RFC 9728
//! metadata; 401 and 403 challenges; scopes per tool.

use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use axum::Router;
use axum::routing::get;
use jetsonmind_core::auth::{self, AccessLevel, Auth, Gatekeeper, KeyStore};
use jetsonmind_core::config::{AuthConfig, HttpConfig, McpConfig, OAuthConfig};
use jetsonmind_core::connections::Connections;
use jetsonmind_core::rmcp::model::CallToolResult;
use jetsonmind_core::serve::{bind, mcp_routes, serve_http, with_limits};
use jetsonmind_core::{UnitServer, tool_from};
use jetsonmind_testkit::FakeUnit;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, get_current_timestamp};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[derive(schemars::JsonSchema, serde::Deserialize)]
#[allow(dead_code)]
struct Empty {}

fn signing_key() -> EncodingKey {
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .unwrap();
    EncodingKey::from_ec_der(pkcs8.as_ref())
}

fn mint(key: &EncodingKey, claims: Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    header.typ = Some("at+jwt".into());
    encode(&header, &claims, key).unwrap()
}

struct Setup {
    url: String,
    issuer: String,
    key: EncodingKey,
    shutdown: CancellationToken,
}

async fn setup() -> Setup {
    let key = signing_key();
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let jwks = JwkSet { keys: vec![jwk] };
    let shutdown = CancellationToken::new();

    let (issuer_listener, issuer_addr) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let issuer = format!("http://{issuer_addr}");
    let jwks_route = Router::new().route(
        "/jwks",
        get(move || {
            let jwks = jwks.clone();
            async move { axum::Json(jwks) }
        }),
    );
    tokio::spawn(serve_http(
        issuer_listener,
        jwks_route,
        shutdown.clone(),
        Default::default(),
    ));

    let (listener, addr) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let url = format!("http://{addr}/mcp");
    let config = AuthConfig {
        required: true,
        oauth: Some(OAuthConfig {
            issuer: issuer.clone(),
            jwks_url: format!("{issuer}/jwks"),
            audience: url.clone(),
            authorization_servers: Vec::new(),
            jwks_refresh_secs: 300,
            leeway_secs: 0,
        }),
    };
    let data = tempfile::tempdir().unwrap();
    let keys = Arc::new(KeyStore::open(data.path()));
    let auth = Arc::new(Auth::new(&config, keys, Some(addr)).unwrap());
    let unit = FakeUnit::named("guarded")
        .tool_of::<Empty>("echo", "anyone with tools:*")
        .tool(AccessLevel::Admin.mark(tool_from::<Empty>("scale_cluster", "admin only")))
        .answers(
            |call| async move { Ok(CallToolResult::structured(json!({ "called": call.name }))) },
        )
        .build();
    let http = HttpConfig::default();
    let metadata_routes = auth::metadata_routes(&auth);
    let routes = mcp_routes(
        UnitServer::new(unit.clone(), McpConfig::default()),
        &http,
        shutdown.clone(),
    )
    .merge(metadata_routes);
    let connections = Arc::new(Connections::default());
    let gate = Arc::new(Gatekeeper::new(
        auth,
        &http,
        connections.clone(),
        auth::resolver(unit),
    ));
    let router = auth::guarded(with_limits(routes, &http), gate);
    tokio::spawn(serve_http(listener, router, shutdown.clone(), connections));
    Setup {
        url,
        issuer,
        key,
        shutdown,
    }
}

async fn post(url: &str, token: Option<&str>, tool: &str) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": tool, "arguments": {}}}));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

fn challenge(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn oauth_tokens_are_checked_against_the_issuers_keys_audience_and_scopes() {
    let s = setup().await;
    let now = get_current_timestamp();
    let claims = |extra: Value| {
        let mut base = json!({"iss": s.issuer, "aud": s.url, "sub": "alice", "exp": now + 300});
        base.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        base
    };

    let metadata_url = s
        .url
        .replace("/mcp", "/.well-known/oauth-protected-resource/mcp");
    let metadata: Value = reqwest::get(&metadata_url)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["resource"], s.url);
    assert_eq!(metadata["authorization_servers"], json!([s.issuer]));
    assert_eq!(metadata["bearer_methods_supported"], json!(["header"]));

    let anonymous = post(&s.url, None, "echo").await;
    assert_eq!(anonymous.status(), 401);
    let header = challenge(&anonymous);
    assert!(
        header.starts_with("Bearer ")
            && header.contains(&format!("resource_metadata=\"{metadata_url}\"")),
        "{header}"
    );
    assert!(
        !header.contains("error="),
        "no error code without credentials: {header}"
    );

    let good = mint(&s.key, claims(json!({"scope": "tools:*"})));
    let ok = post(&s.url, Some(&good), "echo").await;
    assert_eq!(ok.status(), 200);
    let body: Value = ok.json().await.unwrap();
    assert_eq!(body["result"]["structuredContent"]["called"], "echo");

    let forbidden = post(&s.url, Some(&good), "scale_cluster").await;
    assert_eq!(forbidden.status(), 403);
    let header = challenge(&forbidden);
    assert!(
        header.contains("error=\"insufficient_scope\"")
            && header.contains("scope=\"tools:scale_cluster\""),
        "{header}"
    );

    let admin = mint(&s.key, claims(json!({"scp": ["admin"]})));
    assert_eq!(
        post(&s.url, Some(&admin), "scale_cluster").await.status(),
        200
    );

    let refused = [
        (
            "token expired",
            mint(&s.key, claims(json!({"exp": now - 60}))),
        ),
        (
            "another audience",
            mint(&s.key, claims(json!({"aud": "http://elsewhere/mcp"}))),
        ),
        (
            "another issuer",
            mint(&s.key, claims(json!({"iss": "http://evil"}))),
        ),
        ("signature", mint(&signing_key(), claims(json!({})))),
        ("malformed", "not.a.jwt".to_string()),
    ];
    for (why, token) in refused {
        let response = post(&s.url, Some(&token), "echo").await;
        assert_eq!(response.status(), 401, "{why}");
        let header = challenge(&response);
        assert!(
            header.contains("error=\"invalid_token\"") && header.contains(why),
            "{why}: {header}"
        );
    }
    s.shutdown.cancel();
}
