//! Files of the data dir written whole or not at all: the tokens, keys and
//! certificates. One copy of the owner-only (0600) write.

use anyhow::Context;
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` with permissions `mode`, through a temporary file
/// beside it (created with `mode`, so the bytes are never readable by others),
/// synced and renamed over `path`: a crash leaves the old file or the new one.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    // A temporary file left by a crash may have other permissions: start anew.
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Writes `bytes` to `path`, readable by its owner only (0600), atomically.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_atomic(path, bytes, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_private_file_is_its_owners_only_and_replaced_whole() {
        let dir = crate::state::tests::tempdir::Dir::new();
        let path = dir.0.join("join-token");
        // A stale temporary file of another mode does not leak its mode.
        std::fs::write(dir.0.join("join-token.tmp"), "stale").expect("write");
        std::fs::set_permissions(dir.0.join("join-token.tmp"), std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write_private(&path, b"one\n").expect("write");
        write_private(&path, b"two\n").expect("write again");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "two\n");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.0.join("join-token.tmp").exists());
    }
}
