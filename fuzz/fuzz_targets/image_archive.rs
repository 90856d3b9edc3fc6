//! `skiff image import`'s archive reading (`cli/src/commands/image/archive.rs`,
//! included by path: the CLI crate pulls the scheduler and the node): a tar of
//! an OCI layout or a `docker save` archive into its images. Never a panic, no
//! allocation beyond what the input holds; every blob an image names is a path
//! the archive was asked for, and every OCI manifest read matched its digest.
#![no_main]

#[allow(dead_code)]
#[path = "../../cli/src/commands/image/archive.rs"]
mod archive;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(files) = archive::read_archive(data, "fuzz.tar") else { return };
    let total: usize = files.values().map(Vec::len).sum();
    assert!(total <= data.len(), "{total} bytes of files from a {} byte archive", data.len());
    let Ok(images) = archive::images(&files, "fuzz.tar") else { return };
    for image in images {
        if let Some(r) = &image.reference {
            let _ = archive::split_name_tag(r);
        }
        assert!(image.blobs.len() <= archive::MAX_LAYERS + 1);
    }
});
