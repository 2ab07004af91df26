//! Authorization server metadata (RFC 8414), also served as OpenID Connect discovery: what a
//! library given only the issuer URL reads to find the token endpoint and the keys.

use std::sync::Arc;

use axum::{
    Router,
    http::{HeaderValue, StatusCode, Uri, header},
    response::Response,
    routing::get,
};

use crate::error::answers::oauth_json as json;

/// RFC 8414's well-known name, and OpenID Connect's.
const OAUTH_METADATA: &str = "/.well-known/oauth-authorization-server";
const OPENID_CONFIGURATION: &str = "/.well-known/openid-configuration";

/// How long the metadata may be cached: it changes only with the issuer, at a restart.
const MAX_AGE: &str = "public, max-age=3600";

/// The metadata document of `issuer`.
pub fn metadata(issuer: &str) -> serde_json::Value {
    let base = issuer.trim_end_matches('/');
    serde_json::json!({
        "issuer": issuer,
        "token_endpoint": format!("{base}/auth/v1/token"),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "introspection_endpoint": format!("{base}/auth/v1/introspect"),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        // Ed25519 under both names: RFC 8037's and RFC 9864's fully specified one, which
        // oauth4webapi (and so openid-client) signs with.
        "token_endpoint_auth_signing_alg_values_supported": ["EdDSA", "Ed25519"],
        // The caller of introspection authenticates with a bearer token of its own (RFC 7662
        // §2.1); no registered method names that.
        "introspection_endpoint_auth_methods_supported": ["bearer"],
        // No authorization endpoint, so no response type; present for validators that require
        // the member.
        "response_types_supported": [],
        // Members OpenID Connect Discovery requires. No ID token is issued; libraries that read
        // the list as the algorithms of every token this issuer signs find the access tokens'.
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["EdDSA"],
    })
}

/// Where RFC 8414 §3.1 puts the metadata of an issuer with a path: the well-known name between
/// the host and the path (`/.well-known/oauth-authorization-server/iam` for
/// `https://example.com/iam`); `None` for an issuer without one.
fn inserted_path(issuer: &str) -> Option<String> {
    let url = url::Url::parse(issuer).ok()?;
    let path = url.path().trim_end_matches('/');
    (!path.is_empty()).then(|| format!("{OAUTH_METADATA}{path}"))
}

/// The routes of the metadata of `issuer`: under both well-known names as they are (where a
/// proxy that strips the issuer's path prefix delivers them), and where RFC 8414 §3.1 puts it
/// for an issuer with a path. That path is compared as the request wrote it, not made a route
/// template, so no issuer path is read as a pattern.
pub fn routes<S: Clone + Send + Sync + 'static>(issuer: &str) -> Router<S> {
    let document = Arc::new(metadata(issuer));
    let inserted: Arc<Option<String>> = Arc::new(inserted_path(issuer));
    let plain = {
        let document = Arc::clone(&document);
        move || {
            let document = Arc::clone(&document);
            async move { cacheable(json(StatusCode::OK, &document)) }
        }
    };
    let below = move |uri: Uri| {
        let (document, inserted) = (Arc::clone(&document), Arc::clone(&inserted));
        async move {
            if inserted.as_deref() == Some(uri.path()) {
                cacheable(json(StatusCode::OK, &document))
            } else {
                json(StatusCode::NOT_FOUND, &serde_json::json!({ "error": "not_found" }))
            }
        }
    };
    Router::new()
        .route(OAUTH_METADATA, get(plain.clone()))
        .route(OPENID_CONFIGURATION, get(plain))
        .route(&format!("{OAUTH_METADATA}/{{*path}}"), get(below))
}

/// `response`, which any cache may keep for [`MAX_AGE`].
fn cacheable(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.remove(header::PRAGMA);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(MAX_AGE));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issuer_with_a_path_has_its_metadata_after_the_well_known_name() {
        assert_eq!(
            inserted_path("https://example.com/iam/").as_deref(),
            Some("/.well-known/oauth-authorization-server/iam")
        );
        assert_eq!(
            inserted_path("https://example.com/:x/{y}").as_deref(),
            Some("/.well-known/oauth-authorization-server/:x/%7By%7D")
        );
        assert_eq!(inserted_path("http://localhost"), None);
        let document = metadata("https://example.com/iam/");
        assert_eq!(document["issuer"], "https://example.com/iam/");
        assert_eq!(document["token_endpoint"], "https://example.com/iam/auth/v1/token");
    }
}
