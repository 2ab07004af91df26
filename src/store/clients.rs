//! Personal clients: create, read, page, update and revoke, each one statement, but for Update,
//! which reads the row first under a lock held to its change, to check what it may leave, and
//! Revoke on SQLite, which reads the row's `updated_at` under the write lock (see
//! [`Store::update_one`]). Search across users is in `search`.

use std::{collections::HashMap, sync::Arc};

use chrono::{DateTime, TimeDelta, Utc};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, EntityTrait,
    ExprTrait, QueryFilter, QueryOrder, QuerySelect, Select, Statement, TransactionTrait, UpdateMany,
    sea_query::{Expr, Func, OnConflict, SimpleExpr},
};
use tokio::sync::Mutex;
use tracing::{Instrument, instrument};
use uuid::Uuid;

use super::{
    Store,
    batch::Answers,
    begin_immediate,
    entity::personal_client::{self, Column, Networks, RoleNames},
    write_turn,
};
use crate::{
    domain::{
        CidrList, ClientChanges, ClientId, DisplayName, NewPersonalClient, Owner, PersonalClient, RoleSet,
        SearchFilter, round_to_micros,
    },
    error::Error,
};

/// How many random client ids Create tries before giving up (a collision is already rare).
const CLIENT_ID_ATTEMPTS: usize = 8;

impl Store {
    /// Stores a new credential under a fresh random client id, unless its owner already holds
    /// `max_held` that are not revoked (then `None`). Concurrent Creates are written together,
    /// in one transaction (one fsync), each answered once it is committed. The bound is exact
    /// for this process (the batch counts what it adds); on PostgreSQL, Creates of one user on
    /// several replicas at the same moment may each see the count below the bound.
    pub async fn create_client(
        &self,
        new: NewPersonalClient,
        public_host: &str,
        max_held: Option<u64>,
    ) -> Result<Option<PersonalClient>, Error> {
        self.batches.create.call(NewRow { new, public_host: public_host.to_owned(), max_held }).await
    }

    /// Client `id`, if it is [`visible_to`] `owner`.
    pub async fn get_client(&self, id: Uuid, owner: Owner<'_>) -> Result<PersonalClient, Error> {
        let owner = match owner {
            Owner::User(user) => Some(user.to_owned()),
            Owner::Anyone => None,
        };
        self.batches.by_id.call(Visible { id, owner }).await?.ok_or(Error::NotFound)
    }

    /// The clients' epoch as the database has it now, read by a statement that starts after this
    /// call does: a shard's stamp is drawn anew with every change that can make one of its
    /// clients unusable (see the migration that made it), on every replica's database alike.
    /// On SQLite, while nothing has committed since the last read, that read's epoch.
    pub async fn client_epoch(&self) -> Result<ClientEpoch, Error> {
        let Some(known) = &self.known_epoch else { return self.batches.epoch.call(()).await };
        let before = match known.current() {
            Ok(epoch) => return Ok(epoch),
            Err(before) => before,
        };
        let epoch = self.batches.epoch.call(()).await?;
        if let Some(before) = before {
            known.remember(before, &epoch);
        }
        Ok(epoch)
    }

    /// The client with OAuth2 client id `client_id`, deleted or not.
    pub async fn find_client(&self, client_id: &str) -> Result<Option<PersonalClient>, Error> {
        self.batches.by_client_id.call(client_id.to_owned()).await
    }

    /// The ids of the live clients whose public key is one of `public_keys` (one each, but for
    /// keys made twice), in one statement.
    #[instrument(skip_all, fields(keys = public_keys.len()))]
    pub async fn live_clients_with_keys(&self, public_keys: &[[u8; 32]]) -> Result<Vec<Uuid>, Error> {
        Ok(personal_client::Entity::find()
            .select_only()
            .column(Column::Id)
            .filter(Column::PublicKey.is_in(public_keys.iter().map(|key| key.to_vec())))
            .filter(not_revoked())
            .into_tuple::<Uuid>()
            .all(&self.db)
            .instrument(self.statement("SELECT", "personal_clients").span())
            .await?)
    }

    /// Up to `limit` clients of `user` that are not revoked, with ids after `after`, oldest
    /// first.
    #[instrument(skip_all, fields(%user))]
    pub async fn list_clients(
        &self,
        user: &str,
        after: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<PersonalClient>, Error> {
        let span = self.statement("SELECT", "personal_clients").span();
        if self.db.get_database_backend() == DbBackend::Sqlite
            && let Some(page) =
                super::sqlite_page::live_page(&self.db, user, after, limit).instrument(span.clone()).await?
        {
            return Ok(page);
        }
        let query = personal_client::Entity::find().filter(visible_to(Owner::User(user)));
        page_after(&self.db, query, after, limit).instrument(span).await
    }

    /// Applies `changes` to a client visible to `owner`, if `allowed` of the client as it is
    /// when its row is locked for the change (its error is the answer otherwise).
    #[instrument(skip_all, fields(%id))]
    pub async fn update_client(
        &self,
        id: Uuid,
        owner: &str,
        changes: &ClientChanges,
        allowed: &Precondition<'_>,
    ) -> Result<PersonalClient, Error> {
        let mut update = personal_client::Entity::update_many();
        if let Some(name) = &changes.display_name {
            update = update
                .col_expr(Column::DisplayName, Expr::value(name.as_str()))
                .col_expr(Column::DisplayNameFolded, Expr::value(SearchFilter::fold_case(name.as_str())));
        }
        if let Some(cidrs) = &changes.allow_source_cidr {
            update = update.col_expr(Column::AllowSourceCidr, Expr::value(Networks(cidrs.networks().to_vec())));
        }
        if let Some(roles) = &changes.scoped_roles {
            update = update.col_expr(Column::ScopedRoles, Expr::value(RoleNames(roles.to_strings())));
        }
        if let Some(roles) = &changes.owner_roles {
            update = update.col_expr(Column::OwnerRoles, Expr::value(RoleNames(roles.to_strings())));
        }
        if let Some(expires_at) = changes.expires_at {
            update = update.col_expr(Column::ExpiresAt, Expr::value(expires_at));
        }
        let span = self.statement("UPDATE", "personal_clients").span();
        self.update_one(id, Owner::User(owner), update, None, Some(allowed)).instrument(span).await
    }

    /// Revokes a client visible to `owner` at once; returns it as it now is.
    #[instrument(skip_all, fields(%id))]
    pub async fn delete_client(&self, id: Uuid, owner: Owner<'_>) -> Result<PersonalClient, Error> {
        let span = self.statement("UPDATE", "personal_clients").span();
        let revoke = personal_client::Entity::update_many();
        self.update_one(id, owner, revoke, Some(Column::DeletedAt), None).instrument(span).await
    }

    /// Runs `update` on client `id`, if visible to `owner`, as `UPDATE ... RETURNING` (SQLite and
    /// PostgreSQL both have it), so the row comes back from the statement that changed it. With a
    /// `precondition`, the row is read first under a lock held to the change, and changed only if
    /// the precondition holds of it.
    ///
    /// `updated_at` (and `also_stamp`, if given) becomes the row's next instant: now, or one
    /// microsecond after the row's current `updated_at` when that is not earlier. Taken from the
    /// clock alone it could move backwards: a replica's clock may run behind another's, and of
    /// two concurrent writes the one that read the clock first may commit second. So each
    /// acknowledged write of a row carries a later `updated_at` than every one acknowledged
    /// before it, and the surviving write the latest of all.
    async fn update_one(
        &self,
        id: Uuid,
        owner: Owner<'_>,
        update: UpdateMany<personal_client::Entity>,
        also_stamp: Option<Column>,
        precondition: Option<&Precondition<'_>>,
    ) -> Result<PersonalClient, Error> {
        let update = update.filter(Column::Id.eq(id)).filter(visible_to(owner));
        let stamped = |next: SimpleExpr| {
            let update = update.col_expr(Column::UpdatedAt, next.clone());
            match also_stamp {
                Some(column) => update.col_expr(column, next),
                None => update,
            }
        };
        let _turn = self.write_turn().await;
        let postgres = self.db.get_database_backend() == DbBackend::Postgres;
        let rows = if postgres && precondition.is_none() {
            // Evaluated on the row as the UPDATE locks it, after any concurrent writer of it
            // has committed.
            let a_microsecond_later = Expr::col(Column::UpdatedAt).add(Expr::cust("INTERVAL '1 microsecond'"));
            let next = Func::greatest([Expr::value(round_to_micros(Utc::now())), a_microsecond_later]);
            stamped(next.into()).exec_with_returning(&self.db).await?
        } else {
            // The row is read under a lock that lasts until the change is committed, taken up
            // front, so nothing changes it in between and there is nothing to upgrade or
            // deadlock on: on SQLite the write lock (`BEGIN IMMEDIATE`), for every process on
            // the file; on PostgreSQL the row's own (`SELECT ... FOR UPDATE`), for every replica.
            // SQLite keeps timestamps as text, to which SQL cannot add a microsecond, so the next
            // `updated_at` is worked out here.
            let txn = if postgres { self.db.begin().await? } else { begin_immediate(&self.db).await? };
            let mut current = personal_client::Entity::find_by_id(id).filter(visible_to(owner));
            if postgres {
                current = current.lock_exclusive();
            }
            let current = PersonalClient::try_from(current.one(&txn).await?.ok_or(Error::NotFound)?)?;
            if let Some(allowed) = precondition {
                allowed(&current)?;
            }
            let next = std::cmp::max(round_to_micros(Utc::now()), current.updated_at + TimeDelta::microseconds(1));
            let rows = stamped(Expr::value(next)).exec_with_returning(&txn).await?;
            txn.commit().await?;
            rows
        };
        rows.into_iter().next().ok_or(Error::NotFound)?.try_into()
    }
}

/// What must hold of a client, as it is when locked for a change, for the change to be made.
pub type Precondition<'a> = dyn Fn(&PersonalClient) -> Result<(), Error> + Send + Sync + 'a;

/// Keyset paging: up to `limit` rows of `query` with ids after `after`, in id (creation) order.
pub(super) async fn page_after(
    db: &DatabaseConnection,
    mut query: Select<personal_client::Entity>,
    after: Option<Uuid>,
    limit: u64,
) -> Result<Vec<PersonalClient>, Error> {
    if let Some(after) = after {
        query = query.filter(Column::Id.gt(after));
    }
    query.order_by_asc(Column::Id).limit(limit).all(db).await?.into_iter().map(TryInto::try_into).collect()
}

/// Not revoked: the one way every query says it. Revoked rows stay, with `deleted_at` set.
pub(super) fn not_revoked() -> SimpleExpr {
    Column::DeletedAt.is_null()
}

/// What `owner` may read and change: clients not revoked, and, for a user, their own. Every
/// lookup by id, page and change filters by it in its statement.
fn visible_to(owner: Owner<'_>) -> Condition {
    let not_revoked = Condition::all().add(not_revoked());
    match owner {
        Owner::User(user) => not_revoked.add(Column::UserId.eq(user)),
        Owner::Anyone => not_revoked,
    }
}

impl TryFrom<personal_client::Model> for PersonalClient {
    type Error = Error;

    fn try_from(row: personal_client::Model) -> Result<Self, Error> {
        let public_key: [u8; 32] =
            row.public_key.as_slice().try_into().map_err(|_| {
                Error::internal(format!("the public key of personal client {} is not 32 bytes", row.id))
            })?;
        Ok(Self {
            id: row.id,
            client_id: ClientId::from_stored(row.client_id),
            user_id: row.user_id,
            display_name: DisplayName::from_stored(row.display_name),
            allow_source_cidr: CidrList::from_networks(row.allow_source_cidr.0),
            scoped_roles: RoleSet::from_claims(&row.scoped_roles.0),
            owner_roles: RoleSet::from_claims(&row.owner_roles.0),
            public_key,
            expires_at: row.expires_at,
            last_used_at: row.last_used_at,
            created_at: row.created_at,
            updated_at: row.updated_at,
            deleted_at: row.deleted_at,
        })
    }
}

/// A Create waiting for its batch.
#[derive(Debug)]
pub(super) struct NewRow {
    new: NewPersonalClient,
    public_host: String,
    max_held: Option<u64>,
}

/// A Get waiting for its batch: client `id`, as visible to `owner` (`None`: anyone).
#[derive(Debug)]
pub(super) struct Visible {
    id: Uuid,
    owner: Option<String>,
}

/// Clients by id, each as visible to its caller, in one query. A row that comes back is filed
/// under its owner and under "anyone": a caller finds it only under its own key, which the
/// statement made sure it may see.
pub(super) async fn clients_by_id(
    db: DatabaseConnection,
    asked: Vec<Visible>,
) -> Result<Answers<PersonalClient>, DbErr> {
    let visible = asked.iter().fold(Condition::any(), |any, visible| {
        let owner = visible.owner.as_deref().map_or(Owner::Anyone, Owner::User);
        any.add(Condition::all().add(Column::Id.eq(visible.id)).add(visible_to(owner)))
    });
    let rows = personal_client::Entity::find().filter(visible).all(&db).await?;
    let mut found: HashMap<(Uuid, Option<String>), personal_client::Model> = HashMap::new();
    for row in rows {
        found.insert((row.id, None), row.clone());
        found.insert((row.id, Some(row.user_id.clone())), row);
    }
    Ok(asked
        .into_iter()
        .map(|visible| found.get(&(visible.id, visible.owner)).cloned().map(PersonalClient::try_from).transpose())
        .collect())
}

/// Clients by OAuth2 client id, in one query.
pub(super) async fn clients_by_client_id(
    db: DatabaseConnection,
    client_ids: Vec<String>,
) -> Result<Answers<PersonalClient>, DbErr> {
    let rows =
        personal_client::Entity::find().filter(Column::ClientId.is_in(client_ids.iter().cloned())).all(&db).await?;
    Ok(answer_each(&client_ids, rows, |row| row.client_id.clone()))
}

/// The clients' epoch, once for every caller of a batch: the stamps of the sixteen shards, in
/// one row.
pub(super) async fn client_epoch(
    db: DatabaseConnection,
    callers: Vec<()>,
) -> Result<Vec<Result<ClientEpoch, Error>>, DbErr> {
    let backend = db.get_database_backend();
    let concatenated = if backend == DbBackend::Postgres { "string_agg" } else { "group_concat" };
    let sql = format!("SELECT {concatenated}(id || ':' || stamp, ',') FROM client_epoch");
    let row = db.query_one_raw(Statement::from_string(backend, sql)).await?;
    let text: Option<String> = row.map(|row| row.try_get_by_index(0)).transpose()?.flatten();
    let epoch = text
        .as_deref()
        .and_then(ClientEpoch::parse)
        .ok_or_else(|| DbErr::Custom("client_epoch does not hold the stamps of its 16 shards (migration 8)".into()))?;
    Ok(callers.iter().map(|()| Ok(epoch.clone())).collect())
}

/// The stamps of the clients' epoch, one per shard (see migration 8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientEpoch([u128; 16]);

impl ClientEpoch {
    /// From `shard:stamp` pairs, in any order; `None` unless each of the 16 shards is there.
    fn parse(text: &str) -> Option<Self> {
        let mut stamps = [None; 16];
        for pair in text.split(',') {
            let (shard, stamp) = pair.split_once(':')?;
            let shard: usize = shard.parse().ok()?;
            *stamps.get_mut(shard)? = Some(u128::from_str_radix(stamp, 16).ok()?);
        }
        let mut all = [0; 16];
        for (stamp, found) in all.iter_mut().zip(stamps) {
            *stamp = found?;
        }
        Some(Self(all))
    }

    /// The stamp of the shard of the client `id`: its id's last hex digit.
    pub fn stamp_of(&self, id: Uuid) -> u128 {
        self.0[usize::from(id.as_bytes()[15] & 15)]
    }
}

/// One answer per key, in the keys' order: the row with that key, if any (a key asked for twice
/// gets the row twice).
fn answer_each<K: Eq + std::hash::Hash>(
    keys: &[K],
    rows: Vec<personal_client::Model>,
    key_of: impl Fn(&personal_client::Model) -> K,
) -> Answers<PersonalClient> {
    let found: HashMap<K, personal_client::Model> = rows.into_iter().map(|row| (key_of(&row), row)).collect();
    keys.iter().map(|key| found.get(key).cloned().map(PersonalClient::try_from).transpose()).collect()
}

/// Writes a batch of Creates in one transaction. Each user's bound is checked against what the
/// database holds plus what this batch adds before it; a client id already taken is drawn again.
pub(super) async fn insert_clients(
    db: DatabaseConnection,
    writer: Option<Arc<Mutex<()>>>,
    rows: Vec<NewRow>,
) -> Result<Answers<PersonalClient>, DbErr> {
    let now = round_to_micros(Utc::now());
    let _turn = write_turn(writer.as_ref()).await;
    let txn = begin_immediate(&db).await?;
    let held =
        held_by(&txn, rows.iter().filter(|row| row.max_held.is_some()).map(|row| row.new.user_id.as_str())).await?;
    let mut added: HashMap<&str, u64> = HashMap::new();
    let mut answers: Vec<Result<Option<PersonalClient>, Error>> = Vec::with_capacity(rows.len());
    let mut pending = Vec::new();
    for (at, row) in rows.iter().enumerate() {
        let user = row.new.user_id.as_str();
        let count = held.get(user).copied().unwrap_or(0) + added.get(user).copied().unwrap_or(0);
        if row.max_held.is_some_and(|max| count >= max) {
            answers.push(Ok(None));
            continue;
        }
        *added.entry(user).or_default() += 1;
        answers.push(Err(Error::internal(format!("no free client id after {CLIENT_ID_ATTEMPTS} attempts"))));
        pending.push(at);
    }
    for _ in 0..CLIENT_ID_ATTEMPTS {
        if pending.is_empty() {
            break;
        }
        let ids: Vec<Uuid> = pending.iter().map(|_| Uuid::now_v7()).collect();
        let models = pending.iter().zip(&ids).map(|(&at, &id)| new_model(&rows[at], id, now));
        let inserted = match personal_client::Entity::insert_many(models)
            .on_conflict(OnConflict::new().do_nothing().to_owned())
            .exec_with_returning(&txn)
            .await
        {
            Ok(inserted) => inserted,
            Err(DbErr::RecordNotInserted) => Vec::new(),
            Err(err) => return Err(err),
        };
        // A row that did not come back drew a client id already taken; it draws again.
        let mut by_id: HashMap<Uuid, personal_client::Model> = inserted.into_iter().map(|row| (row.id, row)).collect();
        let mut still = Vec::new();
        for (at, id) in pending.into_iter().zip(ids) {
            match by_id.remove(&id) {
                Some(row) => answers[at] = PersonalClient::try_from(row).map(Some),
                None => still.push(at),
            }
        }
        pending = still;
    }
    txn.commit().await?;
    Ok(answers)
}

/// The row Create writes for `row`, under id `id` and a freshly drawn client id.
fn new_model(row: &NewRow, id: Uuid, now: DateTime<Utc>) -> personal_client::ActiveModel {
    let new = &row.new;
    personal_client::ActiveModel {
        id: Set(id),
        client_id: Set(ClientId::generate(&row.public_host).into_string()),
        user_id: Set(new.user_id.clone()),
        display_name: Set(new.display_name.as_str().to_owned()),
        display_name_folded: Set(SearchFilter::fold_case(new.display_name.as_str())),
        allow_source_cidr: Set(Networks(new.allow_source_cidr.networks().to_vec())),
        scoped_roles: Set(RoleNames(new.scoped_roles.to_strings())),
        owner_roles: Set(RoleNames(new.owner_roles.to_strings())),
        public_key: Set(new.public_key.to_vec()),
        expires_at: Set(new.expires_at),
        last_used_at: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
        deleted_at: Set(None),
    }
}

/// How many clients that are not revoked each of `users` holds (users holding none are absent).
async fn held_by<'a>(
    txn: &DatabaseTransaction,
    users: impl Iterator<Item = &'a str>,
) -> Result<HashMap<String, u64>, DbErr> {
    let mut users: Vec<&str> = users.collect();
    if users.is_empty() {
        return Ok(HashMap::new());
    }
    users.sort_unstable();
    users.dedup();
    let counts: Vec<(String, i64)> = personal_client::Entity::find()
        .select_only()
        .column(Column::UserId)
        .column_as(Column::Id.count(), "held")
        .filter(Column::UserId.is_in(users))
        .filter(not_revoked())
        .group_by(Column::UserId)
        .into_tuple()
        .all(txn)
        .await?;
    Ok(counts.into_iter().map(|(user, held)| (user, u64::try_from(held).unwrap_or(0))).collect())
}
