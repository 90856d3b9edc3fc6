//! Secrets on the node: values arrive with the assignment and live only in memory
//! and on tmpfs (`/dev/shm`), never under the node's data dir. A secret used as
//! files becomes a read-only directory on tmpfs that the replica sees as a
//! preopened directory; it is removed when the replica stops, and whatever a
//! crashed daemon left is removed at start.

use crate::runtime::Preopen;
use sha2::{Digest, Sha256};
use skiff_api::Assignment;
use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The tmpfs directory of this node's secrets: one per node data dir, so that two
/// nodes on one machine never share it.
fn root(data_dir: &Path) -> PathBuf {
    let abs = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let tag = hex::encode(&Sha256::digest(abs.as_os_str().as_encoded_bytes())[..8]);
    PathBuf::from("/dev/shm").join(format!("skiff-{tag}"))
}

/// Removes every secret file this node's previous run left behind.
pub fn clear_all(data_dir: &Path) {
    let _ = std::fs::remove_dir_all(root(data_dir));
}

/// A replica's secrets made available: extra env vars and preopened directories.
/// Dropping it removes the files.
#[derive(Debug, Default)]
pub struct Materialized {
    pub env: BTreeMap<String, String>,
    pub preopens: Vec<Preopen>,
    dir: Option<PathBuf>,
}

impl Drop for Materialized {
    fn drop(&mut self) {
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Builds the env vars and files of assignment `a`'s secrets.
pub fn materialize(data_dir: &Path, a: &Assignment) -> Result<Materialized, String> {
    let mut out = Materialized::default();
    for r in &a.spec.secrets {
        let values = a
            .secrets
            .get(&r.secret)
            .ok_or_else(|| format!("secret {} was not delivered with the assignment", r.secret))?;
        for (var, key) in &r.env {
            let v = values.get(key).ok_or_else(|| format!("secret {} has no key {key}", r.secret))?;
            out.env.insert(var.clone(), v.clone());
        }
        let Some(guest) = &r.path else { continue };
        let shm = Path::new("/dev/shm");
        if !is_tmpfs(shm) {
            return Err("secret files need a tmpfs at /dev/shm, and there is none".into());
        }
        let replica_dir = root(data_dir).join(&a.replica);
        let dir = replica_dir.join(&r.secret);
        out.dir = Some(replica_dir.clone());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        for (key, value) in values {
            // Keys were checked by the scheduler to be plain file names.
            let file = dir.join(key);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .open(&file)
                .map_err(|e| format!("cannot write secret file {}: {e}", file.display()))?;
            std::io::Write::write_all(&mut f, value.as_bytes())
                .map_err(|e| format!("writing {}: {e}", file.display()))?;
        }
        out.preopens.push(Preopen { host: dir, guest: guest.clone(), writable: false });
    }
    Ok(out)
}

fn is_tmpfs(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_, target, fstype) = (f.next(), f.next(), f.next());
        target == path.to_str() && fstype == Some("tmpfs")
    })
}
