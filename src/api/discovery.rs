//! Authorization server metadata (RFC 8414), also served as OpenID Connect discovery: what a
//! library given only the issuer URL reads to find the token endpoint and the keys.

use axum::{
    Router,
    http::{HeaderValue, StatusCode, header},
    response::Response,
    routing::get,
};

use crate::error::answers::oauth_json as json;

/// How long the metadata may be cached: it changes only with the issuer, at a restart.
const MAX_AGE: &str = "public, max-age=3600";

/// The paths of the metadata for `issuer` (RFC 8414 §3.1: the well-known name goes between the
/// host and an issuer's path, `/.well-known/oauth-authorization-server/iam` for
/// `https://example.com/iam`), the same without the path for a proxy that strips its prefix,
/// and OpenID Connect's name.
pub fn paths(issuer: &str) -> Vec<String> {
    let path = url::Url::parse(issuer).map(|url| url.path().trim_end_matches('/').to_owned()).unwrap_or_default();
    let mut paths =
        vec!["/.well-known/oauth-authorization-server".to_owned(), "/.well-known/openid-configuration".to_owned()];
    if !path.is_empty() {
        paths.push(format!("/.well-known/oauth-authorization-server{path}"));
    }
    paths
}

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
    })
}

/// The routes of the metadata of `issuer`.
pub fn routes<S: Clone + Send + Sync + 'static>(issuer: &str) -> Router<S> {
    let body = metadata(issuer);
    paths(issuer).into_iter().fold(Router::new(), |router, path| {
        let body = body.clone();
        router.route(&path, get(move || async move { cacheable(json(StatusCode::OK, &body)) }))
    })
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
            paths("https://example.com/iam/"),
            [
                "/.well-known/oauth-authorization-server",
                "/.well-known/openid-configuration",
                "/.well-known/oauth-authorization-server/iam"
            ]
        );
        assert_eq!(paths("http://localhost").len(), 2);
        let document = metadata("https://example.com/iam/");
        assert_eq!(document["issuer"], "https://example.com/iam/");
        assert_eq!(document["token_endpoint"], "https://example.com/iam/auth/v1/token");
    }
}
