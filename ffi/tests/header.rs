//! The committed `include/net.h` must be what cbindgen generates from the sources now.

use std::path::Path;

#[test]
fn header_is_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut fresh = Vec::new();
    cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut fresh);
    let fresh = String::from_utf8(fresh).expect("UTF-8 header");
    let path = dir.join("include/net.h");
    if std::env::var_os("NET_UPDATE_HEADER").is_some() {
        std::fs::write(&path, &fresh).expect("write include/net.h");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != fresh {
        let line = committed
            .lines()
            .zip(fresh.lines())
            .position(|(a, b)| a != b)
            .map_or_else(|| committed.lines().count().min(fresh.lines().count()), |i| i);
        panic!(
            "ffi/include/net.h is stale (first difference at line {}: committed {:?}, fresh {:?}); \
             regenerate it with `NET_UPDATE_HEADER=1 cargo test -p net-ffi --test header` and \
             commit it",
            line + 1,
            committed.lines().nth(line).unwrap_or("<end>"),
            fresh.lines().nth(line).unwrap_or("<end>"),
        );
    }
}
