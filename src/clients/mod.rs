//! The rules of personal clients (SPEC §3 and §4): what each call may do for its caller, as
//! [`access`] decides, on validated domain values, through the store.

pub mod access;
mod leaked;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{
    domain::{
        CidrList, ClientChanges, ClientSecret, DisplayName, NewPersonalClient, Page, PageRequest, PageToken,
        PersonalClient, Principal, Role, RoleSet, SearchFilter, expired,
    },
    error::Error,
    rate::{KeyedLimit, RateLimit},
    store::Store,
};
use access::Access;
pub use leaked::{MAX_SECRETS as MAX_REPORTED_SECRETS, Report, Reporter};

/// Whether a personal client may still be used: what the bearer check asks of every token a
/// personal client obtained, on every call, so a revocation on any replica refuses its tokens at
/// once.
///
/// What a replica read of a usable client is kept with the stamp its shard of the clients' epoch
/// had just before it was read, and used while a read of the epoch, made after the call began,
/// still finds that stamp. The database draws a shard's stamp anew, in the transaction that
/// revokes a client of the shard or changes its owner or expiry, whichever replica or writer
/// makes the change; so a revocation that has committed is seen on the next call anywhere, and
/// a call costs one read of sixteen stamps (shared with every call waiting at that moment; on
/// SQLite, none while nothing has committed since the last) instead of the client's row.
#[derive(Debug, Clone)]
pub struct ClientStatus {
    store: Store,
    usable: Arc<quick_cache::sync::Cache<String, Arc<Usable>>>,
}

/// What is kept of a client found usable, and the stamp of its shard it was read at.
#[derive(Debug)]
struct Usable {
    stamp: u128,
    id: Uuid,
    user_id: String,
    expires_at: Option<DateTime<Utc>>,
}

/// How many usable clients a replica keeps (about 150 bytes each); the least used make room.
const USABLE_CLIENTS: usize = 16_384;

impl ClientStatus {
    pub fn new(store: Store) -> Self {
        Self { store, usable: Arc::new(quick_cache::sync::Cache::new(USABLE_CLIENTS)) }
    }

    /// Whether `client_id` exists, belongs to `user`, and is neither revoked nor expired at
    /// `now`.
    pub async fn is_usable(&self, client_id: &str, user: &str, now: DateTime<Utc>) -> Result<bool, Error> {
        // Read before the row: a change committed after this read moves the epoch past it, so
        // what the row then says is kept no longer than until the next call.
        let epoch = self.store.client_epoch().await?;
        if let Some(usable) = self.usable.get(client_id)
            && usable.stamp == epoch.stamp_of(usable.id)
        {
            return Ok(usable.user_id == user && !expired(usable.expires_at, now));
        }
        let Some(client) = self.store.find_client(client_id).await? else { return Ok(false) };
        if client.check_usable(now).is_err() {
            return Ok(false);
        }
        let (id, user_id, expires_at) = (client.id, client.user_id, client.expires_at);
        let matches = user_id == user;
        let stamp = epoch.stamp_of(id);
        self.usable.insert(client_id.to_owned(), Arc::new(Usable { stamp, id, user_id, expires_at }));
        Ok(matches)
    }
}

/// A valid Create request.
#[derive(Debug)]
pub struct NewClientRequest {
    pub display_name: DisplayName,
    pub allow_source_cidr: CidrList,
    pub scoped_roles: RoleSet,
    pub expires_at: Option<DateTime<Utc>>,
}

/// What the service's configuration says about personal clients.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub admin_role: Role,
    /// Host in client ids (`...@HOST/pcc`).
    pub public_host: String,
    /// Namespace in secrets (`secret-token:NAMESPACE:v1:...`).
    pub secret_namespace: String,
    /// Most credentials one user may hold that are not revoked, if there is a bound.
    pub max_clients_per_user: Option<u32>,
    /// How often one user may call Create.
    pub create_rate_per_user: RateLimit,
    /// How often one source address may report leaked secrets.
    pub revoke_rate_per_source: RateLimit,
    /// Proxies whose `X-Forwarded-For` is believed, to find a reporter's address.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// Personal clients as their owners and admins see them.
#[derive(Debug, Clone)]
pub struct PersonalClients {
    store: Store,
    settings: ClientSettings,
    creates: Arc<KeyedLimit<String>>,
    /// Reports of leaked secrets, per source network.
    reports: Arc<KeyedLimit<std::net::IpAddr>>,
}

impl PersonalClients {
    pub fn new(store: Store, settings: ClientSettings) -> Self {
        let creates = Arc::new(KeyedLimit::new(settings.create_rate_per_user, "Create calls per user"));
        let reports =
            Arc::new(KeyedLimit::new(settings.revoke_rate_per_source, "reports of leaked secrets per source address"));
        Self { store, settings, creates, reports }
    }

    /// Forgets the Create and report counts of users and sources that have been quiet.
    pub fn maintain(&self) {
        self.creates.forget_idle();
        self.reports.forget_idle();
    }

    fn access<'a>(&'a self, caller: &'a Principal) -> Access<'a> {
        Access::of(caller, &self.settings.admin_role)
    }

    /// Creates a credential for the caller; its secret is returned this once and never kept.
    pub async fn create(
        &self,
        caller: &Principal,
        request: NewClientRequest,
    ) -> Result<(PersonalClient, ClientSecret), Error> {
        let owner = self.access(caller).may_create(&request.scoped_roles)?;
        self.creates.check(&owner.to_owned())?;
        let (secret, public_key) = ClientSecret::generate(&self.settings.secret_namespace);
        let new = NewPersonalClient {
            user_id: owner.to_owned(),
            display_name: request.display_name,
            allow_source_cidr: request.allow_source_cidr,
            scoped_roles: request.scoped_roles,
            owner_roles: caller.roles.clone(),
            expires_at: request.expires_at,
            public_key: public_key.to_bytes(),
        };
        let max_held = self.settings.max_clients_per_user;
        let created = self.store.create_client(new, &self.settings.public_host, max_held.map(u64::from)).await?;
        let client = created.ok_or_else(|| {
            Error::QuotaExceeded(format!(
                "you hold {} credentials, the most one user may; revoke one you no longer use first",
                max_held.unwrap_or_default()
            ))
        })?;
        tracing::debug!(user_id = %client.user_id, client_id = %client.client_id, id = %client.id, "personal client created");
        Ok((client, secret))
    }

    pub async fn get(&self, caller: &Principal, id: Uuid) -> Result<PersonalClient, Error> {
        self.store.get_client(id, self.access(caller).readable()).await
    }

    pub async fn list(&self, caller: &Principal, page: PageRequest) -> Result<Page, Error> {
        let user = self.access(caller).listable();
        let rows = self.store.list_clients(user, page.after, page.rows_to_read()).await?;
        Ok(Page::from_rows(rows, page, user, PageToken::LIST_QUERY))
    }

    /// Applies `changes` to one of the caller's clients. Checked against the client as it is,
    /// under the lock of the change: an expired client is not renewed, and the client is left
    /// with no role the caller does not hold now, whichever fields change.
    pub async fn update(&self, caller: &Principal, id: Uuid, changes: ClientChanges) -> Result<PersonalClient, Error> {
        let access = self.access(caller);
        let owner = access.changeable(changes.scoped_roles.as_ref())?;
        // A credential's roles are its owner's as of the last change to them: an owner who has
        // lost a role and clears the scoped roles does not get the lost role back.
        let owner_roles = changes.scoped_roles.is_some().then(|| caller.roles.clone());
        let changes = ClientChanges { owner_roles, ..changes };
        let now = Utc::now();
        let allowed = |current: &PersonalClient| {
            current.check_renewal(&changes, now).map_err(Error::FailedPrecondition)?;
            access.may_leave(current.token_roles_after(&changes))
        };
        let client = self.store.update_client(id, owner, &changes, &allowed).await?;
        tracing::debug!(user_id = %client.user_id, client_id = %client.client_id, %id, "personal client updated");
        Ok(client)
    }

    /// Revokes a client at once: its assertions and the tokens it obtained stop working.
    pub async fn delete(&self, caller: &Principal, id: Uuid) -> Result<(), Error> {
        let client = self.store.delete_client(id, self.access(caller).revocable()?).await?;
        if client.user_id == caller.user_id {
            tracing::debug!(user_id = %client.user_id, client_id = %client.client_id, %id, "personal client deleted");
        } else {
            tracing::warn!(
                admin = %caller.user_id, owner = %client.user_id, client_id = %client.client_id, %id,
                "personal client revoked by an admin"
            );
        }
        Ok(())
    }

    /// Clients across users matching `filter`; page tokens are bound to the caller and filter.
    pub async fn search(&self, caller: &Principal, filter: &SearchFilter, page: PageRequest) -> Result<Page, Error> {
        self.access(caller).may_search()?;
        let rows = self.store.search_clients(filter, page.after, page.rows_to_read()).await?;
        Ok(Page::from_rows(rows, page, &caller.user_id, &filter.fingerprint()))
    }
}
