//! Image layer unpacking (`node/src/container/unpack.rs`, included by path: the
//! fuzz build must not pull skiff-node and wasmtime) into a fresh directory:
//! never a panic, and nothing is written outside the root. The root sits beside
//! an `outside` directory holding one file; the seeds aim at it with `..`,
//! absolute paths, symlinks and hard links, and after every input it must hold
//! that file, unchanged, and nothing else, and the root's parent nothing new.
#![no_main]

#[allow(dead_code)]
#[path = "../../node/src/container/unpack.rs"]
mod unpack;

use libfuzzer_sys::fuzz_target;
use std::fs;
use std::path::{Path, PathBuf};

/// Where the seeds' absolute paths and symlinks point: `/tmp/skiff-fuzz-layer/outside`.
const BASE: &str = "/tmp/skiff-fuzz-layer";

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// This process's base directory, made once (libFuzzer's -jobs/-fork run several
/// processes); the fixed path the seeds name points at the last one made.
fn base() -> &'static Path {
    static BASE_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BASE_DIR.get_or_init(|| {
        // Earlier runs' bases, of processes gone (libFuzzer exits without unwinding).
        for e in fs::read_dir("/tmp").into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.strip_prefix("skiff-fuzz-layer-").and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                fix_modes(&e.path());
                let _ = fs::remove_dir_all(e.path());
            }
        }
        let base = PathBuf::from(format!("{BASE}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(base.join("outside")).expect("outside");
        let _ = fs::remove_file(BASE);
        std::os::unix::fs::symlink(&base, BASE).expect("symlink to the base");
        base
    })
}

fuzz_target!(|data: &[u8]| {
    let base = base();
    let outside = base.join("outside");
    let root = base.join("root");
    fs::write(outside.join("secret"), "s").expect("secret");
    fs::create_dir(&root).expect("root");

    let _ = unpack::unpack_layer(data, &root);

    assert_eq!(names(&outside), ["secret"], "a layer wrote outside its root");
    assert_eq!(fs::read(outside.join("secret")).expect("secret"), b"s", "a layer changed a file outside its root");
    assert_eq!(names(base), ["outside", "root"], "a layer wrote beside its root");
    // Make the root removable whatever modes the layer gave its directories.
    fix_modes(&root);
    fs::remove_dir_all(&root).expect("remove root");
});

fn fix_modes(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            let _ = fs::set_permissions(e.path(), fs::Permissions::from_mode(0o755));
            fix_modes(&e.path());
        }
    }
}
