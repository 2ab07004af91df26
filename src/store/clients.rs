//! Personal clients: create, read, page, update and revoke, each one statement (on SQLite,
//! Update and Revoke read the row's `updated_at` first, under the write lock; see
//! [`Store::update_one`]). Search across users is in `search`.

use chrono::{TimeDelta, Utc};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, Condition, DatabaseConnection, DbBackend, EntityTrait, ExprTrait, QueryFilter, QueryOrder,
    QuerySelect, Select, SqlErr, SqliteTransactionMode, TransactionOptions, TransactionTrait, UpdateMany,
    sea_query::{Expr, Func, SimpleExpr},
};
use tracing::instrument;
use uuid::Uuid;

use super::{
    Store,
    entity::personal_client::{self, Column, Networks, RoleNames},
};
use crate::{
    Error,
    domain::{
        CidrList, ClientChanges, ClientId, DisplayName, NewPersonalClient, Owner, PersonalClient, RoleSet,
        SearchFilter, round_to_micros,
    },
};

/// How many random client ids Create tries before giving up (a collision is already rare).
const CLIENT_ID_ATTEMPTS: usize = 8;

impl Store {
    /// Stores a new credential under a fresh random client id, unless its owner already holds
    /// `max_held` that are not revoked (then `None`). The count and the insert are one step for
    /// this process's SQLite writers; on PostgreSQL, concurrent Creates of one user may each see
    /// the count below the bound, so it can be passed by the number of them in flight.
    #[instrument(skip_all, fields(user_id = %new.user_id))]
    pub async fn create_client(
        &self,
        new: &NewPersonalClient,
        public_host: &str,
        max_held: Option<u64>,
    ) -> Result<Option<PersonalClient>, Error> {
        let now = round_to_micros(Utc::now());
        let _turn = self.write_turn().await;
        if let Some(max_held) = max_held {
            // Whether a `max_held`-th such row exists: reads one row, whatever the count.
            let last_allowed = personal_client::Entity::find()
                .select_only()
                .column(Column::Id)
                .filter(Column::UserId.eq(new.user_id.as_str()))
                .filter(Column::DeletedAt.is_null())
                .offset(max_held - 1)
                .limit(1)
                .into_tuple::<Uuid>()
                .one(&self.db)
                .await?;
            if last_allowed.is_some() {
                return Ok(None);
            }
        }
        for _ in 0..CLIENT_ID_ATTEMPTS {
            let row = personal_client::ActiveModel {
                id: Set(Uuid::now_v7()),
                client_id: Set(ClientId::generate(public_host).into_string()),
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
            };
            match personal_client::Entity::insert(row).exec_with_returning(&self.db).await {
                Ok(row) => return row.try_into().map(Some),
                Err(err) if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(Error::internal(format!("no free client id after {CLIENT_ID_ATTEMPTS} attempts")))
    }

    /// A live (not deleted) client of `owner`.
    #[instrument(skip_all, fields(%id))]
    pub async fn get_client(&self, id: Uuid, owner: Owner<'_>) -> Result<PersonalClient, Error> {
        personal_client::Entity::find_by_id(id)
            .filter(live(owner))
            .one(&self.db)
            .await?
            .ok_or(Error::NotFound)?
            .try_into()
    }

    /// The client with OAuth2 client id `client_id`, deleted or not.
    #[instrument(skip_all)]
    pub async fn find_client(&self, client_id: &str) -> Result<Option<PersonalClient>, Error> {
        personal_client::Entity::find()
            .filter(Column::ClientId.eq(client_id))
            .one(&self.db)
            .await?
            .map(PersonalClient::try_from)
            .transpose()
    }

    /// Up to `limit` live clients of `user` with ids after `after`, oldest first.
    #[instrument(skip_all, fields(%user))]
    pub async fn list_clients(
        &self,
        user: &str,
        after: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<PersonalClient>, Error> {
        page_after(&self.db, personal_client::Entity::find().filter(live(Owner::User(user))), after, limit).await
    }

    /// Applies `changes` to a live client of `owner`.
    #[instrument(skip_all, fields(%id))]
    pub async fn update_client(&self, id: Uuid, owner: &str, changes: &ClientChanges) -> Result<PersonalClient, Error> {
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
        self.update_one(id, Owner::User(owner), update, None).await
    }

    /// Revokes a live client of `owner` at once; returns it as it now is.
    #[instrument(skip_all, fields(%id))]
    pub async fn delete_client(&self, id: Uuid, owner: Owner<'_>) -> Result<PersonalClient, Error> {
        self.update_one(id, owner, personal_client::Entity::update_many(), Some(Column::DeletedAt)).await
    }

    /// Runs `update` on the live client `id` of `owner` as `UPDATE ... RETURNING` (SQLite and
    /// PostgreSQL both have it), so the row comes back from the statement that changed it.
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
    ) -> Result<PersonalClient, Error> {
        let update = update.filter(Column::Id.eq(id)).filter(live(owner));
        let stamped = |next: SimpleExpr| {
            let update = update.col_expr(Column::UpdatedAt, next.clone());
            match also_stamp {
                Some(column) => update.col_expr(column, next),
                None => update,
            }
        };
        let _turn = self.write_turn().await;
        let rows = if self.db.get_database_backend() == DbBackend::Postgres {
            // Evaluated on the row as the UPDATE locks it, after any concurrent writer of it
            // has committed.
            let a_microsecond_later = Expr::col(Column::UpdatedAt).add(Expr::cust("INTERVAL '1 microsecond'"));
            let next = Func::greatest([Expr::value(round_to_micros(Utc::now())), a_microsecond_later]);
            stamped(next.into()).exec_with_returning(&self.db).await?
        } else {
            // SQLite keeps timestamps as text, to which SQL cannot add a microsecond. The write
            // lock, taken up front, makes reading the current value and writing the next one a
            // single step for every process on the file, with nothing to upgrade or deadlock on.
            let immediate = TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..TransactionOptions::default()
            };
            let txn = self.db.begin_with_options(immediate).await?;
            let current = personal_client::Entity::find_by_id(id)
                .filter(live(owner))
                .select_only()
                .column(Column::UpdatedAt)
                .into_tuple::<chrono::DateTime<Utc>>()
                .one(&txn)
                .await?
                .ok_or(Error::NotFound)?;
            let next = std::cmp::max(round_to_micros(Utc::now()), current + TimeDelta::microseconds(1));
            let rows = stamped(Expr::value(next)).exec_with_returning(&txn).await?;
            txn.commit().await?;
            rows
        };
        rows.into_iter().next().ok_or(Error::NotFound)?.try_into()
    }
}

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

/// Not deleted, and belonging to `owner`.
fn live(owner: Owner<'_>) -> Condition {
    let not_deleted = Condition::all().add(Column::DeletedAt.is_null());
    match owner {
        Owner::User(user) => not_deleted.add(Column::UserId.eq(user)),
        Owner::Anyone => not_deleted,
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
