//! `/v1/servers`.

use super::*;

/// `GET /v1/servers`: this server alone on SQLite; on etcd, every server, the
/// leader and the store's members.
#[utoipa::path(get, path = "/v1/servers", tag = "servers", responses((status = 200, description = "The servers, the leader and the store", body = ServersInfo), Failures))]
pub(super) async fn servers(State(core): Shared) -> Json<skiff_api::ServersInfo> {
    if let Some(cluster) = &core.cluster {
        return Json(cluster.info().await);
    }
    let me = skiff_api::ServerInfo {
        name: "local".into(),
        url: std::fs::read_to_string(core.config.data_dir.join("server.url")).unwrap_or_default().trim().to_string(),
        started_ms: 0,
        leader: true,
    };
    let db = core.config.data_dir.join("state.db");
    Json(skiff_api::ServersInfo {
        store: format!("sqlite:{}", db.display()),
        leader: Some(me.name.clone()),
        servers: vec![me],
        members: vec![skiff_api::StoreMember {
            endpoint: db.display().to_string(),
            healthy: true,
            leader: true,
            version: format!("SQLite {}", rusqlite::version()),
            error: String::new(),
        }],
    })
}
