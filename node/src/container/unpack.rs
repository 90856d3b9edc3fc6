//! Unpacking one image layer into a directory that overlayfs can use as a lower
//! layer, treating the tar as hostile.
//!
//! Every entry path is resolved beneath the layer's root component by component:
//! `..`, absolute paths and a path through any symlink are refused, so nothing
//! outside the root is ever written (a symlink in the layer may point anywhere:
//! it is resolved inside the container, never here). Hard links must name an
//! entry inside the root. Device nodes are not created. Whiteouts become what
//! overlayfs understands: `.wh.NAME` a 0/0 character device `NAME`, and
//! `.wh..wh..opq` the `trusted.overlay.opaque` xattr on its directory.
//!
//! The root is a fresh private directory that only this function writes, so
//! checking each component with `lstat` before using it cannot race with another
//! writer.

use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Why a layer could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The entry's path leaves the root or is not a plain relative path.
    #[error("layer entry {path:?} {why}; refusing a layer that writes outside its root")]
    Escape { path: String, why: &'static str },
    /// The tar stream is malformed.
    #[error("layer is not a readable tar archive: {0}")]
    Tar(io::Error),
    /// Writing the unpacked file failed.
    #[error("cannot unpack {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// What unpacking did, for the log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// Entries written (files, dirs, links, whiteouts).
    pub entries: u64,
    /// Device nodes and other special files left out.
    pub skipped: u64,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Io { path: path.to_path_buf(), source }
}

/// The entry path as plain components, or why it is not one.
fn clean(raw: &[u8]) -> Result<Vec<OsString>, UnpackError> {
    let display = || String::from_utf8_lossy(raw).into_owned();
    let mut out = Vec::new();
    for c in Path::new(OsStr::from_bytes(raw)).components() {
        match c {
            Component::Normal(p) => out.push(p.to_os_string()),
            Component::CurDir => {}
            Component::ParentDir => return Err(UnpackError::Escape { path: display(), why: "contains '..'" }),
            Component::RootDir | Component::Prefix(_) => {
                return Err(UnpackError::Escape { path: display(), why: "is an absolute path" });
            }
        }
    }
    Ok(out)
}

/// Walks `parts` beneath `root`, creating missing directories when `create`;
/// refuses a symlink or a non-directory on the way.
fn walk_dirs(root: &Path, parts: &[OsString], raw: &[u8], create: bool) -> Result<PathBuf, UnpackError> {
    let mut p = root.to_path_buf();
    for part in parts {
        p.push(part);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(UnpackError::Escape {
                    path: String::from_utf8_lossy(raw).into_owned(),
                    why: "goes through a symlink",
                });
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(UnpackError::Io {
                    path: p.clone(),
                    source: io::Error::new(io::ErrorKind::NotADirectory, "a file is in the way of a directory"),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                fs::create_dir(&p).map_err(io_err(&p))?;
                fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).map_err(io_err(&p))?;
            }
            Err(e) => return Err(UnpackError::Io { path: p.clone(), source: e }),
        }
    }
    Ok(p)
}

/// Removes whatever is at `p` (an earlier entry of the same path), unless it is a
/// directory and `keep_dir`.
fn clear(p: &Path, keep_dir: bool) -> Result<(), UnpackError> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() && keep_dir => Ok(()),
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).map_err(io_err(p)),
        Ok(_) => fs::remove_file(p).map_err(io_err(p)),
        Err(_) => Ok(()),
    }
}

fn mknod_whiteout(p: &Path) -> Result<(), UnpackError> {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    mknod(p, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
        .map_err(|e| UnpackError::Io { path: p.to_path_buf(), source: io::Error::from(e) })
}

fn set_opaque(dir: &Path) -> Result<(), UnpackError> {
    let path = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| UnpackError::Io { path: dir.to_path_buf(), source: io::ErrorKind::InvalidInput.into() })?;
    let name = c"trusted.overlay.opaque";
    // SAFETY: both strings are NUL-terminated and outlive the call; the value
    // pointer and length describe a live one-byte buffer.
    let rc = unsafe { libc::lsetxattr(path.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
    if rc != 0 {
        return Err(UnpackError::Io { path: dir.to_path_buf(), source: io::Error::last_os_error() });
    }
    Ok(())
}

/// Unpacks the tar stream `reader` into `root`, an existing empty directory.
pub fn unpack_layer(reader: impl Read, root: &Path) -> Result<Unpacked, UnpackError> {
    let mut archive = tar::Archive::new(reader);
    let mut stats = Unpacked::default();
    let is_root = nix::unistd::geteuid().is_root();
    for entry in archive.entries().map_err(UnpackError::Tar)? {
        let mut entry = entry.map_err(UnpackError::Tar)?;
        let raw = entry.path_bytes().into_owned();
        let parts = clean(&raw)?;
        let Some((name, parents)) = parts.split_last() else {
            continue; // "./" itself
        };
        let kind = entry.header().entry_type();
        let name_bytes = name.as_bytes();

        if name_bytes == OPAQUE.as_bytes() {
            let dir = walk_dirs(root, parents, &raw, true)?;
            set_opaque(&dir)?;
            stats.entries += 1;
            continue;
        }
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(UnpackError::Escape {
                    path: String::from_utf8_lossy(&raw).into_owned(),
                    why: "is a whiteout of nothing",
                });
            }
            let dir = walk_dirs(root, parents, &raw, true)?;
            let p = dir.join(OsStr::from_bytes(hidden));
            clear(&p, false)?;
            mknod_whiteout(&p)?;
            stats.entries += 1;
            continue;
        }

        let dir = walk_dirs(root, parents, &raw, true)?;
        let p = dir.join(name);
        let mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
        match kind {
            tar::EntryType::Directory => {
                clear(&p, true)?;
                if !p.exists() {
                    fs::create_dir(&p).map_err(io_err(&p))?;
                }
                fs::set_permissions(&p, fs::Permissions::from_mode(mode)).map_err(io_err(&p))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                clear(&p, false)?;
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&p)
                    .map_err(io_err(&p))?;
                io::copy(&mut entry, &mut file).map_err(io_err(&p))?;
                fs::set_permissions(&p, fs::Permissions::from_mode(mode)).map_err(io_err(&p))?;
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
                clear(&p, false)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &p).map_err(io_err(&p))?;
            }
            tar::EntryType::Link => {
                let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
                let tparts = clean(&target).map_err(|_| UnpackError::Escape {
                    path: String::from_utf8_lossy(&raw).into_owned(),
                    why: "is a hard link to a path outside the layer",
                })?;
                let Some((tname, tparents)) = tparts.split_last() else {
                    return Err(UnpackError::Escape {
                        path: String::from_utf8_lossy(&raw).into_owned(),
                        why: "is a hard link to the layer's root",
                    });
                };
                let tdir = walk_dirs(root, tparents, &raw, false)?;
                let tpath = tdir.join(tname);
                match fs::symlink_metadata(&tpath) {
                    Ok(m) if !m.is_dir() => {}
                    _ => {
                        return Err(UnpackError::Escape {
                            path: String::from_utf8_lossy(&raw).into_owned(),
                            why: "is a hard link to nothing earlier in the layer",
                        });
                    }
                }
                clear(&p, false)?;
                // linkat without AT_SYMLINK_FOLLOW: a link to a symlink links
                // the symlink itself, never what it points at.
                fs::hard_link(&tpath, &p).map_err(io_err(&p))?;
                stats.entries += 1;
                continue; // shares the target's owner and mode
            }
            tar::EntryType::Fifo => {
                clear(&p, false)?;
                nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(mode))
                    .map_err(|e| UnpackError::Io { path: p.clone(), source: io::Error::from(e) })?;
            }
            // Device nodes are never created from an image: the runtime gives
            // the container the few it needs.
            tar::EntryType::Char | tar::EntryType::Block => {
                stats.skipped += 1;
                continue;
            }
            _ => {
                stats.skipped += 1;
                continue;
            }
        }
        if is_root {
            let uid = entry.header().uid().ok().and_then(|u| u32::try_from(u).ok());
            let gid = entry.header().gid().ok().and_then(|g| u32::try_from(g).ok());
            std::os::unix::fs::lchown(&p, uid, gid).map_err(io_err(&p))?;
            // chown clears set-id bits: put them back.
            if kind != tar::EntryType::Symlink && mode & 0o6000 != 0 {
                fs::set_permissions(&p, fs::Permissions::from_mode(mode)).map_err(io_err(&p))?;
            }
        }
        stats.entries += 1;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar built entry by entry, including entries `tar::Builder` refuses to
    /// write (absolute paths, `..`), by writing the raw name bytes.
    struct Tar(tar::Builder<Vec<u8>>);

    impl Tar {
        fn new() -> Tar {
            Tar(tar::Builder::new(Vec::new()))
        }

        fn header(path: &str, kind: tar::EntryType, size: u64) -> tar::Header {
            let mut h = tar::Header::new_gnu();
            let name = &mut h.as_gnu_mut().expect("gnu header").name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_entry_type(kind);
            h.set_size(size);
            h.set_mode(if kind == tar::EntryType::Directory { 0o755 } else { 0o644 });
            h.set_uid(0);
            h.set_gid(0);
            h.set_cksum();
            h
        }

        fn file(mut self, path: &str, body: &str) -> Tar {
            let h = Self::header(path, tar::EntryType::Regular, body.len() as u64);
            self.0.append(&h, body.as_bytes()).expect("append");
            self
        }

        fn dir(mut self, path: &str) -> Tar {
            let h = Self::header(path, tar::EntryType::Directory, 0);
            self.0.append(&h, io::empty()).expect("append");
            self
        }

        fn link(mut self, path: &str, kind: tar::EntryType, target: &str) -> Tar {
            let mut h = Self::header(path, kind, 0);
            h.set_link_name(target).expect("link name");
            h.set_cksum();
            self.0.append(&h, io::empty()).expect("append");
            self
        }

        fn device(mut self, path: &str) -> Tar {
            let mut h = Self::header(path, tar::EntryType::Char, 0);
            h.set_device_major(1).expect("major");
            h.set_device_minor(3).expect("minor");
            h.set_cksum();
            self.0.append(&h, io::empty()).expect("append");
            self
        }

        fn bytes(self) -> Vec<u8> {
            self.0.into_inner().expect("finish tar")
        }
    }

    struct Dirs {
        base: PathBuf,
        root: PathBuf,
        outside: PathBuf,
    }

    impl Drop for Dirs {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.base);
        }
    }

    fn dirs() -> Dirs {
        let base = std::env::temp_dir().join(format!("skiff-unpack-{}", crate::blobs::unique_suffix()));
        let root = base.join("root");
        let outside = base.join("outside");
        fs::create_dir_all(&root).expect("root");
        fs::create_dir_all(&outside).expect("outside");
        Dirs { base, root, outside }
    }

    fn unpack(tar: Tar, d: &Dirs) -> Result<Unpacked, String> {
        unpack_layer(&tar.bytes()[..], &d.root).map_err(|e| e.to_string())
    }

    fn outside_is_empty(d: &Dirs) -> bool {
        fs::read_dir(&d.outside).expect("outside").next().is_none()
    }

    #[test]
    fn plain_layer_unpacks() {
        let d = dirs();
        let tar = Tar::new()
            .dir("bin/")
            .file("bin/busybox", "#!")
            .link("bin/sh", tar::EntryType::Symlink, "busybox")
            .link("bin/ls", tar::EntryType::Link, "bin/busybox")
            .file("./etc/motd", "hi");
        let got = unpack(tar, &d).expect("unpacks");
        assert_eq!(got, Unpacked { entries: 5, skipped: 0 });
        assert_eq!(fs::read_to_string(d.root.join("bin/ls")).expect("ls"), "#!");
        assert_eq!(fs::read_link(d.root.join("bin/sh")).expect("sh"), Path::new("busybox"));
        assert_eq!(fs::read_to_string(d.root.join("etc/motd")).expect("motd"), "hi");
    }

    #[test]
    fn dot_dot_is_refused() {
        let d = dirs();
        let tar = Tar::new().file("a/../../outside/x", "pwned");
        let err = unpack(tar, &d).expect_err("refused");
        assert_eq!(
            err,
            r#"layer entry "a/../../outside/x" contains '..'; refusing a layer that writes outside its root"#
        );
        assert!(outside_is_empty(&d));
    }

    #[test]
    fn absolute_path_is_refused() {
        let d = dirs();
        let path = format!("{}/x", d.outside.display());
        let err = unpack(Tar::new().file(&path, "pwned"), &d).expect_err("refused");
        assert!(err.contains("is an absolute path"), "{err}");
        assert!(outside_is_empty(&d));
    }

    #[test]
    fn write_through_symlink_is_refused() {
        let d = dirs();
        let target = d.outside.display().to_string();
        let tar = Tar::new().link("evil", tar::EntryType::Symlink, &target).file("evil/x", "pwned");
        let err = unpack(tar, &d).expect_err("refused");
        assert_eq!(
            err,
            r#"layer entry "evil/x" goes through a symlink; refusing a layer that writes outside its root"#
        );
        assert!(outside_is_empty(&d));
    }

    #[test]
    fn hard_link_out_of_the_root_is_refused() {
        let d = dirs();
        fs::write(d.outside.join("secret"), "s").expect("secret");
        let target = format!("{}/secret", d.outside.display());
        let err = unpack(Tar::new().link("x", tar::EntryType::Link, &target), &d).expect_err("refused");
        assert!(err.contains("hard link to a path outside"), "{err}");
        let err = unpack(Tar::new().link("y", tar::EntryType::Link, "../outside/secret"), &d).expect_err("refused");
        assert!(err.contains("hard link to a path outside"), "{err}");
        // Through a symlink that points out: refused too.
        let tar = Tar::new().link("out", tar::EntryType::Symlink, &d.outside.display().to_string()).link(
            "z",
            tar::EntryType::Link,
            "out/secret",
        );
        let err = unpack(tar, &d).expect_err("refused");
        assert!(err.contains("goes through a symlink"), "{err}");
        assert_eq!(fs::metadata(d.outside.join("secret")).expect("secret").len(), 1);
        assert!(!d.root.join("z").exists());
    }

    #[test]
    fn device_nodes_are_not_created() {
        let d = dirs();
        let got = unpack(Tar::new().device("dev/mem").file("ok", "1"), &d).expect("unpacks");
        assert_eq!(got, Unpacked { entries: 1, skipped: 1 });
        assert!(fs::symlink_metadata(d.root.join("dev/mem")).is_err());
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        use std::os::unix::fs::FileTypeExt;
        if !nix::unistd::geteuid().is_root() {
            panic!("this test needs root (mknod, trusted xattrs); run the tests as root as `make test` does");
        }
        let d = dirs();
        let tar = Tar::new().dir("etc/").file("etc/.wh.motd", "").dir("var/").file("var/.wh..wh..opq", "");
        unpack(tar, &d).expect("unpacks");
        let m = fs::symlink_metadata(d.root.join("etc/motd")).expect("whiteout");
        assert!(m.file_type().is_char_device());
        use std::os::unix::fs::MetadataExt;
        assert_eq!(m.rdev(), 0);
        let mut buf = [0u8; 4];
        let path = CString::new(d.root.join("var").as_os_str().as_bytes()).expect("path");
        // SAFETY: NUL-terminated strings and a live 4-byte buffer.
        let n = unsafe {
            libc::lgetxattr(path.as_ptr(), c"trusted.overlay.opaque".as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        };
        assert_eq!(n, 1);
        assert_eq!(buf[0], b'y');
        assert!(!d.root.join("var/.wh..wh..opq").exists());
    }
}
