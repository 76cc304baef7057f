//! The committed header is what cbindgen makes of the C layer now: a stale header fails here.
//! `METACOMPRESS_BLESS=1` writes the new one instead.

use std::path::Path;

#[test]
fn header_is_current() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut config =
        cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml");
    // The version the header describes: the workspace's one version (Cargo.toml), so a header
    // from another version is stale here too.
    config.after_includes = Some(format!(
        "\n/* The version of this header; mc_version() returns the loaded library's. */\n\
         #define MC_VERSION_MAJOR {}\n#define MC_VERSION_MINOR {}\n#define MC_VERSION_PATCH {}",
        env!("CARGO_PKG_VERSION_MAJOR"),
        env!("CARGO_PKG_VERSION_MINOR"),
        env!("CARGO_PKG_VERSION_PATCH")
    ));
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen reads src/lib.rs")
        .write(&mut generated);
    let generated = String::from_utf8(generated).expect("UTF-8");
    let path = crate_dir.join("../../include/metacompress.h");
    if std::env::var_os("METACOMPRESS_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write include/metacompress.h");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/metacompress.h is stale: it differs from what cbindgen makes of \
         bindings/c/src/lib.rs; regenerate it with \
         METACOMPRESS_BLESS=1 cargo test --release -p metacompress-c --test header"
    );
}
