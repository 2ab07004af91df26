//! A database that cannot be reached gives UNAVAILABLE, writes nothing half-way, and the
//! service recovers on its own when the database returns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Backend, TestDb, TestServer, authed, create_request, proxy::TcpProxy};
use personal_clients::{Config, pb::iam as pb};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_out_of_reach_is_unavailable_and_recovers() {
    let Some(db) = TestDb::new(Backend::Postgres).await else { return };
    let proxy = TcpProxy::start(db.server_addr().await).await;
    let config = Config::with_database_url(&db.url_via(proxy.addr)).unwrap();
    let server = TestServer::start(config).await;
    let token = server.token("alice", &[]).await;
    let mut client = server.client().await;
    let kept = client.create(authed(create_request("before"), &token)).await.unwrap().into_inner().client.unwrap();

    proxy.cut();
    let create = client.create(authed(create_request("during"), &token)).await.unwrap_err();
    assert_eq!(create.code(), Code::Unavailable, "{create:?}");
    assert!(
        !create.message().contains("5432") && !create.message().contains("sqlx"),
        "no internals: {}",
        create.message()
    );
    let list = client.list(authed(pb::PersonalClientServiceListRequest::default(), &token)).await.unwrap_err();
    assert_eq!(list.code(), Code::Unavailable);

    proxy.restore();
    let mut listed = None;
    for _ in 0..50 {
        match client.list(authed(pb::PersonalClientServiceListRequest::default(), &token)).await {
            Ok(response) => {
                listed = Some(response.into_inner());
                break;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable);
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    let listed = listed.expect("the service recovers without a restart");
    assert_eq!(listed.list, [kept], "nothing half-written while the database was away");
    server.stop().await;
}
