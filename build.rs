//! Embeds the SQL migrations at build time, so the binary needs no files
//! beside it. `migrations/NNNN_name.sql` are SQLite's; PostgreSQL's, where
//! the SQL differs, live in `migrations/postgres/` with the same numbering.

use std::fmt::Write as _;
use std::path::Path;

fn collect(dir: &Path) -> Vec<(i64, String, String)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("sql") {
            continue;
        }
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        let Some((num, desc)) = stem.split_once('_') else {
            panic!(
                "migration {} must be named NNNN_description.sql",
                path.display()
            );
        };
        let version: i64 = num
            .parse()
            .unwrap_or_else(|_| panic!("migration {} must start with a number", path.display()));
        let abs = std::fs::canonicalize(&path).expect("migration path");
        found.push((version, desc.replace('_', " "), abs.display().to_string()));
    }
    found.sort();
    found
}

fn main() {
    // Read at run time: a shared target directory reuses one compiled build
    // script across checkouts, and `env!` would pin the first checkout.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let root = Path::new(&manifest).join("migrations");
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=migrations/postgres");
    let mut out = String::new();
    for (name, dir) in [
        ("SQLITE", root.clone()),
        ("POSTGRES", root.join("postgres")),
    ] {
        writeln!(out, "pub const {name}: &[(i64, &str, &str)] = &[").unwrap();
        for (version, desc, path) in collect(&dir) {
            writeln!(out, "    ({version}, {desc:?}, include_str!({path:?})),").unwrap();
        }
        writeln!(out, "];").unwrap();
    }
    let dest = Path::new(&std::env::var("OUT_DIR").unwrap()).join("migrations.rs");
    std::fs::write(dest, out).unwrap();
}
