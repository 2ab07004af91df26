//! `c1.api.auth.v1.TokenService`: the token exchange over gRPC, translated to and from
//! `exchange`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::{
    domain::RequestOrigin,
    exchange::{ExchangeRequest, TokenExchange},
    pb::auth::{TokenRequest, TokenResponse, token_service_server::TokenService},
};

/// `c1.api.auth.v1.TokenService`: the token exchange over gRPC.
#[derive(Debug, Clone)]
pub struct TokenApi {
    exchange: Arc<TokenExchange>,
}

impl TokenApi {
    pub fn new(exchange: Arc<TokenExchange>) -> Self {
        Self { exchange }
    }
}

#[tonic::async_trait]
impl TokenService for TokenApi {
    async fn token(&self, request: Request<TokenRequest>) -> Result<Response<TokenResponse>, Status> {
        let forwarded_for = request.metadata().get_all("x-forwarded-for");
        let origin = RequestOrigin::new(
            request.remote_addr().map(|addr| addr.ip()),
            forwarded_for.iter().map(|value| value.to_str().ok()),
        );
        let req = request.get_ref();
        let issued = self
            .exchange
            .exchange(
                ExchangeRequest {
                    grant_type: &req.grant_type,
                    client_id: &req.client_id,
                    client_assertion_type: &req.client_assertion_type,
                    client_assertion: &req.client_assertion,
                },
                &origin,
            )
            .await?;
        Ok(Response::new(TokenResponse {
            access_token: issued.access_token,
            token_type: "Bearer".into(),
            expires_in: issued.expires_in,
        }))
    }
}
