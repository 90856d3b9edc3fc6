//! Secrets at rest: every secret's values are sealed with ChaCha20-Poly1305 under a
//! key kept in `<data dir>/secret.keys` (mode 0600), one `ID HEX` line per key,
//! newest last. The secret's name is the associated data, so a sealed value cannot
//! be moved to another secret. Rotation: `skiff server --rotate-secret-key` adds a
//! new key, re-seals every secret with it in one transaction and then drops the old
//! keys from the file.

use anyhow::Context;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Secret values: key → value.
pub type Values = BTreeMap<String, String>;

/// A sealed secret as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: u32,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// The keys that seal and open secrets.
pub struct Keyring {
    path: PathBuf,
    /// (id, cipher), oldest first; the last one seals.
    keys: Vec<(u32, ChaCha20Poly1305)>,
}

fn random<const N: usize>() -> anyhow::Result<[u8; N]> {
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).context("reading /dev/urandom")?;
    Ok(b)
}

impl Keyring {
    /// Loads `<data_dir>/secret.keys`, making it with one key at first start.
    pub fn open(data_dir: &Path) -> anyhow::Result<Keyring> {
        let path = data_dir.join("secret.keys");
        let mut ring = Keyring { path: path.clone(), keys: Vec::new() };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                    let bad = || format!("{} line {}: expected `ID HEXKEY`", path.display(), n + 1);
                    let (id, hex_key) = line.trim().split_once(' ').with_context(bad)?;
                    let id: u32 = id.parse().ok().with_context(bad)?;
                    let raw = hex::decode(hex_key).ok().filter(|k| k.len() == 32).with_context(bad)?;
                    ring.keys.push((id, ChaCha20Poly1305::new(Key::from_slice(&raw))));
                }
                anyhow::ensure!(!ring.keys.is_empty(), "{} holds no key", path.display());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                ring.add_key()?;
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
        Ok(ring)
    }

    /// Adds a new key (which seals from now on) and writes the file.
    pub fn add_key(&mut self) -> anyhow::Result<()> {
        let id = self.keys.last().map_or(1, |(id, _)| id + 1);
        let raw: [u8; 32] = random()?;
        let mut lines = std::fs::read_to_string(&self.path).unwrap_or_default();
        lines.push_str(&format!("{id} {}\n", hex::encode(raw)));
        self.write_file(&lines)?;
        self.keys.push((id, ChaCha20Poly1305::new(Key::from_slice(&raw))));
        Ok(())
    }

    /// Keeps only the newest key in the file (after every secret was re-sealed).
    pub fn drop_old_keys(&mut self) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(&self.path).with_context(|| format!("reading {}", self.path.display()))?;
        let last = text.lines().rfind(|l| !l.trim().is_empty()).unwrap_or_default();
        self.write_file(&format!("{last}\n"))?;
        let newest = self.keys.pop();
        self.keys = newest.into_iter().collect();
        Ok(())
    }

    fn write_file(&self, text: &str) -> anyhow::Result<()> {
        crate::files::write_private(&self.path, text.as_bytes())
    }

    /// Seals `values` of secret `name` under the newest key.
    pub fn seal(&self, name: &str, values: &Values) -> anyhow::Result<Sealed> {
        let (key_id, cipher) = self.keys.last().context("no secret key loaded")?;
        let nonce: [u8; 12] = random()?;
        let plaintext = serde_json::to_vec(values)?;
        let ciphertext = cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: &plaintext, aad: name.as_bytes() })
            .map_err(|_| anyhow::anyhow!("sealing secret {name} failed"))?;
        Ok(Sealed { key_id: *key_id, nonce: nonce.to_vec(), ciphertext })
    }

    /// Opens the sealed values of secret `name`.
    pub fn open_sealed(&self, name: &str, sealed: &Sealed) -> anyhow::Result<Values> {
        let (_, cipher) = self.keys.iter().find(|(id, _)| *id == sealed.key_id).with_context(|| {
            format!("secret {name} is sealed with key {} which secret.keys no longer holds", sealed.key_id)
        })?;
        anyhow::ensure!(sealed.nonce.len() == 12, "secret {name} has a malformed nonce");
        let plaintext = cipher
            .decrypt(Nonce::from_slice(&sealed.nonce), Payload { msg: &sealed.ciphertext, aad: name.as_bytes() })
            .map_err(|_| {
                anyhow::anyhow!("secret {name} does not open with its key: the store or key file was altered")
            })?;
        Ok(serde_json::from_slice(&plaintext)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_opens_binds_the_name_and_rotates() {
        let dir = std::env::temp_dir().join(format!("skiff-keys-{}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ring = Keyring::open(&dir).unwrap();
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(dir.join("secret.keys")).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        let values = Values::from([("password".to_string(), "hunter2".to_string())]);
        let sealed = ring.seal("db", &values).unwrap();
        assert!(!String::from_utf8_lossy(&sealed.ciphertext).contains("hunter2"));
        assert_eq!(ring.open_sealed("db", &sealed).unwrap(), values);
        let err = ring.open_sealed("other", &sealed).unwrap_err().to_string();
        assert_eq!(err, "secret other does not open with its key: the store or key file was altered");

        // Rotation: a new key seals, the old still opens until it is dropped.
        ring.add_key().unwrap();
        let resealed = ring.seal("db", &values).unwrap();
        assert_eq!(resealed.key_id, 2);
        assert_eq!(ring.open_sealed("db", &sealed).unwrap(), values);
        ring.drop_old_keys().unwrap();
        let reopened = Keyring::open(&dir).unwrap();
        assert_eq!(reopened.open_sealed("db", &resealed).unwrap(), values);
        assert!(reopened.open_sealed("db", &sealed).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
