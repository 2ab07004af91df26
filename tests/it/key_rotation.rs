//! Signing key rotation: the states of keys and the `keys` commands, a withdrawn key's tokens
//! refused, a key published before it signs, a retired key published until its tokens have expired, and rotations under load on two
//! replicas whose tokens a relying party verifies against the other replica's JWKS, caching it
//! as its `Cache-Control` allows.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    path::Path,
    process::Output,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use ed25519_dalek::{SigningKey, VerifyingKey};
use personal_clients::{
    auth::key_admin,
    auth::{KeyVault, SigningKeys},
    config::Config,
    config::RotationInterval,
    domain::{KeyRingChange, KeySchedule, KeyState, KeyTimeline, KeyTimes, NewSigningKey, StoredKey, delta},
    store::{OpenMode, Store},
};
use serde_json::Value;

use crate::common::{
    TestDb, TestServer, authed, create_request, eventually, mint,
    oauth::{binary, key_from_secret, sdk_assertion, token_form},
};

pub fn tests() -> Vec<libtest_mimic::Trial> {
    backend_tests!(
        keys_commands_show_and_change_the_states_of_keys,
        keys_commands_work_on_sealed_keys,
        keys_withdraw_removes_a_key_and_leaves_one_signing,
        a_withdrawn_keys_tokens_stop_working_at_the_next_reread,
        the_schedule_migration_keeps_the_oldest_key_signing,
        a_new_key_is_published_for_a_cache_lifetime_before_it_signs,
        a_retired_key_stays_published_until_its_tokens_have_expired,
        replicas_due_to_rotate_at_once_add_one_key,
        rotations_under_load_on_two_replicas_fail_no_token,
    )
}

/// A schedule short enough for a test: the JWKS cached for a second, keys re-read four times a
/// second, a second of skew, tokens of at most 3 s. A key signs 2.25 s after it is added and
/// stays published 4.25 s after it stops.
fn short_schedule() -> KeySchedule {
    KeySchedule {
        jwks_max_age: Duration::from_secs(1),
        reload_interval: Duration::from_millis(250),
        clock_skew: Duration::from_secs(1),
        max_token_ttl: Duration::from_secs(3),
    }
}

fn short_config(db: &TestDb, rotation: Option<Duration>) -> Config {
    let mut config = db.config();
    config.keys.schedule = short_schedule();
    config.credentials.token_ttl = short_schedule().max_token_ttl;
    config.serving.key_rotation_interval = RotationInterval(rotation);
    config
}

// ---------------------------------------------------------------------------------------------
// The commands

fn run(dir: &Path, args: &[&str]) -> Output {
    binary(dir).args(args).output().expect("run the binary")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn succeeded(output: Output) -> String {
    assert!(output.status.success(), "{}{}", stdout(&output), stderr(&output));
    stdout(&output)
}

/// A row of `keys list`: state, created, activates, retired (stops signing), published until.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listed {
    state: String,
    created: String,
    activates: String,
    retired: String,
    published_until: String,
}

fn list(dir: &Path, url: &str) -> BTreeMap<String, Listed> {
    let text = succeeded(run(dir, &["keys", "list", "--database-url", url]));
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("a header").split_whitespace().collect();
    assert_eq!(header, ["KID", "STATE", "CREATED", "ACTIVATES", "RETIRED", "PUBLISHED", "UNTIL"]);
    lines
        .map(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(cells.len(), 6, "{line}");
            let listed = Listed {
                state: cells[1].into(),
                created: cells[2].into(),
                activates: cells[3].into(),
                retired: cells[4].into(),
                published_until: cells[5].into(),
            };
            (cells[0].to_owned(), listed)
        })
        .collect()
}

/// `args` with `--database-url url`.
fn on<'a>(args: &[&'a str], url: &'a str) -> Vec<&'a str> {
    [args, &["--database-url", url]].concat()
}

fn parse_time(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap_or_else(|e| panic!("{text}: {e}")).with_timezone(&Utc)
}

fn header_kid(token: &str) -> String {
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap()).unwrap())
        .expect("a JSON header");
    header["kid"].as_str().expect("a kid").to_owned()
}

async fn keys_commands_show_and_change_the_states_of_keys(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let url = db.url.as_str();
    let refused = run(dir.path(), &on(&["keys", "list"], url));
    assert!(!refused.status.success(), "a database no server has set up is refused");
    assert!(stderr(&refused).contains("migrate"), "{}", stderr(&refused));
    succeeded(run(dir.path(), &on(&["migrate"], url)));

    let keys = list(dir.path(), url);
    assert_eq!(keys.len(), 1, "{keys:?}");
    let (first, listed) = keys.iter().next().unwrap();
    assert_eq!(
        (listed.state.as_str(), listed.retired.as_str(), listed.published_until.as_str()),
        ("current", "-", "-")
    );
    assert_eq!(listed.created, listed.activates, "the first key signs from its creation");

    // The only key that signs cannot be retired.
    let only = run(dir.path(), &on(&["keys", "retire", first], url));
    assert_eq!(only.status.code(), Some(1));
    assert!(stderr(&only).contains("no key is waiting to take over") && stderr(&only).contains("keys add"));
    assert_eq!(list(dir.path(), url)[first].state, "current", "nothing changed");

    // A key added is next: published now, signing 7 minutes after it was made.
    let second = succeeded(run(dir.path(), &on(&["keys", "add"], url))).trim().to_owned();
    let keys = list(dir.path(), url);
    let listed = &keys[&second];
    assert_eq!(listed.state, "next");
    assert_eq!(parse_time(&listed.activates) - parse_time(&listed.created), chrono::TimeDelta::minutes(7));
    assert_eq!(keys[first].state, "current");
    assert_eq!(keys[first].retired, listed.activates, "the current key hands over at the next key's activation");

    // A next key retired never signs, and stays published a day and 2 minutes.
    let retired = succeeded(run(dir.path(), &on(&["keys", "retire", &second], url)));
    assert!(retired.contains("stays in the JWKS until"), "{retired}");
    let keys = list(dir.path(), url);
    let listed = &keys[&second];
    assert_eq!(listed.state, "retired");
    let window = parse_time(&listed.published_until) - parse_time(&listed.retired);
    assert_eq!(window, chrono::TimeDelta::hours(24) + chrono::TimeDelta::minutes(2));
    assert_eq!((keys[first].state.as_str(), keys[first].retired.as_str()), ("current", "-"));
    let again = succeeded(run(dir.path(), &on(&["keys", "retire", &second], url)));
    assert!(again.contains("already"), "{again}");

    // The current key hands over to a next key once that one may sign, not before.
    let third = succeeded(run(dir.path(), &on(&["keys", "add"], url))).trim().to_owned();
    let handover = succeeded(run(dir.path(), &on(&["keys", "retire", first], url)));
    assert!(handover.contains(&format!("when {third} takes over")), "{handover}");
    let keys = list(dir.path(), url);
    assert_eq!(keys[first].state, "current", "it signs until the next key may");
    assert_eq!(keys[first].retired, keys[&third].activates);
    assert_eq!(keys[&third].state, "next");

    // Retiring the key it hands over to would leave no key to sign.
    let gap = run(dir.path(), &on(&["keys", "retire", &third], url));
    assert_eq!(gap.status.code(), Some(1));
    assert!(stderr(&gap).contains("would leave no key to sign tokens from"), "{}", stderr(&gap));
    assert_eq!(list(dir.path(), url)[&third].state, "next", "nothing changed");

    // A key may be made to sign at once, with a warning; it takes over.
    let urgent = run(dir.path(), &on(&["keys", "add", "--activate-in", "0s"], url));
    let fourth = succeeded(urgent.clone()).trim().to_owned();
    assert!(stderr(&urgent).contains("relying parties holding an older copy"), "{}", stderr(&urgent));
    assert!(stderr(&urgent).contains(&fourth), "the change is logged with its kid");
    let keys = list(dir.path(), url);
    let states: BTreeMap<&str, &str> = keys.iter().map(|(kid, key)| (kid.as_str(), key.state.as_str())).collect();
    let expected = [(first.as_str(), "retired"), (&second, "retired"), (&third, "next"), (&fourth, "current")];
    assert_eq!(states, expected.into_iter().collect());
    assert_eq!(keys[&fourth].retired, keys[&third].activates);
    assert_eq!(keys[first].retired, keys[&fourth].activates, "taken over from by the key that signs at once");

    // The command-line token is signed by the current key.
    let token = succeeded(run(dir.path(), &on(&["mint-token", "--user", "alice"], url)));
    assert_eq!(header_kid(token.trim()), fourth);

    let unknown = run(dir.path(), &on(&["keys", "retire", "no-such-kid"], url));
    assert_eq!(unknown.status.code(), Some(1));
    assert!(stderr(&unknown).contains("there is no signing key no-such-kid"), "{}", stderr(&unknown));
}

async fn keys_commands_work_on_sealed_keys(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let url = db.url.as_str();
    let kek = dir.path().join("kek");
    std::fs::write(&kek, "7Jb4mQ0q3cY6zO4+6W8a4Xf6s2k0m3K9f9b1cQd8GkU=\n").unwrap();
    let kek = kek.to_str().unwrap();

    // Keys in the clear get no sealed key beside them: the servers could not open it.
    succeeded(run(dir.path(), &on(&["migrate"], url)));
    let clear = run(dir.path(), &on(&["keys", "add", "--key-encryption-key-file", kek], url));
    assert_eq!(clear.status.code(), Some(2), "{}", stderr(&clear));
    assert!(stderr(&clear).contains("--key-encryption-key-file") && stderr(&clear).contains("in the clear"));

    succeeded(run(dir.path(), &on(&["migrate", "--key-encryption-key-file", kek], url)));
    let unsealed = run(dir.path(), &on(&["keys", "add"], url));
    assert_eq!(unsealed.status.code(), Some(2), "sealed keys need the key: {}", stderr(&unsealed));
    assert!(stderr(&unsealed).contains("--key-encryption-key-file"), "{}", stderr(&unsealed));
    let added =
        succeeded(run(dir.path(), &on(&["keys", "add", "--activate-in", "0s", "--key-encryption-key-file", kek], url)));
    let added = added.trim();

    // The new key is sealed, and it signs.
    let store = Store::open(&db.database_url(), OpenMode::MustExist).await.unwrap();
    let stored = store.signing_keys().await.unwrap();
    assert_eq!(stored.len(), 2);
    assert!(stored.iter().all(|key| key.material.len() != 32), "every key sealed");
    assert_eq!(list(dir.path(), url)[added].state, "current", "listed without the key-encryption key");
    let token =
        succeeded(run(dir.path(), &on(&["mint-token", "--user", "alice", "--key-encryption-key-file", kek], url)));
    assert_eq!(header_kid(token.trim()), added);
}

async fn keys_withdraw_removes_a_key_and_leaves_one_signing(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let url = db.url.as_str();
    succeeded(run(dir.path(), &on(&["migrate"], url)));
    let first = list(dir.path(), url).into_keys().next().unwrap();

    let unknown = run(dir.path(), &on(&["keys", "withdraw", "no-such-kid"], url));
    assert_eq!(unknown.status.code(), Some(1));
    assert!(stderr(&unknown).contains("there is no signing key no-such-kid"), "{}", stderr(&unknown));

    // The key that signs, with a next key waiting: the next key signs at once in its place.
    let second = succeeded(run(dir.path(), &on(&["keys", "add"], url))).trim().to_owned();
    let withdrawn = run(dir.path(), &on(&["keys", "withdraw", &first], url));
    let said = succeeded(withdrawn.clone());
    assert!(said.contains(&format!("{second}, the next key, signs in its place")), "{said}");
    assert!(stderr(&withdrawn).contains("signing_key.withdraw"), "an audit event: {}", stderr(&withdrawn));
    assert!(stderr(&withdrawn).contains("has not been published for 7m"), "{}", stderr(&withdrawn));
    let keys = list(dir.path(), url);
    assert_eq!(keys.keys().collect::<Vec<_>>(), [&second], "{keys:?}");
    assert_eq!(keys[&second].state, "current");

    // A key that took over from another: withdrawn, with no next key, a new key signs in its
    // place and the key it took over from stays retired, its tokens expiring as they would.
    let third = succeeded(run(dir.path(), &on(&["keys", "add", "--activate-in", "0s"], url))).trim().to_owned();
    let before = list(dir.path(), url);
    assert_eq!((before[&second].state.as_str(), before[&third].state.as_str()), ("retired", "current"));
    let store = Store::open(&db.database_url(), OpenMode::MustExist).await.unwrap();
    let stopped = |keys: Vec<KeyTimes>| KeyTimeline::new(keys).get(&second).and_then(|key| key.signs_until);
    let stopped_before = stopped(store.key_times().await.unwrap());
    let withdrawn = run(dir.path(), &on(&["keys", "withdraw", &third], url));
    let said = succeeded(withdrawn.clone());
    assert!(said.contains("made for it, signs in its place"), "{said}");
    assert!(stderr(&withdrawn).contains("has not been published for 7m"), "{}", stderr(&withdrawn));
    let keys = list(dir.path(), url);
    assert!(!keys.contains_key(&third), "{keys:?}");
    assert_eq!(keys[&second], before[&second], "the key taken over from does not sign again");
    assert_eq!(stopped(store.key_times().await.unwrap()), stopped_before, "nor does it seem to have signed on");
    let made: Vec<&String> = keys.keys().filter(|kid| **kid != second).collect();
    assert_eq!(made.len(), 1, "{keys:?}");
    assert_eq!(keys[made[0]].state, "current");
    let token = succeeded(run(dir.path(), &on(&["mint-token", "--user", "alice"], url)));
    assert_eq!(&header_kid(token.trim()), made[0]);

    // A retired key goes without another change.
    succeeded(run(dir.path(), &on(&["keys", "withdraw", &second], url)));
    let keys = list(dir.path(), url);
    assert_eq!(keys.keys().collect::<Vec<_>>(), [made[0]]);
    assert_eq!(keys[made[0]].state, "current");
}

/// A withdrawn key leaves the JWKS and its tokens stop working, cached ones too, once the server
/// re-reads the keys; the key signing in its place works at once.
async fn a_withdrawn_keys_tokens_stop_working_at_the_next_reread(db: TestDb) {
    let config = short_config(&db, None);
    let server = TestServer::start(config.clone()).await;
    let exchanger = Exchanger::create(&server).await;
    let http = reqwest::Client::new();
    let token = exchanger.token(server.addr).await;
    let leaked = header_kid(&token);
    let mut client = server.client().await;
    let list = || personal_clients::pb::iam::PersonalClientServiceListRequest::default();
    client.list(authed(list(), &token)).await.expect("the token works, and its claims are cached");

    let done = key_admin::withdraw(&db.database_url(), &config.keys, &leaked).await.unwrap();
    assert!(done.is_ok(), "{done:?}");
    eventually(Duration::from_secs(10), "the withdrawn key leaves the JWKS", || async {
        !fetch_jwks(&http, server.addr).await.keys.contains_key(&leaked)
    })
    .await;
    let refused = client.list(authed(list(), &token)).await.expect_err("a withdrawn key's token is refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    let fresh = exchanger.token(server.addr).await;
    let kid = header_kid(&fresh);
    assert_ne!(kid, leaked);
    verify(&fetch_jwks(&http, server.addr).await.keys, &fresh).expect("the new key is published");
    client.list(authed(list(), &fresh)).await.expect("the key in its place works");
    server.stop().await;
}

/// Before migration 6 the oldest key signed and others never did (early versions could make one
/// per replica starting together): the oldest keeps signing, the others leave the JWKS.
async fn the_schedule_migration_keeps_the_oldest_key_signing(db: TestDb) {
    use sea_orm::{ConnectionTrait, sea_query::Query};
    use sea_orm_migration::MigratorTrait;
    let database = db.database_url();
    Store::open(&database, OpenMode::CreateIfMissing).await.unwrap();
    let connection = sea_orm::Database::connect(database.expose()).await.unwrap();
    personal_clients::store::migration::Migrator::up(&connection, Some(5)).await.unwrap();
    let created = Utc::now() - chrono::TimeDelta::days(3);
    let kids = ["01a00000-0000-7000-8000-000000000001", "01a00000-0000-7000-8000-000000000002"];
    for (n, kid) in kids.iter().enumerate() {
        let insert = Query::insert()
            .into_table("signing_keys")
            .columns(["kid", "private_key", "created_at"])
            .values_panic([
                (*kid).into(),
                vec![n as u8; 32].into(),
                (created + chrono::TimeDelta::seconds(n as i64)).into(),
            ])
            .to_owned();
        connection.execute(&insert).await.unwrap();
    }
    connection.close().await.unwrap();
    personal_clients::server::migrate(&database, &Default::default()).await.unwrap();

    let store = Store::open(&database, OpenMode::MustExist).await.unwrap();
    let timeline = KeyTimeline::new(store.key_times().await.unwrap());
    assert_eq!(timeline.iter().count(), 2, "no key added: the oldest still signs");
    let now = Utc::now();
    let (oldest, other) = (timeline.get(kids[0]).unwrap(), timeline.get(kids[1]).unwrap());
    assert_eq!(oldest.state(now), KeyState::Current);
    assert_eq!(oldest.times.activates_at, oldest.times.created_at);
    assert_eq!(other.state(now), KeyState::Retired);
    assert!(!other.is_published(now, &KeySchedule::default()), "it signed nothing, and is not published");
}

// ---------------------------------------------------------------------------------------------
// What a relying party sees

/// The keys of a JWKS and how long it may be cached.
#[derive(Debug, Clone)]
struct Jwks {
    keys: HashMap<String, VerifyingKey>,
    max_age: Duration,
}

async fn fetch_jwks(client: &reqwest::Client, addr: SocketAddr) -> Jwks {
    let response = client.get(format!("http://{addr}/.well-known/jwks.json")).send().await.expect("JWKS");
    assert_eq!(response.status(), 200);
    let cache = response.headers()["cache-control"].to_str().unwrap().to_owned();
    assert!(response.headers().get("pragma").is_none(), "nothing tells caches not to keep it");
    // `no-store` from a replica late with its re-read of the keys: the copy is not kept.
    let max_age = if cache == "no-store" {
        Duration::ZERO
    } else {
        assert!(cache.starts_with("public"), "{cache}");
        cache
            .split(',')
            .find_map(|part| part.trim().strip_prefix("max-age="))
            .and_then(|seconds| seconds.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or_else(|| panic!("a max-age in {cache:?}"))
    };
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    let keys = body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|jwk| {
            let x: [u8; 32] = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap().try_into().unwrap();
            (jwk["kid"].as_str().unwrap().to_owned(), VerifyingKey::from_bytes(&x).unwrap())
        })
        .collect();
    Jwks { keys, max_age }
}

/// Checks `token`'s signature against `keys`: the error says why it fails.
fn verify(keys: &HashMap<String, VerifyingKey>, token: &str) -> Result<(), String> {
    let kid = header_kid(token);
    let key = keys.get(&kid).ok_or_else(|| format!("kid {kid} is not in the JWKS"))?;
    let (input, signature) = token.rsplit_once('.').unwrap();
    let signature: [u8; 64] = URL_SAFE_NO_PAD.decode(signature).unwrap().try_into().unwrap();
    key.verify_strict(input.as_bytes(), &ed25519_dalek::Signature::from_bytes(&signature))
        .map_err(|e| format!("signature by {kid} does not verify: {e}"))
}

fn exp_of(token: &str) -> i64 {
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').nth(1).unwrap()).unwrap())
        .expect("JSON claims");
    claims["exp"].as_i64().expect("exp")
}

/// A personal client of a user, and the tokens it obtains from the token exchange.
#[derive(Clone)]
struct Exchanger {
    client_id: String,
    key: SigningKey,
    http: reqwest::Client,
}

impl Exchanger {
    async fn create(server: &TestServer) -> Self {
        let user = mint(&server.config, "alice", &[], Duration::from_secs(3)).await;
        let created =
            server.client().await.create(authed(create_request("rotation"), &user)).await.unwrap().into_inner();
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            client_id: created.client.unwrap().client_id,
            key: key_from_secret(&created.client_secret),
            http: reqwest::Client::builder().http1_only().build().unwrap(),
        }
    }

    /// An access token from the replica at `addr`.
    async fn token(&self, addr: SocketAddr) -> String {
        let form = token_form(&self.client_id, &sdk_assertion(&self.key, &self.client_id));
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form.iter().map(|(name, value)| (*name, value.as_str())))
            .finish();
        let response = self
            .http
            .post(format!("http://{addr}/auth/v1/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("token");
        let status = response.status();
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// Publishing before signing, and after

async fn a_new_key_is_published_for_a_cache_lifetime_before_it_signs(db: TestDb) {
    let config = short_config(&db, None);
    let server = TestServer::start(config.clone()).await;
    let exchanger = Exchanger::create(&server).await;
    let client = reqwest::Client::new();
    let first = header_kid(&exchanger.token(server.addr).await);
    let jwks = fetch_jwks(&client, server.addr).await;
    // The schedule's max-age, less however late this replica's last re-read of the keys is: on a
    // busy machine that can take it under a second, which whole seconds round down to no-store.
    assert!(jwks.max_age <= Duration::from_secs(1), "never longer than the schedule allows: {:?}", jwks.max_age);
    assert_eq!(jwks.keys.keys().collect::<Vec<_>>(), [&first]);

    let added = key_admin::add(&db.database_url(), &config.keys, None).await.unwrap();
    // Poll the JWKS and the exchange until the new key signs: it must be seen published a full
    // max-age before the first token it signs is asked for.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut published: Option<Instant> = None;
    let signed = loop {
        assert!(Instant::now() < deadline, "the new key never signed");
        if published.is_none() && fetch_jwks(&client, server.addr).await.keys.contains_key(&added.kid) {
            published = Some(Instant::now());
        }
        let asked = Instant::now();
        let token = exchanger.token(server.addr).await;
        let kid = header_kid(&token);
        if kid == added.kid {
            verify(&fetch_jwks(&client, server.addr).await.keys, &token).expect("verifies against the JWKS");
            break asked;
        }
        assert_eq!(kid, first, "only the old key signs before the new one");
        verify(&fetch_jwks(&client, server.addr).await.keys, &token).expect("verifies against the JWKS");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let published = published.expect("published before it signed");
    let lead = signed.duration_since(published);
    assert!(lead >= jwks.max_age, "the key signed {lead:?} after it was seen published, within the JWKS max-age");
    assert!(Utc::now() >= added.activates_at, "not before its activation");
    let keys = fetch_jwks(&client, server.addr).await.keys;
    assert!(keys.contains_key(&first) && keys.contains_key(&added.kid), "both published after the change");
    server.stop().await;
}

async fn a_retired_key_stays_published_until_its_tokens_have_expired(db: TestDb) {
    let config = short_config(&db, None);
    let schedule = config.keys.schedule;
    let server = TestServer::start(config.clone()).await;
    let exchanger = Exchanger::create(&server).await;
    let client = reqwest::Client::new();
    let database = db.database_url();
    let store = Store::open(&database, OpenMode::MustExist).await.unwrap();
    let old_token = exchanger.token(server.addr).await;
    let first = header_kid(&old_token);

    // A key that signs at once takes over; the old one's tokens live on for up to the longest
    // token lifetime, and it stays published for all of that.
    let taking_over = key_admin::add(&database, &config.keys, Some(Duration::ZERO)).await.unwrap();
    let stopped = taking_over.activates_at;
    let needed_until = stopped + delta(schedule.max_token_ttl);
    eventually(Duration::from_secs(10), "the new key signs", || async {
        header_kid(&exchanger.token(server.addr).await) == taking_over.kid
    })
    .await;
    let gone = watch_until_unpublished(&client, server.addr, &first, Some(&old_token)).await;
    assert!(gone >= needed_until, "{first} left the JWKS at {gone}, before {needed_until}");
    assert!(gone <= needed_until + delta(Duration::from_secs(5)), "{first} left the JWKS only at {gone}");
    eventually(Duration::from_secs(10), "the key past its publication is removed", || async {
        store.key_times().await.unwrap().iter().all(|key| key.kid != first)
    })
    .await;

    // A next key retired by hand signs nothing, and leaves the JWKS once no replica may have
    // signed with it.
    let next = key_admin::add(&database, &config.keys, None).await.unwrap();
    eventually(Duration::from_secs(10), "the next key is published", || async {
        fetch_jwks(&client, server.addr).await.keys.contains_key(&next.kid)
    })
    .await;
    let retired = key_admin::retire(&database, &schedule, &next.kid).await.unwrap().expect("a next key is retired");
    assert!(retired.contains("stays in the JWKS until"), "{retired}");
    let retired_at = Utc::now();
    let signer = tokio::spawn({
        let (exchanger, addr) = (exchanger.clone(), server.addr);
        let past = next.activates_at + delta(Duration::from_secs(1));
        async move {
            let mut kids = BTreeSet::new();
            while Utc::now() < past {
                kids.insert(header_kid(&exchanger.token(addr).await));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            kids
        }
    });
    let gone = watch_until_unpublished(&client, server.addr, &next.kid, None).await;
    assert!(gone >= retired_at + delta(schedule.reload_interval + schedule.max_token_ttl), "left at {gone}");
    assert_eq!(signer.await.unwrap(), BTreeSet::from([taking_over.kid.clone()]), "the retired key never signed");
    server.stop().await;
}

/// Polls the JWKS until `kid` is gone from it, checking `token` against each copy while it has
/// not expired; returns when it was first seen gone (the time of that request).
async fn watch_until_unpublished(
    client: &reqwest::Client,
    addr: SocketAddr,
    kid: &str,
    token: Option<&str>,
) -> DateTime<Utc> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "{kid} stayed published");
        let asked = Utc::now();
        let keys = fetch_jwks(client, addr).await.keys;
        if let Some(token) = token.filter(|token| exp_of(token) > Utc::now().timestamp()) {
            verify(&keys, token).unwrap_or_else(|e| panic!("a token alive at {asked} fails: {e}"));
        }
        if !keys.contains_key(kid) {
            return asked;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Six replicas (each with a connection pool and write queue of its own, as processes have) find
/// a rotation due at the same moment: one key is added.
async fn replicas_due_to_rotate_at_once_add_one_key(db: TestDb) {
    let schedule = short_schedule();
    let database = db.database_url();
    personal_clients::server::migrate(&database, &Default::default()).await.unwrap();
    let mut replicas = Vec::new();
    for _ in 0..6 {
        let store = Store::open(&database, OpenMode::MustExist).await.unwrap();
        replicas.push(Arc::new(SigningKeys::load(store, KeyVault::unsealed(), schedule).await.unwrap()));
    }
    // Due at once: a key's turn comes a lead after the current one's activation.
    let rotation = Some(schedule.activation_lead());
    let round = || {
        let mut rounds = tokio::task::JoinSet::new();
        for keys in &replicas {
            let keys = Arc::clone(keys);
            rounds.spawn(async move { keys.maintain(rotation).await });
        }
        rounds.join_all()
    };
    for outcome in round().await {
        outcome.expect("every replica's round succeeds");
    }
    let store = Store::open(&database, OpenMode::MustExist).await.unwrap();
    assert_eq!(store.key_times().await.unwrap().len(), 2, "the first key and one next key");
    for outcome in round().await {
        outcome.unwrap();
    }
    assert_eq!(store.key_times().await.unwrap().len(), 2, "none while a next key waits");

    // The same through the store alone, with each writer pausing between what it reads and what
    // it writes: they still take turns, and each sees what the one before wrote.
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let store = Store::open(&database, OpenMode::MustExist).await.unwrap();
        writers.spawn(async move {
            store
                .change_key_ring(|keys| {
                    std::thread::sleep(Duration::from_millis(30));
                    let mut change = KeyRingChange::default();
                    if keys.len() == 2 {
                        let now = Utc::now();
                        let stored = StoredKey { kid: uuid::Uuid::now_v7().to_string(), material: vec![7; 32] };
                        change.add = Some(NewSigningKey {
                            stored,
                            created_at: now,
                            activates_at: now + delta(Duration::from_secs(3600)),
                        });
                    }
                    Ok((change, ()))
                })
                .await
        });
    }
    for outcome in writers.join_all().await {
        outcome.expect("every writer succeeds");
    }
    assert_eq!(store.key_times().await.unwrap().len(), 3, "one writer added a key, the others saw it");
}

// ---------------------------------------------------------------------------------------------
// Under load

/// A token as a relying party received it: which replica signed it, when it was asked for and
/// received, and when it expires.
#[derive(Debug, Clone)]
struct Received {
    token: String,
    from: usize,
    asked: DateTime<Utc>,
    received: DateTime<Utc>,
    exp: i64,
}

/// A relying party of one replica: it fetches that replica's JWKS only when its copy has
/// expired, by the response's `max-age` counted from when the copy arrived (the longest any cache
/// may keep it), never because it meets an unknown kid. It checks each token as it arrives, and
/// each token it holds that has not expired against every new copy.
struct RelyingParty {
    client: reqwest::Client,
    addr: SocketAddr,
    copy: Option<(HashMap<String, VerifyingKey>, Instant)>,
    fetches: usize,
    alive: Vec<Received>,
    received: Vec<Received>,
    /// Tokens the party got to only after they had expired (it was too slow), so not checked.
    late: usize,
    failures: Vec<String>,
    signing_kids: BTreeSet<String>,
    published_ever: BTreeSet<String>,
    /// Kids once published and gone from a later copy.
    unpublished: BTreeSet<String>,
}

impl RelyingParty {
    fn new(addr: SocketAddr) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            client: reqwest::Client::builder().http1_only().build().unwrap(),
            addr,
            copy: None,
            fetches: 0,
            alive: Vec::new(),
            received: Vec::new(),
            late: 0,
            failures: Vec::new(),
            signing_kids: BTreeSet::new(),
            published_ever: BTreeSet::new(),
            unpublished: BTreeSet::new(),
        }
    }

    /// Fetches the JWKS if the copy has expired, and checks the tokens still alive against it.
    async fn refresh(&mut self) {
        if self.copy.as_ref().is_some_and(|(_, expires)| Instant::now() < *expires) {
            return;
        }
        // A copy's age counts from the request (RFC 9111 §4.2.3): the time the answer took to
        // arrive is spent of its max-age.
        let requested = Instant::now();
        let jwks = fetch_jwks(&self.client, self.addr).await;
        self.fetches += 1;
        self.published_ever.extend(jwks.keys.keys().cloned());
        self.unpublished.extend(self.published_ever.iter().filter(|kid| !jwks.keys.contains_key(*kid)).cloned());
        let now = Utc::now().timestamp();
        self.alive.retain(|token| token.exp > now);
        for token in &self.alive {
            if let Err(e) = verify(&jwks.keys, &token.token) {
                self.failures.push(format!("a token of replica {} still alive at {}: {e}", token.from, Utc::now()));
            }
        }
        self.copy = Some((jwks.keys, requested + jwks.max_age));
    }

    /// Checks a token as it arrives.
    async fn accept(&mut self, received: Received) {
        self.refresh().await;
        self.signing_kids.insert(header_kid(&received.token));
        if received.exp <= Utc::now().timestamp() {
            self.late += 1;
        } else if let Some((keys, expires)) = &self.copy
            && let Err(e) = verify(keys, &received.token)
        {
            let copy: BTreeSet<&String> = keys.keys().collect();
            let left = expires.saturating_duration_since(Instant::now());
            self.failures.push(format!(
                "a token of replica {} asked at {} arrived at {}: {e}; the copy, good for {left:?} more, holds {copy:?}",
                received.from, received.asked, received.received
            ));
        }
        self.alive.push(received.clone());
        self.received.push(received);
    }
}

async fn rotations_under_load_on_two_replicas_fail_no_token(db: TestDb) {
    const WORKERS_PER_REPLICA: usize = 3;
    const SIGNING_KEYS_WANTED: usize = 4;
    const TOKENS_PER_REPLICA: usize = 150;
    let rotation = Duration::from_millis(2500);
    let config = short_config(&db, Some(rotation));
    let (a, b) = tokio::join!(TestServer::start(config.clone()), TestServer::start(config.clone()));
    let replicas = [a.addr, b.addr];
    let exchanger = Exchanger::create(&a).await;
    let store = Store::open(&db.database_url(), OpenMode::MustExist).await.unwrap();

    // Every key the database held at any moment, with its latest schedule.
    let seen_keys: Arc<Mutex<BTreeMap<String, KeyTimes>>> = Arc::default();
    // When the watcher first found each key: how long after its creation it was visible.
    let first_seen: Arc<Mutex<BTreeMap<String, DateTime<Utc>>>> = Arc::default();
    let (stop_minting, stop_watching) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let watcher = tokio::spawn({
        let (seen_keys, first_seen, stop) =
            (Arc::clone(&seen_keys), Arc::clone(&first_seen), Arc::clone(&stop_watching));
        async move {
            while !stop.load(Ordering::Relaxed) {
                let read_at = Utc::now();
                for key in store.key_times().await.unwrap() {
                    first_seen.lock().unwrap().entry(key.kid.clone()).or_insert(read_at);
                    seen_keys.lock().unwrap().insert(key.kid.clone(), key);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });

    // The tokens of each replica go to a party of the other replica's JWKS, which also fetches
    // a copy as soon as its copy expires, whether tokens come or not.
    let parties = [replicas[1], replicas[0]].map(|addr| Arc::new(tokio::sync::Mutex::new(RelyingParty::new(addr))));
    let refresher = tokio::spawn({
        let (parties, stop) = (parties.clone(), Arc::clone(&stop_watching));
        async move {
            while !stop.load(Ordering::Relaxed) {
                for party in &parties {
                    party.lock().await.refresh().await;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let mut workers = Vec::new();
    for (from, addr) in replicas.into_iter().enumerate() {
        for _ in 0..WORKERS_PER_REPLICA {
            let (exchanger, party, stop) = (exchanger.clone(), Arc::clone(&parties[from]), Arc::clone(&stop_minting));
            workers.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let asked = Utc::now();
                    let token = exchanger.token(addr).await;
                    let (received, exp) = (Utc::now(), exp_of(&token));
                    party.lock().await.accept(Received { token, from, asked, received, exp }).await;
                }
            }));
        }
    }

    // Until several keys have signed, one has left the JWKS, and each replica has issued enough
    // tokens (however busy the machine is).
    let started = Instant::now();
    loop {
        let (mut signing, mut unpublished, mut fewest) = (BTreeSet::new(), 0, usize::MAX);
        for party in &parties {
            let party = party.lock().await;
            signing.extend(party.signing_kids.iter().cloned());
            unpublished += party.unpublished.len();
            fewest = fewest.min(party.received.len());
        }
        if signing.len() >= SIGNING_KEYS_WANTED && unpublished > 0 && fewest >= TOKENS_PER_REPLICA {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{} keys signed, {unpublished} left the JWKS and {fewest} tokens from a replica in {:?}",
            signing.len(),
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_minting.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    // The tokens still alive are checked against each new copy until they expire.
    let last_exp = {
        let mut last = 0;
        for party in &parties {
            last = last.max(party.lock().await.received.iter().map(|token| token.exp).max().unwrap_or(0));
        }
        last
    };
    eventually(Duration::from_secs(10), "every token has expired", || async { Utc::now().timestamp() > last_exp + 1 })
        .await;
    stop_watching.store(true, Ordering::Relaxed);
    watcher.await.unwrap();
    refresher.await.unwrap();

    let mut received = Vec::new();
    let mut failures = Vec::new();
    let (mut late, mut signing_kids) = (0, BTreeSet::new());
    for party in &parties {
        let mut party = party.lock().await;
        assert!(party.fetches >= 5, "a copy was fetched each time one expired: {}", party.fetches);
        received.append(&mut party.received);
        failures.append(&mut party.failures);
        late += party.late;
        signing_kids.extend(party.signing_kids.iter().cloned());
    }
    let seen: Vec<KeyTimes> = seen_keys.lock().unwrap().values().cloned().collect();
    if !failures.is_empty() {
        eprintln!("keys: {seen:#?}\nfirst seen by a read begun at: {:#?}", first_seen.lock().unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} failures over {} tokens: {:#?}",
        failures.len(),
        received.len(),
        &failures[..failures.len().min(20)]
    );
    assert!(late * 20 <= received.len(), "{late} of {} tokens expired before they were checked", received.len());
    assert!(signing_kids.len() >= SIGNING_KEYS_WANTED, "{signing_kids:?}");

    // Both replicas signed with the key the schedule names for the moment they signed.
    let timeline = KeyTimeline::new(seen.clone());
    for token in &received {
        let kid = header_kid(&token.token);
        let key = timeline.get(&kid).unwrap_or_else(|| panic!("{kid} was never stored"));
        let (from, until) = (key.times.activates_at, key.signs_until.unwrap_or(DateTime::<Utc>::MAX_UTC));
        assert!(
            from <= token.received && token.asked < until,
            "replica {} signed with {kid} between {} and {}, while it signed from {from} until {until}",
            token.from,
            token.asked,
            token.received
        );
    }
    // One key per rotation, whichever replica added it.
    let mut activations: Vec<DateTime<Utc>> = seen.iter().map(|key| key.activates_at).collect();
    activations.sort();
    for pair in activations.windows(2) {
        assert!(pair[1] - pair[0] >= delta(rotation), "two keys for one rotation: {activations:?}");
    }
    a.stop().await;
    b.stop().await;
}
