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
            .unwrap_or_else(|| committed.lines().count().min(fresh.lines().count()));
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

/// Every `extern "C"` function's body runs inside the panic boundary: the first thing it
/// does is call `boundary`, `boundary_quiet` or `boundary_value`.
#[test]
fn every_entry_point_runs_in_the_boundary() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut checked = 0;
    for entry in std::fs::read_dir(&src).expect("src dir") {
        let path = entry.expect("dir entry").path();
        let text = std::fs::read_to_string(&path).expect("source");
        for (at, _) in text.match_indices("extern \"C\" fn ") {
            let rest = &text[at..];
            let name: String = rest["extern \"C\" fn ".len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            // The body starts at the first `{` after the signature's closing parenthesis.
            let sig_end = rest.find(") ->").expect("a return type");
            let body = &rest[sig_end..];
            let open = body.find('{').expect("a body");
            let first = body[open + 1..].trim_start();
            assert!(
                first.starts_with("boundary(")
                    || first.starts_with("boundary_quiet(")
                    || first.starts_with("boundary_value("),
                "{}: `{name}` does not start with the panic boundary",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 14, "found only {checked} entry points");
}
