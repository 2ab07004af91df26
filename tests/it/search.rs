//! Admins search personal clients across users; nobody else may.

use crate::{
    common::{TestDb, TestServer, authed, create_request, sample, violated_fields},
    search_scale::{insert_synthetic_clients, synthetic_user},
};
use personal_clients::{
    domain::SearchFilter,
    error::chain,
    pb::iam::{self as pb, personal_client_search_service_client::PersonalClientSearchServiceClient},
    store::{
        OpenMode, Store,
        entity::personal_client::{self, Column},
        migration::Migrator,
    },
};
use sea_orm::{ConnectionTrait, Database, DbBackend, EntityTrait, QueryOrder, Statement};
use sea_orm_migration::MigratorTrait;
use tonic::{Code, transport::Channel};

pub fn tests() -> Vec<libtest_mimic::Trial> {
    let mut trials = Vec::new();
    trials.extend(backend_tests!(
        search_filters_and_pages_across_users,
        search_requires_the_admin_role,
        search_folds_case_in_every_script,
        text_of_any_length_is_matched_literally,
        the_name_index_follows_renames_and_revocations,
        search_agrees_with_a_scan_of_every_row,
        searches_beyond_the_limit_wait_their_turn,
        a_nul_byte_is_invalid_input_wherever_it_comes,
    ));
    trials.extend(tests_on!(Postgres: a_user_who_may_not_create_pg_trgm_is_told_what_to_run));
    trials
}

fn search(query: &str, users: &[&str], include_deleted: bool) -> pb::PersonalClientSearchServiceSearchRequest {
    pb::PersonalClientSearchServiceSearchRequest {
        query: query.into(),
        users: users.iter().map(|id| pb::UserRef { id: id.to_string() }).collect(),
        include_deleted,
        ..Default::default()
    }
}

async fn names(
    client: &mut PersonalClientSearchServiceClient<Channel>,
    token: &str,
    request: pb::PersonalClientSearchServiceSearchRequest,
) -> Vec<String> {
    let response = client.search(authed(request, token)).await.unwrap().into_inner();
    assert!(response.next_page_token.is_empty());
    response.list.into_iter().map(|c| c.display_name).collect()
}

async fn search_filters_and_pages_across_users(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let (alice, bob, admin) =
        (server.token("alice", &[]).await, server.token("bob", &[]).await, server.token("root", &["admin"]).await);
    let mut api = server.client().await;
    let mut created = Vec::new();
    for (token, name) in [
        (&alice, "Deploy Bot"),
        (&alice, "laptop"),
        (&bob, "deploy-server"),
        (&bob, "100% uptime"),
        (&bob, "old DEPLOY key"),
    ] {
        created.push(api.create(authed(create_request(name), token)).await.unwrap().into_inner().client.unwrap());
    }
    api.delete(authed(pb::PersonalClientServiceDeleteRequest { id: created[4].id.clone() }, &bob)).await.unwrap();
    let mut search_api = PersonalClientSearchServiceClient::new(
        Channel::from_shared(format!("http://{}", server.addr)).unwrap().connect().await.unwrap(),
    );

    assert_eq!(
        names(&mut search_api, &admin, search("", &[], false)).await,
        ["Deploy Bot", "laptop", "deploy-server", "100% uptime"]
    );
    assert_eq!(
        names(&mut search_api, &admin, search("DEPLOY", &[], false)).await,
        ["Deploy Bot", "deploy-server"],
        "case-insensitive substring"
    );
    assert_eq!(
        names(&mut search_api, &admin, search("deploy", &[], true)).await,
        ["Deploy Bot", "deploy-server", "old DEPLOY key"]
    );
    assert_eq!(names(&mut search_api, &admin, search("deploy", &["bob"], false)).await, ["deploy-server"]);
    assert_eq!(
        names(&mut search_api, &admin, search("", &["bob", "carol"], true)).await,
        ["deploy-server", "100% uptime", "old DEPLOY key"]
    );
    assert_eq!(
        names(&mut search_api, &admin, search("%", &[], false)).await,
        ["100% uptime"],
        "LIKE wildcards are literal"
    );
    let prefix = &created[1].client_id[..created[1].client_id.find('-').unwrap() + 2];
    let by_prefix = names(&mut search_api, &admin, search(&prefix.to_uppercase(), &[], false)).await;
    assert!(by_prefix.contains(&"laptop".to_owned()), "client id prefix, any case: {prefix} -> {by_prefix:?}");
    let inside = &created[1].client_id[2..10];
    let by_infix = names(&mut search_api, &admin, search(inside, &[], false)).await;
    assert!(
        !by_infix.contains(&"laptop".to_owned()) || created[1].display_name.contains(inside),
        "client ids match by prefix only"
    );

    // Paging, bound to the query.
    let mut request = search("", &[], true);
    request.page_size = 2;
    let mut seen = Vec::new();
    loop {
        let page = search_api.search(authed(request.clone(), &admin)).await.unwrap().into_inner();
        assert!(page.list.len() <= 2);
        seen.extend(page.list.into_iter().map(|c| c.id));
        if page.next_page_token.is_empty() {
            break;
        }
        let mut other_query = search("deploy", &[], true);
        other_query.page_token = page.next_page_token.clone();
        let refused = search_api.search(authed(other_query, &admin)).await.unwrap_err();
        assert_eq!(violated_fields(&refused), ["page_token"]);
        request.page_token = page.next_page_token;
    }
    assert_eq!(seen, created.iter().map(|c| c.id.clone()).collect::<Vec<_>>());
    server.stop().await;
}

async fn search_requires_the_admin_role(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let alice = server.token("alice", &["reader"]).await;
    let mut search_api = PersonalClientSearchServiceClient::new(
        Channel::from_shared(format!("http://{}", server.addr)).unwrap().connect().await.unwrap(),
    );
    let denied = search_api.search(authed(search("", &[], false), &alice)).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    let mut bad = search("x", &["alice", ""], false);
    bad.page_size = -1;
    let invalid = search_api.search(authed(bad, &alice)).await.unwrap_err();
    assert_eq!(violated_fields(&invalid), ["users[1].id", "page_size"], "validation comes before authorisation");
    let anonymous = search_api.search(search("", &[], false)).await.unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    server.stop().await;
}

/// No stored id holds a NUL byte, and PostgreSQL's text cannot: a Search naming one is told so,
/// and the store answers invalid input, not an internal error, should one ever reach it.
async fn a_nul_byte_is_invalid_input_wherever_it_comes(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let admin = server.token("root", &["admin"]).await;
    let mut search_api = PersonalClientSearchServiceClient::new(server.channel().await);
    let invalid = search_api.search(authed(search("", &["alice", "al\0ice"], false), &admin)).await.unwrap_err();
    let said = "contains a NUL byte, which no user id can contain";
    assert_eq!(crate::common::violations(&invalid), [("users[1].id".to_owned(), said.to_owned())]);

    let store = Store::open(&db.database_url(), OpenMode::MustExist).await.unwrap();
    let nul = "al\0ice";
    let answers = [
        store.find_client(nul).await.map(|found| found.is_some()),
        store.list_clients(nul, None, 10).await.map(|found| !found.is_empty()),
    ];
    for answer in answers {
        match answer {
            // SQLite's text may hold a NUL: nothing matches.
            Ok(found) => assert!(db.url.starts_with("sqlite") && !found),
            Err(err) => assert!(
                matches!(&err, personal_clients::error::Error::InvalidArgument(v) if v[0].description.contains("NUL byte")),
                "{}",
                chain(&err)
            ),
        }
    }
    server.stop().await;
}

/// Names with capitals beyond ASCII, each with the queries that must find it (and nothing else):
/// its exact text, its lower case, other cases, and substrings.
const UNICODE_NAMES: [(&str, &[&str]); 3] = [
    ("Équipe Ünïcode", &["Équipe", "Équipe Ünïcode", "équipe ünïcode", "ÉQUIPE", "pe Ünï", "ünï"]),
    // Σ, σ and final ς match each other wherever they stand.
    ("ΟΔΟΣ ΣΟΦΙΑΣ", &["ΟΔΟΣ ΣΟΦΙΑΣ", "οδος σοφιας", "οδοσ", "δοσ σοφ", "ΦΙΑς"]),
    // The Turkish İ: its Unicode lower case is i with a dot above, and a plain i finds it too.
    ("İstanbul Ofisi", &["İstanbul Ofisi", "i\u{307}stanbul ofisi", "istanbul", "ISTANBUL", "stanbul o"]),
];

async fn search_folds_case_in_every_script(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let (alice, admin) = (server.token("alice", &[]).await, server.token("root", &["admin"]).await);
    let mut api = server.client().await;
    for name in UNICODE_NAMES.iter().map(|(name, _)| *name).chain(["plain ascii"]) {
        api.create(authed(create_request(name), &alice)).await.unwrap();
    }
    let mut search_api = PersonalClientSearchServiceClient::new(server.channel().await);
    assert_unicode_names_found(&mut search_api, &admin).await;

    // A rename is searchable by its new name only.
    let renamed = api.create(authed(create_request("Ärger"), &alice)).await.unwrap().into_inner().client.unwrap();
    let rename = pb::PersonalClientServiceUpdateRequest {
        client: Some(pb::PersonalClient { id: renamed.id, display_name: "ÜBER".into(), ..Default::default() }),
        update_mask: None,
    };
    api.update(authed(rename, &alice)).await.unwrap();
    assert_eq!(names(&mut search_api, &admin, search("über", &[], false)).await, ["ÜBER"]);
    assert!(names(&mut search_api, &admin, search("ärger", &[], false)).await.is_empty());
    server.stop().await;

    // Names stored before the folded column existed are folded when it is added.
    let database = Database::connect(&db.url).await.unwrap();
    let migrations = Migrator::migrations();
    let added = migrations.iter().position(|m| m.name() == "m20261128_000004_folded_display_names").unwrap();
    Migrator::down(&database, Some((migrations.len() - added) as u32)).await.unwrap();
    Migrator::up(&database, None).await.unwrap();
    database.close().await.unwrap();
    let server = TestServer::start(db.config()).await;
    let mut search_api = PersonalClientSearchServiceClient::new(server.channel().await);
    assert_unicode_names_found(&mut search_api, &admin).await;
    server.stop().await;
}

async fn assert_unicode_names_found(client: &mut PersonalClientSearchServiceClient<Channel>, admin: &str) {
    for (name, queries) in UNICODE_NAMES {
        for query in queries {
            assert_eq!(names(client, admin, search(query, &[], false)).await, [name], "{query:?} finds {name:?}");
        }
    }
}

/// Whether `client` matches `text` as Search defines it: a substring of the name, or a prefix of
/// the client id, ignoring case (the texts of these tests are ASCII).
fn matches_text(name: &str, client_id: &str, text: &str) -> bool {
    let text = text.to_lowercase();
    name.to_lowercase().contains(&text) || client_id.to_lowercase().starts_with(&text)
}

/// The trigram indexes serve three characters or more; text of one or two characters, and
/// LIKE's wildcards and escape character, are matched all the same.
async fn text_of_any_length_is_matched_literally(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let (alice, admin) = (server.token("alice", &[]).await, server.token("root", &["admin"]).await);
    let mut api = server.client().await;
    let mut clients = Vec::new();
    for name in ["Payments Gateway", "ab", "50% off_sale", "snake_case", "back\\slash", "x", "PAY later", "a%b"] {
        clients.push(api.create(authed(create_request(name), &alice)).await.unwrap().into_inner().client.unwrap());
    }
    let mut search_api = PersonalClientSearchServiceClient::new(server.channel().await);
    let queries = [
        "a",
        "x",
        "%",
        "_",
        "\\",
        "ab",
        "0%",
        "_s",
        "k\\",
        "pay",
        "PAYMENTS GATEWAY",
        "% off_",
        "e_c",
        "k\\s",
        "a%b",
        "ff_sale",
        "zzz",
        "a_b",
        "50_",
    ];
    for query in queries {
        let expected: Vec<&str> = clients
            .iter()
            .filter(|c| matches_text(&c.display_name, &c.client_id, query))
            .map(|c| c.display_name.as_str())
            .collect();
        assert_eq!(names(&mut search_api, &admin, search(query, &[], false)).await, expected, "{query:?}");
    }
    server.stop().await;
}

async fn the_name_index_follows_renames_and_revocations(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let (alice, admin) = (server.token("alice", &[]).await, server.token("root", &["admin"]).await);
    let mut api = server.client().await;
    let report = api.create(authed(create_request("Quarterly Report"), &alice)).await.unwrap().into_inner();
    let budget = api.create(authed(create_request("Quarterly Budget"), &alice)).await.unwrap().into_inner();
    let mut search_api = PersonalClientSearchServiceClient::new(server.channel().await);
    assert_eq!(
        names(&mut search_api, &admin, search("quarterly", &[], false)).await,
        ["Quarterly Report", "Quarterly Budget"]
    );

    let rename = pb::PersonalClientServiceUpdateRequest {
        client: Some(pb::PersonalClient {
            id: report.client.unwrap().id,
            display_name: "Annual Summary".into(),
            ..Default::default()
        }),
        update_mask: None,
    };
    api.update(authed(rename, &alice)).await.unwrap();
    assert!(names(&mut search_api, &admin, search("report", &[], true)).await.is_empty(), "the old name is gone");
    assert_eq!(names(&mut search_api, &admin, search("annual", &[], false)).await, ["Annual Summary"]);
    assert_eq!(names(&mut search_api, &admin, search("quarterly", &[], false)).await, ["Quarterly Budget"]);

    let revoke = pb::PersonalClientServiceDeleteRequest { id: budget.client.unwrap().id };
    api.delete(authed(revoke, &alice)).await.unwrap();
    assert!(names(&mut search_api, &admin, search("budget", &[], false)).await.is_empty());
    assert_eq!(names(&mut search_api, &admin, search("budget", &[], true)).await, ["Quarterly Budget"]);
    assert_eq!(names(&mut search_api, &admin, search("ly bud", &["alice"], true)).await, ["Quarterly Budget"]);
    server.stop().await;

    // SQLite's FTS5 table agrees with the table it indexes, after a row is removed by hand too.
    if db.url.starts_with("sqlite") {
        let database = Database::connect(&db.url).await.unwrap();
        database
            .execute_unprepared("DELETE FROM personal_clients WHERE display_name = 'Annual Summary'")
            .await
            .unwrap();
        let check = "INSERT INTO personal_clients_fts (personal_clients_fts, rank) VALUES ('integrity-check', 1)";
        database.execute_unprepared(check).await.unwrap();
        database.close().await.unwrap();
    }
}

/// Over more clients than SQLite takes its trigram index for, every way a Search can go (the
/// trigram and client id indexes, the table in id order, the owners' indexes) gives what a scan
/// of every row gives, page after page.
async fn search_agrees_with_a_scan_of_every_row(db: TestDb) {
    let database = Database::connect(&db.url).await.unwrap();
    Migrator::up(&database, None).await.unwrap();
    let ids = insert_synthetic_clients(&database, 10_500).await;
    // Names holding LIKE's wildcards and escape character, renamed in place.
    for (i, name) in [(17, "50% Off"), (4711, "snake_case_9"), (9000, "Back\\Slash 100%")] {
        let rename = Statement::from_sql_and_values(
            database.get_database_backend(),
            match database.get_database_backend() {
                DbBackend::Postgres => {
                    "UPDATE personal_clients SET display_name = $1, display_name_folded = $2 WHERE id = $3"
                }
                _ => "UPDATE personal_clients SET display_name = ?, display_name_folded = ? WHERE id = ?",
            },
            [name.into(), SearchFilter::fold_case(name).into(), ids[i].into()],
        );
        database.execute_raw(rename).await.unwrap();
    }
    let rows = personal_client::Entity::find().order_by_asc(Column::Id).all(&database).await.unwrap();
    database.close().await.unwrap();

    let store = Store::open(&db.database_url(), OpenMode::MustExist).await.unwrap();
    let some_client_id = &rows[100].client_id[..9];
    let texts = [
        None,
        Some("zebra"),
        Some("load"),
        Some("LOAD-0001"),
        Some("lo"),
        Some("z"),
        Some("%"),
        Some("0% o"),
        Some("e_c"),
        Some("\\s"),
        Some(some_client_id),
        Some("qz"),
    ];
    for text in texts {
        for users in [vec![], vec![synthetic_user(1), synthetic_user(2)]] {
            for include_deleted in [false, true] {
                let filter = SearchFilter { text: text.map(str::to_owned), users: users.clone(), include_deleted };
                let expected: Vec<_> = rows
                    .iter()
                    .filter(|row| include_deleted || row.deleted_at.is_none())
                    .filter(|row| users.is_empty() || users.contains(&row.user_id))
                    .filter(|row| text.is_none_or(|text| matches_text(&row.display_name, &row.client_id, text)))
                    .map(|row| row.id)
                    .collect();
                let mut found = Vec::new();
                let mut after = None;
                loop {
                    let mut page = store.search_clients(&filter, after, 501).await.unwrap();
                    let more = page.len() > 500;
                    page.truncate(500);
                    after = page.last().map(|client| client.id);
                    found.extend(page.into_iter().map(|client| client.id));
                    if !more {
                        break;
                    }
                }
                assert_eq!(found.len(), expected.len(), "{filter:?}");
                assert!(found == expected, "{filter:?}: the same clients in the same order");
            }
        }
    }
}

/// At most `--max-concurrent-searches` Searches hold a database connection at once; the others
/// wait their turn, and are answered.
async fn searches_beyond_the_limit_wait_their_turn(db: TestDb) {
    // Enough clients that a Search reading them all takes a while.
    let database = Database::connect(&db.url).await.unwrap();
    Migrator::up(&database, None).await.unwrap();
    insert_synthetic_clients(&database, 20_000).await;
    database.close().await.unwrap();
    let mut config = db.config();
    config.serving.max_concurrent_searches = Some(2);
    let server = TestServer::start(config).await;
    let admin = server.token("root", &["admin"]).await;
    let channel = server.channel().await;
    let mut searches = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let mut api = PersonalClientSearchServiceClient::new(channel.clone());
        let admin = admin.clone();
        // Two characters that no name holds: each Search reads every row.
        searches.spawn(async move { api.search(authed(search("qz", &[], true), &admin)).await });
    }
    while let Some(answer) = searches.join_next().await {
        assert!(answer.unwrap().unwrap().into_inner().list.is_empty());
    }
    let metrics = server.metrics().await;
    let held: f64 = ["idle", "in_use"]
        .iter()
        .filter_map(|state| {
            sample(&metrics, &format!("personal_clients_db_pool_connections{{pool=\"search\",state=\"{state}\"}}"))
        })
        .sum();
    assert!((1.0..=2.0).contains(&held), "the search pool held {held} connections");
    server.stop().await;
}

/// A PostgreSQL user who may not create the pg_trgm extension is told what to run; once an
/// operator has run it, the same user migrates.
async fn a_user_who_may_not_create_pg_trgm_is_told_what_to_run(db: TestDb) {
    let role = format!("pc_test_{}", uuid::Uuid::now_v7().simple());
    let admin = Database::connect(&db.url).await.unwrap();
    admin.execute_unprepared(&format!("CREATE ROLE {role} LOGIN; GRANT ALL ON SCHEMA public TO {role}")).await.unwrap();
    let (scheme, rest) = db.url.split_once("://").unwrap();
    let host_and_database = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let as_role = format!("{scheme}://{role}@{host_and_database}").parse().unwrap();

    let store = Store::open(&as_role, OpenMode::CreateIfMissing).await.unwrap();
    let refused = chain(&store.migrate().await.unwrap_err());
    assert!(refused.contains("run `CREATE EXTENSION pg_trgm;` in this database"), "{refused}");
    admin.execute_unprepared("CREATE EXTENSION pg_trgm").await.unwrap();
    store.migrate().await.unwrap();
    drop(store);

    admin.execute_unprepared(&format!("DROP OWNED BY {role}; DROP ROLE {role}")).await.unwrap();
    admin.close().await.unwrap();
}
