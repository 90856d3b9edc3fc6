//! `/v1/namespaces` (#20), and the namespaced routes
//! `/v1/namespaces/{ns}/{deployments,replicas,secrets,volumes,jobs,crons,events}...`:
//! [`namespaced`] maps them, before routing, onto the routes of `default`
//! with the object's key (`NS/NAME`, percent-encoded into one path segment),
//! so that one handler serves both and nothing that works today changes.
//! The description lists both forms ([`describe_namespaced`]).

use super::*;
use axum::extract::Request;
use skiff_api::namespace::{self as ns, DEFAULT, Namespace, NamespaceRequest};

/// The namespace a request is about: its `/v1/namespaces/{ns}/` prefix, else `default`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ns(pub String);

/// The resources under `/v1/namespaces/{ns}/`, and whether the segment after
/// them is an object's name (made its key).
const NAMESPACED: [(&str, bool); 7] = [
    ("deployments", true),
    ("secrets", true),
    ("volumes", true),
    ("jobs", true),
    ("crons", true),
    ("replicas", false),
    ("events", false),
];

fn encode(key: &str) -> String {
    key.replace('/', "%2F")
}

/// Rewrites `/v1/namespaces/NS/KIND[/NAME[/...]]` to `/v1/KIND[/KEY[/...]]` (and
/// the `deployment=` and `object=` queries of replica and event lists), and
/// records the namespace in the request's extensions. A NAME holding an encoded
/// `/` is refused: `default` + `team-a%2Fweb` would make the key `team-a/web`,
/// another namespace's object behind a check that saw `default`.
pub(crate) async fn namespaced(mut req: Request) -> Result<Request, ApiError> {
    let mut namespace = None;
    let path = req.uri().path().to_string();
    if let Some(rest) = path.strip_prefix("/v1/namespaces/")
        && let Some((space, rest)) = rest.split_once('/')
        && !space.is_empty()
    {
        let (kind, tail) = rest.split_once('/').map_or((rest, ""), |(k, t)| (k, t));
        if let Some((_, named)) = NAMESPACED.iter().find(|(k, _)| *k == kind) {
            let name = tail.split('/').next().unwrap_or_default();
            if *named && name.to_ascii_lowercase().contains("%2f") {
                let name = name.replace("%2F", "/").replace("%2f", "/");
                return Err(ApiError::bad_request(format!(
                    "{name:?} is not a name: a name is a DNS label; its namespace goes in -n NS (/v1/namespaces/NS/...)"
                )));
            }
            let tail = match (named, tail.split_once('/')) {
                (_, _) if tail.is_empty() => String::new(),
                (true, Some((name, more))) => format!("/{}/{more}", encode(&ns::key(space, name))),
                (true, None) => format!("/{}", encode(&ns::key(space, tail))),
                (false, _) => format!("/{tail}"),
            };
            let query = req.uri().query().map(|q| {
                q.split('&')
                    .map(|kv| match kv.split_once('=') {
                        Some(("deployment", v)) => format!("deployment={}", encode(&ns::key(space, v))),
                        Some(("object", v)) => match v.split_once("%2F").or_else(|| v.split_once('/')) {
                            Some((k, name)) => format!("object={k}%2F{}", encode(&ns::key(space, name))),
                            None => kv.to_string(),
                        },
                        _ => kv.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join("&")
            });
            let uri = match query {
                Some(q) => format!("/v1/{kind}{tail}?{q}"),
                None => format!("/v1/{kind}{tail}"),
            };
            if let Ok(uri) = uri.parse() {
                *req.uri_mut() = uri;
                namespace = Some(space.to_string());
            }
        }
    }
    if let Some(n) = namespace {
        req.extensions_mut().insert(Ns(n));
    }
    Ok(req)
}

/// The unprefixed namespaced routes mean the caller's namespace: for a token
/// scoped to exactly one, `/v1/deployments/web` is
/// `/v1/namespaces/NS/deployments/web`, so that a team's token without `-n`
/// acts on its team's objects (it could only get a 404 in `default`, which is
/// not its own). Every other caller (cluster-wide tokens, node credentials, no
/// token) keeps `default`, so nothing that worked before changes. Done here,
/// before [`namespaced`] (the next layer) and routing, so that `auth::check`
/// and the handlers see what the prefixed path gives them, for curl users too.
pub(crate) async fn own_namespace(State(core): Shared, mut req: Request) -> Request {
    let path = req.uri().path();
    let Some(rest) = path.strip_prefix("/v1/") else {
        return req;
    };
    let kind = rest.split('/').next().unwrap_or_default();
    if !NAMESPACED.iter().any(|(k, _)| *k == kind) {
        return req;
    }
    let Some(Caller::Scoped { namespace, .. }) =
        crate::auth::bearer(req.headers()).and_then(|t| core.auth.identify(t.trim()))
    else {
        return req;
    };
    if namespace == "*" {
        return req;
    }
    let uri = match req.uri().query() {
        Some(q) => format!("/v1/namespaces/{namespace}/{rest}?{q}"),
        None => format!("/v1/namespaces/{namespace}/{rest}"),
    };
    if let Ok(uri) = uri.parse() {
        *req.uri_mut() = uri;
    }
    req
}

/// The namespace of a request (`default` when the middleware did not run).
pub(crate) fn of(ns: Option<Extension<Ns>>) -> String {
    ns.map_or_else(|| DEFAULT.to_string(), |Extension(Ns(n))| n)
}

/// The namespace a listing that covers several must keep to: the path's,
/// else a scoped token's own; `None`: every one (a cluster-wide token on an
/// unprefixed route, as before namespaces).
pub(crate) fn listing(space: Option<Extension<Ns>>, caller: Option<Extension<Caller>>) -> Option<String> {
    match (space, caller) {
        (Some(Extension(Ns(n))), _) => Some(n),
        (None, Some(Extension(Caller::Scoped { namespace, .. }))) if namespace != "*" => Some(namespace),
        _ => None,
    }
}

/// A deployment as users see it: its plain name, its namespace, and its spec's
/// secrets and volumes by their plain names.
pub(crate) fn present(mut d: Deployment) -> Deployment {
    let (space, name) = ns::split(&d.name);
    d.namespace = space.to_string();
    d.name = name.to_string();
    crate::state::namespaces::plain_spec(&mut d.spec);
    d
}

/// Adds each namespaced path of `api` again under `/v1/namespaces/{ns}/`.
pub(crate) fn describe_namespaced(api: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
    let param: Parameter = ParameterBuilder::new()
        .name("ns")
        .parameter_in(ParameterIn::Path)
        .required(utoipa::openapi::Required::True)
        .description(Some("The namespace (a DNS label); `default` is what the same path without this prefix means"))
        .schema(Some(
            utoipa::openapi::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::String)
                .pattern(Some(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")),
        ))
        .build();
    let copies: Vec<(String, utoipa::openapi::PathItem)> = api
        .paths
        .paths
        .iter()
        .filter(|(p, _)| NAMESPACED.iter().any(|(k, _)| p.starts_with(&format!("/v1/{k}"))))
        .map(|(p, item)| {
            let mut item = item.clone();
            for op in [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.head, &mut item.patch]
                .into_iter()
                .flatten()
            {
                op.parameters.get_or_insert_with(Vec::new).insert(0, utoipa::openapi::RefOr::T(param.clone()));
                if let Some(id) = &mut op.operation_id {
                    *id = format!("{id}_in_namespace");
                }
            }
            (format!("/v1/namespaces/{{ns}}{}", &p["/v1".len()..]), item)
        })
        .collect();
    for (p, item) in copies {
        api.paths.paths.insert(p, item);
    }
}

#[utoipa::path(get, path = "/v1/namespaces", tag = "namespaces", responses((status = 200, description = "Every namespace the token may see, with its quota and use", body = Vec<Namespace>), Failures))]
pub(super) async fn list_namespaces(
    State(core): Shared,
    caller: Option<Extension<Caller>>,
) -> ApiResult<Vec<Namespace>> {
    let mut all = core.state().namespaces();
    if let Some(Extension(c)) = caller
        && let Some(own) = c.namespace()
    {
        all.retain(|n| n.name == own);
    }
    Ok(Json(all))
}

#[utoipa::path(get, path = "/v1/namespaces/{ns}", tag = "namespaces", params(("ns" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), responses((status = 200, description = "The namespace, its quota and use", body = Namespace), Failures))]
pub(super) async fn get_namespace(State(core): Shared, Path(name): Path<String>) -> ApiResult<Namespace> {
    Ok(Json(core.state().namespace(&name)?))
}

#[utoipa::path(put, path = "/v1/namespaces/{ns}", tag = "namespaces", params(("ns" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), request_body = NamespaceRequest, responses((status = 200, description = "Created or updated", body = Namespace), Failures))]
pub(super) async fn put_namespace(
    State(core): Shared,
    Path(name): Path<String>,
    caller: Option<Extension<Caller>>,
    JsonBody(req): JsonBody<NamespaceRequest>,
) -> ApiResult<Namespace> {
    // A namespace's admin sets its quota and isolation; only a cluster admin
    // makes one (`auth` let a scoped admin through for its own only).
    let scoped = caller.is_some_and(|Extension(c)| matches!(c, Caller::Scoped { .. }));
    if scoped && !core.state().mem().namespace_exists(&name) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "only a cluster admin makes namespaces"));
    }
    let (n, _) = core.state().put_namespace(&name, req)?;
    // A raised quota lets held rollouts surge and waiting runs start now,
    // not at the next full pass.
    core.wake();
    Ok(Json(n))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct DeleteNamespaceQuery {
    /// Delete its deployments, secrets and volumes too (else a namespace that
    /// holds any is refused).
    #[serde(default)]
    cascade: bool,
}

#[utoipa::path(delete, path = "/v1/namespaces/{ns}", tag = "namespaces", params(("ns" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"), DeleteNamespaceQuery), responses((status = 204, description = "Deleted"), Failures))]
pub(super) async fn delete_namespace(
    State(core): Shared,
    Path(name): Path<String>,
    Query(q): Query<DeleteNamespaceQuery>,
) -> Result<StatusCode, ApiError> {
    core.state().delete_namespace(&name, q.cascade)?;
    core.auth.forget_namespace(core.state().store(), &name);
    core.wake();
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn rewrite(uri: &str) -> (String, String) {
        let req = namespaced(Request::builder().uri(uri).body(Body::empty()).expect("a request"))
            .await
            .unwrap_or_else(|e| panic!("{uri} refused: {e:?}"));
        let ns = req.extensions().get::<Ns>().map_or("default", |n| n.0.as_str()).to_string();
        (req.uri().to_string(), ns)
    }

    #[tokio::test]
    async fn namespaced_routes_map_onto_keys() {
        assert_eq!(rewrite("/v1/deployments/web").await, ("/v1/deployments/web".into(), "default".into()));
        assert_eq!(
            rewrite("/v1/namespaces/team-a/deployments/web/scale").await,
            ("/v1/deployments/team-a%2Fweb/scale".into(), "team-a".into())
        );
        assert_eq!(rewrite("/v1/namespaces/team-a/deployments").await, ("/v1/deployments".into(), "team-a".into()));
        assert_eq!(rewrite("/v1/namespaces/default/secrets/db").await, ("/v1/secrets/db".into(), "default".into()));
        assert_eq!(
            rewrite("/v1/namespaces/b/replicas?deployment=web").await,
            ("/v1/replicas?deployment=b%2Fweb".into(), "b".into())
        );
        assert_eq!(
            rewrite("/v1/namespaces/b/replicas/web-x1/exec").await,
            ("/v1/replicas/web-x1/exec".into(), "b".into())
        );
        assert_eq!(
            rewrite("/v1/namespaces/team-a/jobs/nightly/logs?index=1").await,
            ("/v1/jobs/team-a%2Fnightly/logs?index=1".into(), "team-a".into())
        );
        assert_eq!(
            rewrite("/v1/namespaces/team-a/crons/nightly/trigger").await,
            ("/v1/crons/team-a%2Fnightly/trigger".into(), "team-a".into())
        );
        assert_eq!(
            rewrite("/v1/namespaces/b/events?object=job%2Fx").await,
            ("/v1/events?object=job%2Fb%2Fx".into(), "b".into())
        );
        // A name is one plain segment: an encoded `/` would reach another
        // namespace's key (`team-a/web` from `default`), or a second key.
        for uri in [
            "/v1/namespaces/default/deployments/team-a%2Fweb",
            "/v1/namespaces/default/secrets/team-a%2fdb",
            "/v1/namespaces/team-a/jobs/default%2Fnightly/logs",
            "/v1/namespaces/default/volumes/default%2Fdata",
        ] {
            let req = Request::builder().uri(uri).body(Body::empty()).expect("a request");
            let e = namespaced(req).await.expect_err(uri);
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{uri}");
        }
        // Unprefixed, it is the key itself (what a node's activation sends).
        assert_eq!(
            rewrite("/v1/deployments/team-a%2Fweb/activate").await,
            ("/v1/deployments/team-a%2Fweb/activate".into(), "default".into())
        );
        // Namespaces themselves are not rewritten.
        assert_eq!(rewrite("/v1/namespaces/b").await, ("/v1/namespaces/b".into(), "default".into()));
    }
}
