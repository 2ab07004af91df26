//! The bare baseline: a tonic server for the same services as personal-clients, and its
//! forward authorization at `/auth/v1/check` (a route added to tonic's own router), with no
//! auth, no storage and no logic, answering with canned messages sized like the service's answers.
//! What it reaches on a machine is what tonic itself can do there: the ceiling the service's
//! figures are stated against.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::task::{Context, Poll};

use prost_types::Timestamp;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http::{self, HeaderMap};
use tonic::service::{AxumBody, Routes};
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::Error;
use crate::pb::c1::api::auth::v1::token_service_server::{TokenService, TokenServiceServer};
use crate::pb::c1::api::auth::v1::{TokenRequest, TokenResponse};
use crate::pb::c1::api::iam::v1::personal_client_service_server::{PersonalClientService, PersonalClientServiceServer};
use crate::pb::c1::api::iam::v1::*;
use crate::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction};
use crate::pb::envoy::service::auth::v3::authorization_server::{Authorization, AuthorizationServer};
use crate::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse, OkHttpResponse, check_response};
use crate::pb::google::rpc;

/// Name of the baseline's threads, by which its CPU time is told apart from the generator's.
pub const THREADS: &str = "pcl-baseline";

const USER: &str = "0196f1c2-7b3f-7e58-a6c0-2f9d1b8e5a34";

/// A live client with every field set that the service sets (`deleted_at` aside).
fn client(n: i64) -> PersonalClient {
    let ts = |seconds: i64| Some(Timestamp { seconds, nanos: 123_456_000 });
    PersonalClient {
        id: format!("0196f1c3-5d4a-7f7e-9a31-6c2d8e1f{n:04x}"),
        client_id: format!("brave-otter-{:05}@localhost/pcc", 4217 + n),
        display_name: format!("deploy key {n} for the build farm"),
        user_id: USER.into(),
        allow_source_cidr: vec!["10.20.0.0/16".into(), "2001:db8:42::/48".into()],
        scoped_roles: vec!["iam.viewer".into(), "storage.object-admin".into()],
        expires_time: ts(1_798_761_600),
        last_used_at: ts(1_764_302_411),
        created_at: ts(1_761_955_200 + n),
        updated_at: ts(1_762_041_600 + n),
        deleted_at: None,
    }
}

/// The canned answers.
#[derive(Clone)]
struct Baseline {
    get: PersonalClientServiceGetResponse,
    list: PersonalClientServiceListResponse,
    create: PersonalClientServiceCreateResponse,
    token: TokenResponse,
    check: CheckResponse,
}

fn set(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue { key: key.into(), value: value.into(), ..Default::default() }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        ..Default::default()
    }
}

impl Baseline {
    fn new() -> Self {
        let secret_jwk = r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"}"#;
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        // A client's access token, as the service signs it: header, claims, 64-byte signature.
        let header = r#"{"alg":"EdDSA","typ":"JWT","kid":"01a25137-0d89-70d0-b901-01fbec3f65e0"}"#;
        let claims = r#"{"iss":"http://localhost","sub":"bench-user","aud":"http://localhost","iat":1796658892,"exp":1796662492,"jti":"01a25137-0dd5-76e4-8fd6-3a5e5b61c89d","client_id":"brave-otter-04217@localhost/pcc","roles":["bench"]}"#;
        let access_token = format!("{}.{}.{}", b64(header), b64(claims), b64(&"s".repeat(64)));
        Self {
            get: PersonalClientServiceGetResponse { client: Some(client(0)) },
            list: PersonalClientServiceListResponse {
                list: (0..50).map(client).collect(),
                next_page_token: b64("0196f1c3-5d4a-7f7e-9a31-6c2d8e1f0031"),
            },
            create: PersonalClientServiceCreateResponse {
                client: Some(client(1)),
                client_secret: format!("secret-token:personal-clients:v1:{}", b64(secret_jwk)),
            },
            token: TokenResponse { access_token, token_type: "Bearer".into(), expires_in: 3600 },
            // A user's own token let through: who asks, as headers, and no client header.
            check: CheckResponse {
                status: Some(rpc::Status::default()),
                http_response: Some(check_response::HttpResponse::OkResponse(OkHttpResponse {
                    headers: vec![set("x-user-id", USER), set("x-user-roles", "iam.viewer,storage.object-admin")],
                    headers_to_remove: vec!["x-client-id".into()],
                })),
            },
        }
    }
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl PersonalClientService for Baseline {
    async fn create(
        &self,
        _: Request<PersonalClientServiceCreateRequest>,
    ) -> Answer<PersonalClientServiceCreateResponse> {
        Ok(Response::new(self.create.clone()))
    }
    async fn get(&self, _: Request<PersonalClientServiceGetRequest>) -> Answer<PersonalClientServiceGetResponse> {
        Ok(Response::new(self.get.clone()))
    }
    async fn list(&self, _: Request<PersonalClientServiceListRequest>) -> Answer<PersonalClientServiceListResponse> {
        Ok(Response::new(self.list.clone()))
    }
    async fn update(
        &self,
        _: Request<PersonalClientServiceUpdateRequest>,
    ) -> Answer<PersonalClientServiceUpdateResponse> {
        Err(Status::unimplemented("not in the baseline"))
    }
    async fn delete(
        &self,
        _: Request<PersonalClientServiceDeleteRequest>,
    ) -> Answer<PersonalClientServiceDeleteResponse> {
        Err(Status::unimplemented("not in the baseline"))
    }
}

#[tonic::async_trait]
impl TokenService for Baseline {
    async fn token(&self, _: Request<TokenRequest>) -> Answer<TokenResponse> {
        Ok(Response::new(self.token.clone()))
    }
}

#[tonic::async_trait]
impl Authorization for Baseline {
    async fn check(&self, _: Request<CheckRequest>) -> Answer<CheckResponse> {
        Ok(Response::new(self.check.clone()))
    }
}

/// Forward authorization's answer to a user's token, as the service's: 200, who asks as
/// headers, no body.
#[derive(Clone)]
struct ForwardAuth(HeaderMap);

impl ForwardAuth {
    fn new() -> Self {
        let mut headers = HeaderMap::new();
        headers.insert("x-user-id", http::HeaderValue::from_static(USER));
        headers.insert("x-user-roles", http::HeaderValue::from_static("iam.viewer,storage.object-admin"));
        headers.insert("cache-control", http::HeaderValue::from_static("no-store"));
        headers.insert("content-length", http::HeaderValue::from_static("0"));
        Self(headers)
    }
}

impl Service<http::Request<AxumBody>> for ForwardAuth {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: http::Request<AxumBody>) -> Self::Future {
        let mut answer = http::Response::new(Body::empty());
        *answer.headers_mut() = self.0.clone();
        ready(Ok(answer))
    }
}

/// A runtime of its own, one worker per core, its threads named [`THREADS`].
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().thread_name(THREADS).enable_all().build()
}

/// Serves the baseline on `addr` (port 0: any free one) on `rt`; returns the address bound.
pub fn start(rt: &tokio::runtime::Runtime, addr: SocketAddr) -> Result<SocketAddr, Error> {
    let incoming = {
        let _inside = rt.enter();
        TcpIncoming::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?.with_nodelay(Some(true))
    };
    let bound = incoming.local_addr()?;
    let b = Baseline::new();
    // Any method, at the path and below it, as the service answers.
    let routes = Routes::new(PersonalClientServiceServer::new(b.clone()))
        .add_service(TokenServiceServer::new(b.clone()))
        .add_service(AuthorizationServer::new(b))
        .into_axum_router()
        .route_service("/auth/v1/check", ForwardAuth::new())
        .route_service("/auth/v1/check/{*path}", ForwardAuth::new());
    let router = Server::builder().add_routes(routes.into());
    rt.spawn(async move {
        if let Err(e) = router.serve_with_incoming(incoming).await {
            eprintln!("pc-load: the baseline stopped: {e}");
        }
    });
    Ok(bound)
}
