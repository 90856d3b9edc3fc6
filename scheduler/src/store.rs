//! The durable state: one SQLite file in WAL mode, with numbered schema migrations.
//!
//! The store only reads and writes rows; the in-memory working set in
//! [`crate::state`] decides what to write. Every mutation of the working set is
//! written here first, in one transaction, and applied in memory only once it
//! committed: a failed write (a full disk) leaves both as they were.

use crate::secrets::Sealed;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use skiff_api::{Deployment, DeploymentStatus, Event, Node, Replica, Secret, Volume, WorkloadSpec};
use std::path::Path;

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("state store: {0}")]
    Sql(#[from] rusqlite::Error),
    /// etcd failed or did not answer.
    #[error("state store (etcd): {0}")]
    Etcd(String),
    /// This server is no longer the leader: the store refused its write.
    #[error("this server is no longer the leader; retry (another server took over)")]
    NotLeader,
    /// A stored row could not be decoded.
    #[error("state store holds an unreadable {what}: {source}")]
    Decode { what: &'static str, source: serde_json::Error },
}

type Result<T> = std::result::Result<T, StoreError>;

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
/// Never edit one that shipped: add the next.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE nodes (
        name TEXT PRIMARY KEY,
        body TEXT NOT NULL
     );
     CREATE TABLE deployments (
        name TEXT PRIMARY KEY,
        replicas INTEGER NOT NULL,
        revision INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL
     );
     CREATE TABLE revisions (
        deployment TEXT NOT NULL,
        revision INTEGER NOT NULL,
        spec TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        PRIMARY KEY (deployment, revision)
     );
     CREATE TABLE replicas (
        id TEXT PRIMARY KEY,
        deployment TEXT NOT NULL,
        body TEXT NOT NULL
     );
     CREATE INDEX replicas_by_deployment ON replicas(deployment);
     CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time_ms INTEGER NOT NULL,
        object TEXT NOT NULL,
        reason TEXT NOT NULL,
        message TEXT NOT NULL
     );
     CREATE INDEX events_by_object ON events(object, id);
     CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
     );",
    // 2: secrets, sealed (see secrets.rs); `keys` holds the key names only.
    "CREATE TABLE secrets (
        name TEXT PRIMARY KEY,
        keys TEXT NOT NULL,
        key_id INTEGER NOT NULL,
        nonce BLOB NOT NULL,
        ciphertext BLOB NOT NULL,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL
     );",
    // 3: imported OCI images: name:tag → manifest digest (blobs live in the blob store).
    "CREATE TABLE images (
        name TEXT NOT NULL,
        tag TEXT NOT NULL,
        digest TEXT NOT NULL,
        size INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        PRIMARY KEY (name, tag)
     );",
    // 4: a deployment's update strategy and rollout, as JSON (`DeploymentExtra`).
    "ALTER TABLE deployments ADD COLUMN extra TEXT NOT NULL DEFAULT '{}';",
    // 5: named node-local volumes; `purge` marks one whose node must delete its data.
    "CREATE TABLE volumes (
        name TEXT PRIMARY KEY,
        node TEXT,
        size INTEGER,
        created_ms INTEGER NOT NULL,
        purge INTEGER NOT NULL DEFAULT 0
     );",
    // 6: API tokens and node credentials, by the SHA-256 of the token (auth.rs).
    "CREATE TABLE tokens (
        name TEXT PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL,
        created_ms INTEGER NOT NULL
     );
     CREATE TABLE node_credentials (
        node TEXT PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,
        created_ms INTEGER NOT NULL
     );",
    // 7: jobs, their runs and crons, as JSON (`skiff_api::job`); a run's row
    // is kept after its replica's is deleted: its exit code, node and times.
    "CREATE TABLE jobs (
        name TEXT PRIMARY KEY,
        body TEXT NOT NULL
     );
     CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        job TEXT NOT NULL,
        body TEXT NOT NULL
     );
     CREATE INDEX runs_by_job ON runs(job);
     CREATE TABLE crons (
        name TEXT PRIMARY KEY,
        body TEXT NOT NULL
     );",
    // 8: namespaces (#20). A namespaced object's key is `NAME` in `default` and
    // `NS/NAME` elsewhere, so every row stored before is in `default` as it is;
    // a namespace is a meta row `namespace/NAME` holding its quota and
    // isolation as JSON, and `default` exists from the start.
    "INSERT OR IGNORE INTO meta (key, value) VALUES ('namespace/default', '{}');",
];

/// What the deployments table keeps as JSON beside its columns.
#[derive(serde::Serialize, serde::Deserialize, Default)]
#[serde(default)]
pub(crate) struct DeploymentExtra {
    pub strategy: skiff_api::UpdateStrategy,
    pub rollout: skiff_api::Rollout,
    pub autoscale: Option<skiff_api::Autoscale>,
    pub scale_to_zero: Option<skiff_api::ScaleToZero>,
}

/// Everything stored, as loaded at start-up.
pub struct Loaded {
    pub nodes: Vec<Node>,
    pub deployments: Vec<Deployment>,
    /// (deployment, revision, spec) of every stored revision.
    pub revisions: Vec<(String, u64, WorkloadSpec)>,
    pub replicas: Vec<Replica>,
    pub meta: Vec<(String, String)>,
    pub secrets: Vec<(Secret, Sealed)>,
    /// Volumes, and whether each is being purged.
    pub volumes: Vec<(Volume, bool)>,
    /// Jobs, their runs and crons (migration 7).
    pub jobs: Vec<skiff_api::Job>,
    pub runs: Vec<skiff_api::JobRun>,
    pub crons: Vec<skiff_api::Cron>,
}

/// One write to the store, as a transaction collects it (see [`Tx`]).
#[derive(Debug, Clone)]
pub enum Op {
    PutNode {
        name: String,
        body: String,
    },
    DeleteNode(String),
    PutDeployment {
        name: String,
        replicas: u32,
        revision: u64,
        created_ms: u64,
        updated_ms: u64,
        extra: String,
    },
    PutRevision {
        deployment: String,
        revision: u64,
        spec: String,
        created_ms: u64,
    },
    /// A deployment and all its revisions.
    DeleteDeployment(String),
    PutReplica {
        id: String,
        deployment: String,
        body: String,
    },
    DeleteReplica(String),
    Event {
        time_ms: u64,
        object: String,
        reason: String,
        message: String,
    },
    PutSecret {
        name: String,
        keys: String,
        sealed: Sealed,
        created_ms: u64,
        updated_ms: u64,
    },
    DeleteSecret(String),
    PutVolume {
        name: String,
        node: Option<String>,
        size: Option<u64>,
        created_ms: u64,
        purge: bool,
    },
    DeleteVolume(String),
    PutJob {
        name: String,
        body: String,
    },
    /// A job and all its runs.
    DeleteJob(String),
    PutRun {
        id: String,
        job: String,
        body: String,
    },
    PutCron {
        name: String,
        body: String,
    },
    DeleteCron(String),
    SetMeta {
        key: String,
        value: String,
    },
    DeleteMeta(String),
}

/// What a store keeps: the working set's rows, written a transaction at a time,
/// and the tables read and written directly (events, images, tokens). SQLite
/// ([`Store::open`]) is the default; etcd ([`crate::etcd`]) lets several servers
/// share one store.
pub trait Backend: Send {
    /// Reads everything the working set is made of.
    fn load(&self) -> Result<Loaded>;
    /// Applies `ops` atomically: all of them or none.
    fn commit(&mut self, ops: Vec<Op>) -> Result<()>;
    /// Events about `object` (or all), newest `limit`, returned oldest first.
    fn events(&self, object: Option<&str>, limit: u32) -> Result<Vec<Event>>;
    /// Keeps the newest `keep` events; how many were deleted.
    fn prune_events(&self, keep: u64) -> Result<usize>;
    /// Every imported image, by name and tag.
    fn images(&self) -> Result<Vec<skiff_api::Image>>;
    /// Points `image.name:image.tag` at `image.digest`.
    fn put_image(&self, image: &skiff_api::Image) -> Result<()>;
    /// Forgets `name:tag`; whether it was there.
    fn delete_image(&self, name: &str, tag: &str) -> Result<bool>;
    /// Every API token as (name, hex hash, role, created).
    fn tokens(&self) -> Result<Vec<(String, String, String, u64)>>;
    /// Stores (or replaces) API token `name`.
    fn put_token(&self, name: &str, hash: &str, role: &str, created_ms: u64) -> Result<()>;
    /// Removes API token `name`; whether it existed.
    fn delete_token(&self, name: &str) -> Result<bool>;
    /// Every node credential as (node, hex hash).
    fn node_credentials(&self) -> Result<Vec<(String, String)>>;
    /// Stores (or replaces) the credential of `node`.
    fn put_node_credential(&self, node: &str, hash: &str, created_ms: u64) -> Result<()>;
    /// Revokes the credential of `node`.
    fn delete_node_credential(&self, node: &str) -> Result<()>;
    /// A stored setting.
    fn meta(&self, key: &str) -> Result<Option<String>>;
}

/// The durable state, behind whichever backend holds it.
pub struct Store {
    backend: Box<dyn Backend>,
}

impl std::ops::Deref for Store {
    type Target = dyn Backend;
    fn deref(&self) -> &Self::Target {
        &*self.backend
    }
}

impl Store {
    /// A store on `backend`.
    pub fn new(backend: Box<dyn Backend>) -> Store {
        Store { backend }
    }

    /// Opens (creating if needed) the SQLite file at `path` and brings its schema
    /// up to date.
    pub fn open(path: &Path) -> Result<Store> {
        Ok(Store::new(Box::new(Sqlite::open(path)?)))
    }

    /// Starts a write transaction (nothing is written until [`Store::commit`]).
    pub fn tx(&mut self) -> Result<Tx> {
        Ok(Tx::default())
    }

    /// Makes the writes of `tx` durable, all or none.
    pub fn commit(&mut self, tx: Tx) -> Result<()> {
        let ops = tx.ops.into_inner();
        if ops.is_empty() {
            return Ok(());
        }
        self.backend.commit(ops)
    }
}

impl Loaded {
    /// The writes that store all of this in an empty store (`skiff server migrate`).
    pub fn into_ops(self) -> Vec<Op> {
        let tx = Tx::default();
        let now = skiff_api::now_ms();
        // Tx's writes only collect; they cannot fail.
        for n in &self.nodes {
            let _ = tx.put_node(n);
        }
        for (d, rev, spec) in &self.revisions {
            let _ = tx.put_revision(d, *rev, spec, now);
        }
        for d in &self.deployments {
            let _ = tx.put_deployment(d);
        }
        for r in &self.replicas {
            let _ = tx.put_replica(r);
        }
        for (secret, sealed) in &self.secrets {
            let _ = tx.put_secret(secret, sealed);
        }
        for (v, purge) in &self.volumes {
            let _ = if *purge { tx.put_volume_purge(v) } else { tx.put_volume(v) };
        }
        for (k, v) in &self.meta {
            let _ = tx.set_meta(k, v);
        }
        for j in &self.jobs {
            let _ = tx.put_job(j);
        }
        for r in &self.runs {
            let _ = tx.put_run(r);
        }
        for c in &self.crons {
            let _ = tx.put_cron(c);
        }
        tx.ops.into_inner()
    }
}

/// One write transaction: it collects the writes, and [`Store::commit`] applies
/// them together; dropped uncommitted, it wrote nothing.
#[derive(Default)]
pub struct Tx {
    ops: std::cell::RefCell<Vec<Op>>,
}

/// The SQLite state file.
pub struct Sqlite {
    conn: Connection,
}

fn json<T: serde::Serialize>(v: &T) -> String {
    // Serialising our own plain data types cannot fail.
    serde_json::to_string(v).unwrap_or_default()
}

fn decode<T: serde::de::DeserializeOwned>(what: &'static str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|source| StoreError::Decode { what, source })
}

impl Sqlite {
    /// Opens (creating if needed) `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Sqlite> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // NORMAL in WAL mode: a commit survives a process crash; only a power loss
        // may lose the last transactions, never corrupt the file.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // 64 MiB of page cache (SQLite's default is 2 MiB): at a million
        // replicas the replica table's pages were read back from the OS for
        // most writes (#7, scenario B).
        conn.pragma_update(None, "cache_size", -65536)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        for (i, migration) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.transaction()?;
            tx.execute_batch(migration)?;
            tx.pragma_update(None, "user_version", i + 1)?;
            tx.commit()?;
        }
        Ok(Sqlite { conn })
    }
}

impl Backend for Sqlite {
    fn load(&self) -> Result<Loaded> {
        let mut nodes = Vec::new();
        let mut stmt = self.conn.prepare("SELECT body FROM nodes ORDER BY name")?;
        for body in stmt.query_map([], |r| r.get::<_, String>(0))? {
            nodes.push(decode("node", &body?)?);
        }
        let mut revisions = Vec::new();
        let mut stmt = self.conn.prepare("SELECT deployment, revision, spec FROM revisions")?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?, r.get::<_, String>(2)?)))? {
            let (d, rev, spec) = row?;
            revisions.push((d, rev, decode::<WorkloadSpec>("revision", &spec)?));
        }
        let mut deployments = Vec::new();
        // By key: a scan per deployment made loading 100,000 of them quadratic.
        let by_key: std::collections::HashMap<(&str, u64), &WorkloadSpec> =
            revisions.iter().map(|(d, r, spec)| ((d.as_str(), *r), spec)).collect();
        let mut stmt = self
            .conn
            .prepare("SELECT name, replicas, revision, created_ms, updated_ms, extra FROM deployments ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, u32>(1)?,
                r.get::<_, u64>(2)?,
                r.get::<_, u64>(3)?,
                r.get::<_, u64>(4)?,
                r.get::<_, String>(5)?,
            ))
        })?;
        for row in rows {
            let (name, replicas, revision, created_ms, updated_ms, extra) = row?;
            let extra: DeploymentExtra = decode("deployment", &extra)?;
            let spec = by_key
                .get(&(name.as_str(), revision))
                .map(|s| (*s).clone())
                .ok_or_else(|| StoreError::Sql(rusqlite::Error::QueryReturnedNoRows))?;
            deployments.push(Deployment {
                name,
                namespace: String::new(),
                replicas,
                revision,
                spec,
                created_ms,
                updated_ms,
                status: DeploymentStatus::default(),
                strategy: extra.strategy,
                rollout: extra.rollout,
                autoscale: extra.autoscale,
                scale_to_zero: extra.scale_to_zero,
            });
        }
        let mut replicas = Vec::new();
        let mut stmt = self.conn.prepare("SELECT body FROM replicas")?;
        for body in stmt.query_map([], |r| r.get::<_, String>(0))? {
            replicas.push(decode("replica", &body?)?);
        }
        let mut meta = Vec::new();
        let mut stmt = self.conn.prepare("SELECT key, value FROM meta")?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
            meta.push(row?);
        }
        let mut secrets = Vec::new();
        let mut stmt = self.conn.prepare(
            "SELECT name, keys, key_id, nonce, ciphertext, created_ms, updated_ms FROM secrets ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                Sealed { key_id: r.get(2)?, nonce: r.get(3)?, ciphertext: r.get(4)? },
                r.get::<_, u64>(5)?,
                r.get::<_, u64>(6)?,
            ))
        })?;
        for row in rows {
            let (name, keys, sealed, created_ms, updated_ms) = row?;
            let keys = decode("secret", &keys)?;
            secrets.push((Secret { name, keys, created_ms, updated_ms }, sealed));
        }
        let mut volumes = Vec::new();
        let mut stmt = self.conn.prepare("SELECT name, node, size, created_ms, purge FROM volumes ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                Volume {
                    name: r.get(0)?,
                    node: r.get(1)?,
                    size: r.get::<_, Option<u64>>(2)?.map(skiff_api::quantity::Memory),
                    deployments: vec![],
                    created_ms: r.get(3)?,
                },
                r.get::<_, bool>(4)?,
            ))
        })?;
        for row in rows {
            volumes.push(row?);
        }
        let mut jobs = Vec::new();
        let mut stmt = self.conn.prepare("SELECT body FROM jobs ORDER BY name")?;
        for body in stmt.query_map([], |r| r.get::<_, String>(0))? {
            jobs.push(decode("job", &body?)?);
        }
        let mut runs = Vec::new();
        let mut stmt = self.conn.prepare("SELECT body FROM runs ORDER BY rowid")?;
        for body in stmt.query_map([], |r| r.get::<_, String>(0))? {
            runs.push(decode("run", &body?)?);
        }
        let mut crons = Vec::new();
        let mut stmt = self.conn.prepare("SELECT body FROM crons ORDER BY name")?;
        for body in stmt.query_map([], |r| r.get::<_, String>(0))? {
            crons.push(decode("cron", &body?)?);
        }
        Ok(Loaded { nodes, deployments, revisions, replicas, meta, secrets, volumes, jobs, runs, crons })
    }

    fn commit(&mut self, ops: Vec<Op>) -> Result<()> {
        let tx = self.conn.transaction()?;
        for op in ops {
            apply(&tx, op)?;
        }
        Ok(tx.commit()?)
    }

    fn events(&self, object: Option<&str>, limit: u32) -> Result<Vec<Event>> {
        let map = |r: &rusqlite::Row| {
            Ok(Event { id: r.get(0)?, time_ms: r.get(1)?, object: r.get(2)?, reason: r.get(3)?, message: r.get(4)? })
        };
        let mut out: Vec<Event> = match object {
            Some(o) => {
                let mut stmt = self.conn.prepare_cached(
                    "SELECT id, time_ms, object, reason, message FROM events WHERE object = ?1 ORDER BY id DESC LIMIT ?2",
                )?;
                stmt.query_map(params![o, limit], map)?.collect::<rusqlite::Result<_>>()?
            }
            None => {
                let mut stmt = self.conn.prepare_cached(
                    "SELECT id, time_ms, object, reason, message FROM events ORDER BY id DESC LIMIT ?1",
                )?;
                stmt.query_map(params![limit], map)?.collect::<rusqlite::Result<_>>()?
            }
        };
        out.reverse();
        Ok(out)
    }

    fn prune_events(&self, keep: u64) -> Result<usize> {
        Ok(self.conn.execute("DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?1", params![keep])?)
    }

    fn images(&self) -> Result<Vec<skiff_api::Image>> {
        let mut stmt =
            self.conn.prepare_cached("SELECT name, tag, digest, size, created_ms FROM images ORDER BY name, tag")?;
        let rows = stmt.query_map([], |r| {
            Ok(skiff_api::Image {
                name: r.get(0)?,
                tag: r.get(1)?,
                digest: r.get(2)?,
                size: r.get(3)?,
                created_ms: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn put_image(&self, image: &skiff_api::Image) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO images (name, tag, digest, size, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![image.name, image.tag, image.digest, image.size, image.created_ms])?;
        Ok(())
    }

    fn delete_image(&self, name: &str, tag: &str) -> Result<bool> {
        let n =
            self.conn.prepare_cached("DELETE FROM images WHERE name = ?1 AND tag = ?2")?.execute(params![name, tag])?;
        Ok(n > 0)
    }

    fn tokens(&self) -> Result<Vec<(String, String, String, u64)>> {
        let mut stmt = self.conn.prepare("SELECT name, hash, role, created_ms FROM tokens ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn put_token(&self, name: &str, hash: &str, role: &str, created_ms: u64) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO tokens (name, hash, role, created_ms) VALUES (?1, ?2, ?3, ?4)",
            params![name, hash, role, created_ms],
        )?;
        Ok(())
    }

    fn delete_token(&self, name: &str) -> Result<bool> {
        Ok(self.conn.execute("DELETE FROM tokens WHERE name = ?1", [name])? > 0)
    }

    fn node_credentials(&self) -> Result<Vec<(String, String)>> {
        let mut stmt = self.conn.prepare("SELECT node, hash FROM node_credentials")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn put_node_credential(&self, node: &str, hash: &str, created_ms: u64) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO node_credentials (node, hash, created_ms) VALUES (?1, ?2, ?3)",
            params![node, hash, created_ms],
        )?;
        Ok(())
    }

    fn delete_node_credential(&self, node: &str) -> Result<()> {
        self.conn.execute("DELETE FROM node_credentials WHERE node = ?1", [node])?;
        Ok(())
    }

    fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self.conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?)
    }
}

impl Tx {
    /// Adds writes made elsewhere.
    pub fn extend(&self, ops: Vec<Op>) {
        self.ops.borrow_mut().extend(ops);
    }

    fn push(&self, op: Op) -> Result<()> {
        self.ops.borrow_mut().push(op);
        Ok(())
    }

    pub fn put_node(&self, node: &Node) -> Result<()> {
        self.push(Op::PutNode { name: node.name.clone(), body: json(node) })
    }

    pub fn delete_node(&self, name: &str) -> Result<()> {
        self.push(Op::DeleteNode(name.to_string()))
    }

    pub fn put_deployment(&self, d: &Deployment) -> Result<()> {
        self.push(Op::PutDeployment {
            name: d.name.clone(),
            replicas: d.replicas,
            revision: d.revision,
            created_ms: d.created_ms,
            updated_ms: d.updated_ms,
            extra: json(&DeploymentExtra {
                strategy: d.strategy.clone(),
                rollout: d.rollout.clone(),
                autoscale: d.autoscale,
                scale_to_zero: d.scale_to_zero,
            }),
        })
    }

    pub fn put_revision(&self, deployment: &str, revision: u64, spec: &WorkloadSpec, now: u64) -> Result<()> {
        self.push(Op::PutRevision { deployment: deployment.to_string(), revision, spec: json(spec), created_ms: now })
    }

    /// Deletes a deployment and its revisions (its replicas go one by one).
    pub fn delete_deployment(&self, name: &str) -> Result<()> {
        self.push(Op::DeleteDeployment(name.to_string()))
    }

    pub fn put_replica(&self, r: &Replica) -> Result<()> {
        self.push(Op::PutReplica { id: r.id.clone(), deployment: r.deployment.clone(), body: json(r) })
    }

    pub fn delete_replica(&self, id: &str) -> Result<()> {
        self.push(Op::DeleteReplica(id.to_string()))
    }

    pub fn event(&self, time_ms: u64, object: &str, reason: &str, message: &str) -> Result<()> {
        self.push(Op::Event {
            time_ms,
            object: object.to_string(),
            reason: reason.to_string(),
            message: message.to_string(),
        })
    }

    pub fn put_secret(&self, s: &Secret, sealed: &Sealed) -> Result<()> {
        self.push(Op::PutSecret {
            name: s.name.clone(),
            keys: json(&s.keys),
            sealed: sealed.clone(),
            created_ms: s.created_ms,
            updated_ms: s.updated_ms,
        })
    }

    pub fn put_volume(&self, v: &Volume) -> Result<()> {
        self.push(volume_op(v, false))
    }

    pub fn put_volume_purge(&self, v: &Volume) -> Result<()> {
        self.push(volume_op(v, true))
    }

    pub fn delete_volume(&self, name: &str) -> Result<()> {
        self.push(Op::DeleteVolume(name.to_string()))
    }

    pub fn delete_secret(&self, name: &str) -> Result<()> {
        self.push(Op::DeleteSecret(name.to_string()))
    }

    pub fn put_job(&self, j: &skiff_api::Job) -> Result<()> {
        self.push(Op::PutJob { name: j.name.clone(), body: json(j) })
    }

    /// Deletes a job and every run of it.
    pub fn delete_job(&self, name: &str) -> Result<()> {
        self.push(Op::DeleteJob(name.to_string()))
    }

    pub fn put_run(&self, r: &skiff_api::JobRun) -> Result<()> {
        self.push(Op::PutRun { id: r.id.clone(), job: r.job.clone(), body: json(r) })
    }

    pub fn put_cron(&self, c: &skiff_api::Cron) -> Result<()> {
        self.push(Op::PutCron { name: c.name.clone(), body: json(c) })
    }

    pub fn delete_cron(&self, name: &str) -> Result<()> {
        self.push(Op::DeleteCron(name.to_string()))
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.push(Op::SetMeta { key: key.to_string(), value: value.to_string() })
    }

    pub fn delete_meta(&self, key: &str) -> Result<()> {
        self.push(Op::DeleteMeta(key.to_string()))
    }
}

fn volume_op(v: &Volume, purge: bool) -> Op {
    Op::PutVolume {
        name: v.name.clone(),
        node: v.node.clone(),
        size: v.size.map(|s| s.0),
        created_ms: v.created_ms,
        purge,
    }
}

/// Writes one op inside a SQLite transaction.
fn apply(tx: &Transaction, op: Op) -> Result<()> {
    match op {
        Op::PutNode { name, body } => {
            tx.prepare_cached("INSERT OR REPLACE INTO nodes (name, body) VALUES (?1, ?2)")?
                .execute(params![name, body])?;
        }
        Op::DeleteNode(name) => {
            tx.execute("DELETE FROM nodes WHERE name = ?1", [name])?;
        }
        Op::PutDeployment { name, replicas, revision, created_ms, updated_ms, extra } => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO deployments (name, replicas, revision, created_ms, updated_ms, extra)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![name, replicas, revision, created_ms, updated_ms, extra])?;
        }
        Op::PutRevision { deployment, revision, spec, created_ms } => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO revisions (deployment, revision, spec, created_ms) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![deployment, revision, spec, created_ms])?;
        }
        Op::DeleteDeployment(name) => {
            tx.execute("DELETE FROM deployments WHERE name = ?1", [&name])?;
            tx.execute("DELETE FROM revisions WHERE deployment = ?1", [&name])?;
        }
        Op::PutReplica { id, deployment, body } => {
            // An upsert, not INSERT OR REPLACE: a replica's state changes are most
            // of the writes, and a replace deletes the row and both its index
            // entries to insert them again. A replica never changes deployment.
            tx.prepare_cached(
                "INSERT INTO replicas (id, deployment, body) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET body = excluded.body",
            )?
            .execute(params![id, deployment, body])?;
        }
        Op::DeleteReplica(id) => {
            tx.prepare_cached("DELETE FROM replicas WHERE id = ?1")?.execute([id])?;
        }
        Op::Event { time_ms, object, reason, message } => {
            tx.prepare_cached("INSERT INTO events (time_ms, object, reason, message) VALUES (?1, ?2, ?3, ?4)")?
                .execute(params![time_ms, object, reason, message])?;
        }
        Op::PutSecret { name, keys, sealed, created_ms, updated_ms } => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO secrets (name, keys, key_id, nonce, ciphertext, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                name,
                keys,
                sealed.key_id,
                sealed.nonce,
                sealed.ciphertext,
                created_ms,
                updated_ms
            ])?;
        }
        Op::DeleteSecret(name) => {
            tx.execute("DELETE FROM secrets WHERE name = ?1", [name])?;
        }
        Op::PutVolume { name, node, size, created_ms, purge } => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO volumes (name, node, size, created_ms, purge) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![name, node, size, created_ms, purge])?;
        }
        Op::DeleteVolume(name) => {
            tx.execute("DELETE FROM volumes WHERE name = ?1", [name])?;
        }
        Op::PutJob { name, body } => {
            tx.prepare_cached("INSERT OR REPLACE INTO jobs (name, body) VALUES (?1, ?2)")?
                .execute(params![name, body])?;
        }
        Op::DeleteJob(name) => {
            tx.execute("DELETE FROM jobs WHERE name = ?1", [&name])?;
            tx.execute("DELETE FROM runs WHERE job = ?1", [&name])?;
        }
        Op::PutRun { id, job, body } => {
            tx.prepare_cached(
                "INSERT INTO runs (id, job, body) VALUES (?1, ?2, ?3) ON CONFLICT (id) DO UPDATE SET body = excluded.body",
            )?
            .execute(params![id, job, body])?;
        }
        Op::PutCron { name, body } => {
            tx.prepare_cached("INSERT OR REPLACE INTO crons (name, body) VALUES (?1, ?2)")?
                .execute(params![name, body])?;
        }
        Op::DeleteCron(name) => {
            tx.execute("DELETE FROM crons WHERE name = ?1", [name])?;
        }
        Op::SetMeta { key, value } => {
            tx.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?
                .execute(params![key, value])?;
        }
        Op::DeleteMeta(key) => {
            tx.prepare_cached("DELETE FROM meta WHERE key = ?1")?.execute(params![key])?;
        }
    }
    Ok(())
}
