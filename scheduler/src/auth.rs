//! API authentication: bearer tokens, who holds them, and which calls each may make.
//!
//! Callers: the admin token (made at first start, `<data_dir>/admin-token`, 0600),
//! tokens made with `skiff token create` (admin or read-only), the join token
//! (only to register a node), and the credential each node gets at registration
//! (only for that node's own routes, the endpoints table and blob downloads).
//! Tokens are stored as their SHA-256 only, in the `tokens` and
//! `node_credentials` tables.
//!
//! Every route is classified in [`need`], by method and matched route; a route it
//! does not name is a read (GET, HEAD) or an admin call (anything else), so a new
//! route is never open by accident.

use crate::Core;
use crate::error::ApiError;
use crate::store::{Store, StoreError};
use anyhow::Context;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use skiff_api::{TokenCreated, TokenInfo, TokenRequest, TokenRole, now_ms};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

/// The name of the token made at first start.
pub const ADMIN: &str = "admin";
/// Most API tokens a server keeps.
const MAX_TOKENS: usize = 1_000;

/// Who made a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    /// An admin token: every user call.
    Admin,
    /// A read-only token: GET and HEAD.
    ReadOnly,
    /// The join token: registration only.
    Join,
    /// A node's own credential.
    Node(String),
    /// A token scoped to one namespace, or a cluster-wide `deploy` token
    /// (`namespace` `*`) (#20).
    Scoped { role: TokenRole, namespace: String },
}

impl Caller {
    /// The one namespace this caller may see, if it is scoped to one.
    pub(crate) fn namespace(&self) -> Option<&str> {
        match self {
            Caller::Scoped { namespace, .. } if namespace != "*" => Some(namespace),
            _ => None,
        }
    }
}

/// Whether a route is about objects in one namespace (#20): a token scoped to
/// a namespace may call it there only; every other route is the cluster's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Deployments, replicas, secrets, volumes, jobs (their runs and logs),
    /// crons, events (and the namespace itself).
    Namespaced,
    /// Nodes, images, namespaces, servers, tokens, blobs, the dashboard.
    Cluster,
}

/// Whether `route` is namespaced. With [`need`], the route table's word on access.
pub(crate) fn scope(route: &str) -> Scope {
    const NAMESPACED: [&str; 7] =
        ["/v1/deployments", "/v1/replicas", "/v1/secrets", "/v1/volumes", "/v1/jobs", "/v1/crons", "/v1/events"];
    if NAMESPACED.iter().any(|p| route == *p || route.starts_with(&format!("{p}/"))) || route == "/v1/namespaces/{ns}" {
        Scope::Namespaced
    } else {
        Scope::Cluster
    }
}

/// What role a scoped token needs for `method` on `route`, beyond [`need`]'s
/// word: `None` when no scoped token may make the call.
pub(crate) fn scoped_role(method: &Method, route: &str) -> Option<TokenRole> {
    let read = method == Method::GET || method == Method::HEAD;
    match (scope(route), need(method, route)) {
        // A namespace's quota: its admin's (creating one is a cluster admin's,
        // checked in the handler).
        (Scope::Namespaced, _) if route == "/v1/namespaces/{ns}" && method == Method::DELETE => None,
        (Scope::Namespaced, Need::Admin) if route == "/v1/namespaces/{ns}" => Some(TokenRole::Admin),
        (Scope::Namespaced, Need::Read) => Some(TokenRole::ReadOnly),
        (Scope::Namespaced, Need::Admin) => Some(TokenRole::Deploy),
        (Scope::Namespaced, _) => None,
        // Listing namespaces shows a scoped token its own; its tokens are its admin's.
        (Scope::Cluster, _) if route == "/v1/namespaces" && read => Some(TokenRole::ReadOnly),
        (Scope::Cluster, _) if route == "/v1/tokens" || route == "/v1/tokens/{name}" => Some(TokenRole::Admin),
        // Uploading a Wasm component is part of deploying it.
        (Scope::Cluster, _) if route == "/v1/blobs/{digest}" => {
            Some(if read { TokenRole::ReadOnly } else { TokenRole::Deploy })
        }
        (Scope::Cluster, _) if route == "/v1/openapi.json" => Some(TokenRole::ReadOnly),
        // The dashboard's stream: the token's namespace's part of the cluster
        // (filtered in `dashboard::watch`).
        (Scope::Cluster, _) if route == "/v1/watch" => Some(TokenRole::ReadOnly),
        (Scope::Cluster, _) => None,
    }
}

/// Whether `role` includes `needed`.
fn covers(role: TokenRole, needed: TokenRole) -> bool {
    let rank = |r: TokenRole| match r {
        TokenRole::ReadOnly => 0,
        TokenRole::Deploy => 1,
        TokenRole::Admin => 2,
    };
    rank(role) >= rank(needed)
}

/// What a route asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// Anyone (health check, the dashboard's page and assets).
    Open,
    /// Prometheus scrapes: open with `--metrics-open`, else a read token.
    Metrics,
    /// Any user token (admin or read-only).
    Read,
    /// The admin token.
    Admin,
    /// The join token, or a node's credential re-registering that node.
    Register,
    /// The credential of the node named in the path.
    NodeSelf,
    /// Any node's credential or a user token (the endpoints table, blob downloads).
    NodeOrRead,
    /// Any node's credential or the admin token (activating a deployment at zero).
    NodeOrAdmin,
}

/// What `method` on the matched `route` needs. Every route of `http::router` is
/// named here; what is not is a read or an admin call by its method.
pub(crate) fn need(method: &Method, route: &str) -> Need {
    let read = method == Method::GET || method == Method::HEAD;
    match route {
        "/healthz" | "/" | "/assets/{file}" => Need::Open,
        // What the API is, not what is in it: a read token, as Kubernetes asks for
        // its /openapi/v3.
        "/v1/openapi.json" => Need::Read,
        "/metrics" | "/v1/prometheus/targets" => Need::Metrics,
        "/v1/nodes/register" => Need::Register,
        "/v1/nodes/{name}/heartbeat" | "/v1/nodes/{name}/assignments" => Need::NodeSelf,
        "/v1/endpoints" if read => Need::NodeOrRead,
        "/v1/blobs/{digest}" if read => Need::NodeOrRead,
        // An ingress holding a request for a deployment at zero.
        "/v1/deployments/{name}/activate" => Need::NodeOrAdmin,
        // Token names and roles are an admin's business even to read.
        "/v1/tokens" | "/v1/tokens/{name}" => Need::Admin,
        // A shell in a workload, or a connection to its ports: an admin's,
        // until the `deploy` role comes (namespaces/RBAC).
        "/v1/replicas/{id}/exec" | "/v1/replicas/{id}/port-forward" => Need::Admin,
        // Taking a node out of service moves other people's replicas: admin
        // (the issue's deploy role does not exist yet), never a node itself.
        "/v1/nodes/{name}/cordon" | "/v1/nodes/{name}/uncordon" | "/v1/nodes/{name}/drain" | "/v1/rebalance" => {
            Need::Admin
        }
        _ if read => Need::Read,
        _ => Need::Admin,
    }
}

/// The tokens the server knows, by their SHA-256.
pub(crate) struct Auth {
    join: [u8; 32],
    users: Mutex<Vec<User>>,
    /// Node credential hash → node name. Looked up by hash: the hash of a random
    /// 256-bit secret leaks nothing that helps guess another, so a map's
    /// timing is harmless here (and a cluster has thousands of nodes).
    nodes: Mutex<HashMap<[u8; 32], String>>,
    /// `/metrics` and `/v1/prometheus/targets` without a token.
    pub metrics_open: bool,
}

struct User {
    hash: [u8; 32],
    info: TokenInfo,
}

pub(crate) fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    hex::decode(s).ok()?.try_into().ok()
}

/// Equal in time independent of where they differ.
pub(crate) fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new random token with `prefix`.
pub(crate) fn random_token(prefix: &str) -> anyhow::Result<String> {
    let mut raw = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .context("reading /dev/urandom for a token")?;
    Ok(format!("{prefix}{}", hex::encode(raw)))
}

/// Writes `text` and a newline to `path`, readable by its owner only.
pub(crate) fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    crate::files::write_private(path, format!("{text}\n").as_bytes())
}

/// The admin token in `data_dir/admin-token`, made at first start (and anew when
/// the file was deleted: that is how an admin token is rotated).
pub(crate) fn admin_token(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("admin-token");
    match std::fs::read_to_string(&path).map(|t| t.trim().to_string()) {
        Ok(t) if !t.is_empty() => Ok(t),
        _ => {
            let t = random_token("ska_")?;
            write_private(&path, &t)?;
            Ok(t)
        }
    }
}

impl Auth {
    /// Loads the tokens, with the admin token of [`admin_token`].
    pub fn open(data_dir: &Path, store: &Store, join_token: &str, metrics_open: bool) -> anyhow::Result<Auth> {
        let admin = admin_token(data_dir)?;
        let admin_hash = hex::encode(sha256(&admin));
        let stored = store.tokens()?;
        if !stored.iter().any(|(name, hash, _, _)| name == ADMIN && *hash == admin_hash) {
            store.put_token(ADMIN, &admin_hash, &TokenRole::Admin.to_string(), now_ms())?;
        }
        let auth = Auth { join: sha256(join_token), users: Mutex::default(), nodes: Mutex::default(), metrics_open };
        auth.reload(store)?;
        Ok(auth)
    }

    /// Reads the tokens and node credentials from `store` again (a follower
    /// does, as the leader changes them).
    pub fn reload(&self, store: &Store) -> anyhow::Result<()> {
        let mut users = Vec::new();
        for (name, hash, role, created_ms) in store.tokens()? {
            // `ROLE` (cluster-wide) or `ROLE NAMESPACE` (#20).
            let (role, namespace) = role.split_once(' ').unwrap_or((role.as_str(), "*"));
            let role = match role {
                "admin" => TokenRole::Admin,
                "deploy" => TokenRole::Deploy,
                _ => TokenRole::ReadOnly,
            };
            if let Some(hash) = unhex(&hash) {
                users.push(User { hash, info: TokenInfo { name, role, namespace: namespace.to_string(), created_ms } });
            }
        }
        let nodes = store.node_credentials()?.into_iter().filter_map(|(n, h)| Some((unhex(&h)?, n))).collect();
        *self.users() = users;
        *self.node_map() = nodes;
        Ok(())
    }

    fn users(&self) -> MutexGuard<'_, Vec<User>> {
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn node_map(&self) -> MutexGuard<'_, HashMap<[u8; 32], String>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Who holds `token`, if anyone.
    pub fn identify(&self, token: &str) -> Option<Caller> {
        let hash = sha256(token);
        if ct_eq(&hash, &self.join) {
            return Some(Caller::Join);
        }
        // User tokens are few: compare with every one, in constant time each.
        let mut found = None;
        for u in self.users().iter() {
            if ct_eq(&hash, &u.hash) {
                found = Some((u.info.role, u.info.namespace.clone()));
            }
        }
        match found {
            Some((TokenRole::Admin, ns)) if ns == "*" => Some(Caller::Admin),
            Some((TokenRole::ReadOnly, ns)) if ns == "*" => Some(Caller::ReadOnly),
            Some((role, namespace)) => Some(Caller::Scoped { role, namespace }),
            None => self.node_map().get(&hash).cloned().map(Caller::Node),
        }
    }

    /// The name of user token `token`, if it is one (for events that say who).
    pub fn token_name(&self, token: &str) -> Option<String> {
        let hash = sha256(token);
        let mut found = None;
        for u in self.users().iter() {
            if ct_eq(&hash, &u.hash) {
                found = Some(u.info.name.clone());
            }
        }
        found
    }

    /// The key of node `node`'s relay grants (`skiff_api::relay`): the SHA-256
    /// of its credential, which is what this server keeps of it.
    pub fn node_key(&self, node: &str) -> Option<[u8; 32]> {
        self.node_map().iter().find(|(_, n)| n.as_str() == node).map(|(hash, _)| *hash)
    }

    /// Every user token's name and role.
    pub fn list(&self) -> Vec<TokenInfo> {
        self.users().iter().map(|u| u.info.clone()).collect()
    }

    /// Revokes every token scoped to namespace `ns` (it was removed).
    pub fn forget_namespace(&self, store: &Store, ns: &str) {
        let mut users = self.users();
        for u in users.iter().filter(|u| u.info.namespace == ns) {
            if let Err(e) = store.delete_token(&u.info.name) {
                tracing::warn!("revoking token {} of removed namespace {ns}: {e}", u.info.name);
            }
        }
        users.retain(|u| u.info.namespace != ns);
    }

    /// The namespace of token `name`, if there is one.
    pub fn namespace_of(&self, name: &str) -> Option<String> {
        self.users().iter().find(|u| u.info.name == name).map(|u| u.info.namespace.clone())
    }

    /// Makes a token; the answer holds it, the store only its hash.
    pub fn create(&self, store: &Store, req: TokenRequest) -> Result<TokenCreated, ApiError> {
        let mut users = self.users();
        if users.len() >= MAX_TOKENS {
            return Err(ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                format!("too many tokens ({MAX_TOKENS}); remove some with `skiff token rm NAME`"),
            ));
        }
        let name = match req.name {
            Some(n) => n,
            None => {
                let mut i = users.len() + 1;
                while users.iter().any(|u| u.info.name == format!("token-{i}")) {
                    i += 1;
                }
                format!("token-{i}")
            }
        };
        skiff_api::manifest::validate_name(&name).map_err(|e| ApiError::bad_request(format!("token name: {e}")))?;
        if users.iter().any(|u| u.info.name == name) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("a token named {name:?} exists; pick another name or remove it with `skiff token rm {name}`"),
            ));
        }
        let prefix = match req.role {
            TokenRole::Admin => "ska_",
            TokenRole::Deploy => "skd_",
            TokenRole::ReadOnly => "skr_",
        };
        let namespace = req.namespace.filter(|n| !n.is_empty()).unwrap_or_else(skiff_api::every_namespace);
        let token = random_token(prefix).map_err(|e| ApiError::internal(format!("{e:#}")))?;
        let hash = sha256(&token);
        let info = TokenInfo { name, role: req.role, namespace, created_ms: now_ms() };
        let stored_role = match info.namespace.as_str() {
            "*" => info.role.to_string(),
            ns => format!("{} {ns}", info.role),
        };
        store.put_token(&info.name, &hex::encode(hash), &stored_role, info.created_ms)?;
        users.push(User { hash, info: info.clone() });
        Ok(TokenCreated { info, token })
    }

    /// Revokes token `name`.
    pub fn delete(&self, store: &Store, name: &str) -> Result<(), ApiError> {
        if name == ADMIN {
            return Err(ApiError::bad_request(
                "the admin token cannot be removed; to rotate it, delete DATA_DIR/admin-token and restart the server",
            ));
        }
        let mut users = self.users();
        if !users.iter().any(|u| u.info.name == name) {
            return Err(ApiError::not_found(format!("token {name:?} not found; `skiff token ls` lists them")));
        }
        store.delete_token(name)?;
        users.retain(|u| u.info.name != name);
        Ok(())
    }

    /// Gives `node` a new credential, replacing any it had.
    pub fn issue_node(&self, store: &Store, node: &str) -> Result<String, ApiError> {
        let token = random_token("skn_").map_err(|e| ApiError::internal(format!("{e:#}")))?;
        let hash = sha256(&token);
        store.put_node_credential(node, &hex::encode(hash), now_ms())?;
        let mut nodes = self.node_map();
        nodes.retain(|_, n| n != node);
        nodes.insert(hash, node.to_string());
        Ok(token)
    }

    /// Revokes the credential of `node`.
    pub fn revoke_node(&self, store: &Store, node: &str) -> Result<(), StoreError> {
        store.delete_node_credential(node)?;
        self.node_map().retain(|_, n| n != node);
        Ok(())
    }
}

/// Most a refused request's body is read for: the largest body any route takes
/// short of blob uploads (a heartbeat).
const DISCARD_MAX_BYTES: usize = 32 << 20;
/// How long a refused request's body is read for at most.
const DISCARD_FOR: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads and drops a refused request's body (up to `DISCARD_MAX_BYTES`, for at
/// most `DISCARD_FOR`) before the refusal is sent. A connection closed with an
/// unread body in its socket is reset, and a client that writes its whole body
/// before it reads (Python's http.client, for one) then sees a broken
/// connection instead of the 401 or 403: schemathesis did, with a 1 MB
/// heartbeat sent with the admin token. Nothing is kept, so the cap costs
/// bandwidth, not memory.
async fn discard_body(req: Request) {
    use futures_util::StreamExt;
    let mut body = req.into_body().into_data_stream();
    let mut read = 0;
    let _ = tokio::time::timeout(DISCARD_FOR, async {
        while let Some(Ok(chunk)) = body.next().await {
            read += chunk.len();
            if read > DISCARD_MAX_BYTES {
                break;
            }
        }
    })
    .await;
}

fn refuse(status: StatusCode, message: &str) -> Response {
    ApiError::new(status, message).into_response()
}

const NO_TOKEN: &str = "missing or unknown API token; pass --token or SKIFF_TOKEN (the admin token is in the server's DATA_DIR/admin-token; `skiff token create --read-only` makes read-only ones)";

/// The bearer token of a request's `Authorization` header, as sent.
pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
}

/// The middleware in front of every route: finds the caller and checks the route
/// allows it. The caller goes into the request's extensions for the handler.
pub(crate) async fn check(State(core): State<Arc<Core>>, mut req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_default();
    let need = need(req.method(), &route);
    if need == Need::Open || (need == Need::Metrics && core.auth.metrics_open) {
        return next.run(req).await;
    }
    let bearer = bearer(req.headers()).map(|t| t.trim().to_string());
    // A browser's EventSource cannot send headers: the dashboard's stream passes
    // its token in the query instead.
    let token =
        bearer.or_else(|| (route == "/v1/watch").then(|| query_token(req.uri().query().unwrap_or(""))).flatten());
    let Some(caller) = token.as_deref().and_then(|t| core.auth.identify(t)) else {
        discard_body(req).await;
        return ApiError::unauthorized(NO_TOKEN).into_response();
    };
    // A token scoped to a namespace (#20): the route must be one it may call,
    // with its role, in its namespace; another namespace's objects are not
    // found (404, so that their names do not leak), not forbidden.
    if let Caller::Scoped { role, namespace } = &caller {
        let needed = scoped_role(req.method(), &route);
        let Some(needed) = needed else {
            discard_body(req).await;
            return refuse(
                StatusCode::FORBIDDEN,
                "a token scoped to a namespace may not make this call; it is a cluster admin's",
            );
        };
        if !covers(*role, needed) {
            discard_body(req).await;
            let why = format!(
                "this {role} token of namespace {namespace} may not make this call; it needs the {needed} role"
            );
            return refuse(StatusCode::FORBIDDEN, &why);
        }
        if namespace != "*" && scope(&route) == Scope::Namespaced {
            let asked = match req.extensions().get::<crate::http::namespaces::Ns>() {
                Some(ns) => ns.0.clone(),
                None if route == "/v1/namespaces/{ns}" => {
                    req.uri().path().trim_start_matches("/v1/namespaces/").to_string()
                }
                None => skiff_api::namespace::DEFAULT.to_string(),
            };
            // A replica's namespace is its deployment's.
            let replica_ns = path_replica(req.uri().path()).map(|id| {
                let st = core.state();
                st.mem().replica(id).map(|r| skiff_api::namespace::of(&r.deployment).to_string())
            });
            let other =
                asked != *namespace || matches!(&replica_ns, Some(ns) if ns.as_deref() != Some(namespace.as_str()));
            if other {
                discard_body(req).await;
                return ApiError::not_found(format!(
                    "not found in namespace {asked}; this token sees namespace {namespace} only (-n {namespace})"
                ))
                .into_response();
            }
        }
        req.extensions_mut().insert(caller);
        return next.run(req).await;
    }
    let allowed = match (&caller, need) {
        (_, Need::Open) => true,
        (Caller::Admin, Need::Admin | Need::Read | Need::Metrics | Need::NodeOrRead | Need::NodeOrAdmin) => true,
        (Caller::ReadOnly, Need::Read | Need::Metrics | Need::NodeOrRead) => true,
        (Caller::Join | Caller::Node(_), Need::Register) => true,
        (Caller::Node(_), Need::NodeOrRead | Need::NodeOrAdmin) => true,
        (Caller::Node(n), Need::NodeSelf) => path_node(req.uri().path()) == Some(n.as_str()),
        _ => false,
    };
    if !allowed {
        let why = match (&caller, need) {
            (Caller::ReadOnly, _) => "this token is read-only; changes need an admin token",
            (Caller::Join, _) => "the join token only registers nodes; use the credential the registration returned",
            (Caller::Node(_), Need::NodeSelf) => "a node credential is good for that node's own routes only",
            (Caller::Node(_), _) => "a node credential cannot make user calls; use an API token",
            (_, Need::Register | Need::NodeSelf) => "node routes need the join token or the node's credential",
            _ => "this token may not make this call",
        };
        discard_body(req).await;
        return refuse(StatusCode::FORBIDDEN, why);
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// `GET /v1/tokens`.
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", responses((status = 200, description = "Every API token (names and roles)", body = Vec<TokenInfo>), crate::http::Failures))]
pub(crate) async fn list_tokens(
    State(core): State<Arc<Core>>,
    caller: Option<axum::Extension<Caller>>,
) -> axum::Json<Vec<TokenInfo>> {
    let mut all = core.auth.list();
    if let Some(axum::Extension(c)) = caller
        && let Some(ns) = c.namespace()
    {
        all.retain(|t| t.namespace == ns);
    }
    axum::Json(all)
}

/// `POST /v1/tokens`.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = TokenRequest, responses((status = 200, description = "Made; the only time the token is shown", body = TokenCreated), crate::http::Failures))]
pub(crate) async fn create_token(
    State(core): State<Arc<Core>>,
    caller: Option<axum::Extension<Caller>>,
    crate::http::JsonBody(mut req): crate::http::JsonBody<TokenRequest>,
) -> Result<axum::Json<TokenCreated>, ApiError> {
    // A namespace's admin makes tokens of its namespace only.
    if let Some(axum::Extension(c)) = &caller
        && let Some(own) = c.namespace()
    {
        match req.namespace.as_deref() {
            None => req.namespace = Some(own.to_string()),
            Some(ns) if ns == own => {}
            Some(_) => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "a namespace's admin makes tokens of its own namespace only",
                ));
            }
        }
    }
    let st = core.state();
    if let Some(ns) = req.namespace.as_deref().filter(|n| *n != "*")
        && !st.mem().namespace_exists(ns)
    {
        return Err(ApiError::not_found(format!("namespace {ns:?} not found; `skiff namespace ls` lists them")));
    }
    Ok(axum::Json(core.auth.create(st.store(), req)?))
}

/// `DELETE /v1/tokens/{name}`.
#[utoipa::path(delete, path = "/v1/tokens/{name}", tag = "tokens", params(("name" = String, Path, description = "The token's name", pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), responses((status = 204, description = "Revoked"), crate::http::Failures))]
pub(crate) async fn delete_token(
    State(core): State<Arc<Core>>,
    caller: Option<axum::Extension<Caller>>,
    crate::http::Path(name): crate::http::Path<String>,
) -> Result<StatusCode, ApiError> {
    if let Some(axum::Extension(c)) = &caller
        && let Some(own) = c.namespace()
        && core.auth.namespace_of(&name).as_deref() != Some(own)
    {
        return Err(ApiError::not_found(format!("token {name:?} not found; `skiff token ls` lists them")));
    }
    let st = core.state();
    core.auth.delete(st.store(), &name)?;
    Ok(StatusCode::NO_CONTENT)
}

fn query_token(query: &str) -> Option<String> {
    query.split('&').find_map(|kv| kv.strip_prefix("token=")).map(str::to_string)
}

/// ID in `/v1/replicas/ID/...`.
fn path_replica(path: &str) -> Option<&str> {
    path.strip_prefix("/v1/replicas/")?.split('/').next().filter(|id| !id.is_empty())
}

/// NAME in `/v1/nodes/NAME/...`.
fn path_node(path: &str) -> Option<&str> {
    path.strip_prefix("/v1/nodes/")?.split('/').next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_what_they_should() {
        let (get, put, post, del) = (Method::GET, Method::PUT, Method::POST, Method::DELETE);
        assert_eq!(need(&get, "/healthz"), Need::Open);
        assert_eq!(need(&get, "/metrics"), Need::Metrics);
        assert_eq!(need(&get, "/v1/deployments"), Need::Read);
        assert_eq!(need(&put, "/v1/deployments/{name}"), Need::Admin);
        assert_eq!(need(&del, "/v1/secrets/{name}"), Need::Admin);
        assert_eq!(need(&put, "/v1/blobs/{digest}"), Need::Admin);
        assert_eq!(need(&get, "/v1/blobs/{digest}"), Need::NodeOrRead);
        assert_eq!(need(&post, "/v1/deployments/{name}/activate"), Need::NodeOrAdmin);
        assert_eq!(need(&post, "/v1/nodes/{name}/drain"), Need::Admin);
        assert_eq!(need(&post, "/v1/rebalance"), Need::Admin);
        assert_eq!(need(&post, "/v1/nodes/{name}/heartbeat"), Need::NodeSelf);
        assert_eq!(need(&get, "/v1/nodes/{name}/assignments"), Need::NodeSelf);
        assert_eq!(need(&get, "/v1/tokens"), Need::Admin);
        // A shell in a container is a change, whatever the method.
        assert_eq!(need(&get, "/v1/replicas/{id}/exec"), Need::Admin);
        assert_eq!(need(&post, "/v1/replicas/{id}/port-forward"), Need::Admin);
        assert_eq!(need(&get, "/v1/openapi.json"), Need::Read);
        // Jobs and crons are a namespace's (#20): read to look, deploy to change.
        assert_eq!(scope("/v1/jobs/{name}/logs"), Scope::Namespaced);
        assert_eq!(scoped_role(&get, "/v1/jobs"), Some(TokenRole::ReadOnly));
        assert_eq!(scoped_role(&put, "/v1/jobs/{name}"), Some(TokenRole::Deploy));
        assert_eq!(scoped_role(&post, "/v1/crons/{name}/trigger"), Some(TokenRole::Deploy));
        // Unknown routes are never open.
        assert_eq!(need(&get, ""), Need::Read);
        assert_eq!(need(&post, ""), Need::Admin);
        assert_eq!(path_node("/v1/nodes/n1/heartbeat"), Some("n1"));
        assert_eq!(query_token("a=1&token=skr_x"), Some("skr_x".into()));
    }
}
