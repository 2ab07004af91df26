//! Conversions between the wire messages and domain values, and the validation of requests
//! that assembles domain values field by field.

use chrono::{DateTime, Utc};
use prost_types::Timestamp;
use uuid::Uuid;

use crate::{
    clients::NewClientRequest,
    domain::{
        CidrList, ClientChanges, DisplayName, MaxLifetime, PageRequest, PageSize, PageToken, PersonalClient, RoleSet,
        SearchFilter, Violations, quote,
    },
    error::Error,
    pb::iam as pb,
};

/// The fields an Update may change, as named in `update_mask` (camelCase accepted too).
const UPDATABLE: &str = "display_name, allow_source_cidr, scoped_roles, expires_time";

pub fn timestamp(at: DateTime<Utc>) -> Timestamp {
    Timestamp { seconds: at.timestamp(), nanos: at.timestamp_subsec_nanos() as i32 }
}

fn from_timestamp(ts: &Timestamp) -> Result<DateTime<Utc>, String> {
    u32::try_from(ts.nanos)
        .ok()
        .and_then(|nanos| DateTime::from_timestamp(ts.seconds, nanos))
        .ok_or_else(|| "is not a valid timestamp".to_owned())
}

impl From<PersonalClient> for pb::PersonalClient {
    fn from(client: PersonalClient) -> Self {
        Self {
            id: client.id.to_string(),
            client_id: client.client_id.into_string(),
            display_name: client.display_name.into_string(),
            user_id: client.user_id,
            allow_source_cidr: client.allow_source_cidr.to_strings(),
            scoped_roles: client.scoped_roles.to_strings(),
            expires_time: client.expires_at.map(timestamp),
            last_used_at: client.last_used_at.map(timestamp),
            created_at: Some(timestamp(client.created_at)),
            updated_at: Some(timestamp(client.updated_at)),
            deleted_at: client.deleted_at.map(timestamp),
        }
    }
}

/// A Create request, validated.
pub fn create_request(
    req: &pb::PersonalClientServiceCreateRequest,
    max_lifetime: &MaxLifetime,
    now: DateTime<Utc>,
) -> Result<NewClientRequest, Error> {
    let mut v = Violations::default();
    let display_name = v.field("display_name", DisplayName::parse(&req.display_name));
    let allow_source_cidr = v.list("allow_source_cidr", CidrList::parse(&req.allow_source_cidr));
    let scoped_roles = v.list("scoped_roles", RoleSet::parse(&req.scoped_roles));
    let lifetime = req.expires.as_ref().map(|d| (d.seconds, d.nanos));
    let expires_at = v.field("expires", max_lifetime.expiry_for_lifetime(lifetime, now));
    match (display_name, allow_source_cidr, scoped_roles, expires_at) {
        (Some(display_name), Some(allow_source_cidr), Some(scoped_roles), Some(expires_at)) if v.is_empty() => {
            Ok(NewClientRequest { display_name, allow_source_cidr, scoped_roles, expires_at })
        }
        _ => Err(Error::InvalidArgument(v.into_vec())),
    }
}

/// The id of a personal client as a request names it.
pub fn client_uuid(field: &str, id: &str) -> Result<Uuid, Error> {
    parse_uuid(id).map_err(|description| Error::invalid(field, description))
}

fn parse_uuid(id: &str) -> Result<Uuid, String> {
    if id.is_empty() {
        return Err("is required: the id of a personal client, as returned by Create".into());
    }
    Uuid::try_parse(id)
        .map_err(|_| format!("{} is not a personal client id (a UUID, as returned by Create)", quote(id)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UpdatePath {
    DisplayName,
    AllowSourceCidr,
    ScopedRoles,
    ExpiresTime,
}

fn update_path(path: &str) -> Result<UpdatePath, String> {
    match path {
        "display_name" | "displayName" => Ok(UpdatePath::DisplayName),
        "allow_source_cidr" | "allowSourceCidr" => Ok(UpdatePath::AllowSourceCidr),
        "scoped_roles" | "scopedRoles" => Ok(UpdatePath::ScopedRoles),
        "expires_time" | "expiresTime" => Ok(UpdatePath::ExpiresTime),
        "id" | "client_id" | "clientId" | "user_id" | "userId" | "last_used_at" | "lastUsedAt" | "created_at"
        | "createdAt" | "updated_at" | "updatedAt" | "deleted_at" | "deletedAt" => {
            Err(format!("{} is immutable; updatable paths: {UPDATABLE}", quote(path)))
        }
        _ => Err(format!(
            "{} is not a field of PersonalClient that can be updated; updatable paths: {UPDATABLE}",
            quote(path)
        )),
    }
}

/// An Update request, validated: which client, and what changes.
pub fn update_request(
    req: &pb::PersonalClientServiceUpdateRequest,
    max_lifetime: &MaxLifetime,
    now: DateTime<Utc>,
) -> Result<(Uuid, ClientChanges), Error> {
    let Some(client) = &req.client else {
        return Err(Error::invalid("client", "is required: set client.id and the fields to change"));
    };
    let mut v = Violations::default();
    let id = v.field("client.id", parse_uuid(&client.id));

    let mask = req.update_mask.as_ref().map(|m| m.paths.as_slice()).unwrap_or_default();
    let mut paths = Vec::new();
    if mask.is_empty() {
        // AIP-134: no mask means every field the request sets.
        let set = [
            (!client.display_name.is_empty(), UpdatePath::DisplayName),
            (!client.allow_source_cidr.is_empty(), UpdatePath::AllowSourceCidr),
            (!client.scoped_roles.is_empty(), UpdatePath::ScopedRoles),
            (client.expires_time.is_some(), UpdatePath::ExpiresTime),
        ];
        paths.extend(set.into_iter().filter(|(is_set, _)| *is_set).map(|(_, path)| path));
        if paths.is_empty() {
            v.push(
                "update_mask",
                format!("is empty and the request sets no updatable field; name fields from: {UPDATABLE}"),
            );
        }
    }
    for (index, path) in mask.iter().enumerate() {
        if let Some(path) = v.field(&format!("update_mask.paths[{index}]"), update_path(path))
            && !paths.contains(&path)
        {
            paths.push(path);
        }
    }

    let mut changes = ClientChanges::default();
    for path in paths {
        match path {
            UpdatePath::DisplayName => {
                changes.display_name = v.field("client.display_name", DisplayName::parse(&client.display_name));
            }
            UpdatePath::AllowSourceCidr => {
                changes.allow_source_cidr =
                    v.list("client.allow_source_cidr", CidrList::parse(&client.allow_source_cidr));
            }
            UpdatePath::ScopedRoles => {
                changes.scoped_roles = v.list("client.scoped_roles", RoleSet::parse(&client.scoped_roles));
            }
            UpdatePath::ExpiresTime => {
                let requested = client.expires_time.as_ref().map(from_timestamp).transpose();
                let checked = requested.and_then(|at| max_lifetime.check_expiry(at, now));
                changes.expires_at = v.field("client.expires_time", checked);
            }
        }
    }
    match id {
        Some(id) if v.is_empty() => Ok((id, changes)),
        _ => Err(Error::InvalidArgument(v.into_vec())),
    }
}

/// A List request of `caller`, validated: which page.
pub fn list_request(req: &pb::PersonalClientServiceListRequest, caller: &str) -> Result<PageRequest, Error> {
    let mut v = Violations::default();
    let size = v.field("page_size", PageSize::parse(req.page_size));
    let token = v.field("page_token", PageToken::decode(&req.page_token, caller, PageToken::LIST_QUERY));
    match (size, token) {
        (Some(size), Some(token)) => Ok(PageRequest { size, after: token.map(|t| t.after) }),
        _ => Err(Error::InvalidArgument(v.into_vec())),
    }
}

/// A Search request of `caller`, validated: the filter and which page.
pub fn search_request(
    req: &pb::PersonalClientSearchServiceSearchRequest,
    caller: &str,
) -> Result<(SearchFilter, PageRequest), Error> {
    let mut v = Violations::default();
    let text = v.field("query", SearchFilter::parse_text(&req.query));
    let ids: Vec<&str> = req.users.iter().map(|user| user.id.as_str()).collect();
    let users = v.list_of("users", ".id", SearchFilter::parse_users(&ids));
    let page_size = v.field("page_size", PageSize::parse(req.page_size));
    let (Some(text), Some(users), Some(page_size)) = (text, users, page_size) else {
        return Err(Error::InvalidArgument(v.into_vec()));
    };
    let filter = SearchFilter { text, users, include_deleted: req.include_deleted };
    match PageToken::decode(&req.page_token, caller, &filter.fingerprint()) {
        Ok(token) => Ok((filter, PageRequest { size: page_size, after: token.map(|t| t.after) })),
        Err(description) => Err(Error::invalid("page_token", description)),
    }
}
