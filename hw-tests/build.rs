//! The store's model test (engine/tests/store_model.rs) is compiled into the
//! NVMe guest binary unchanged, so the chunk store is checked on the NVMe
//! driver by the very same test: the file is copied without its inner doc
//! comment (which `include!` cannot take) into OUT_DIR.

fn main() {
    let src = "../engine/tests/store_model.rs";
    println!("cargo:rerun-if-changed={src}");
    let text = std::fs::read_to_string(src).unwrap_or_else(|e| panic!("{src}: {e}"));
    let body: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//!"))
        .map(|l| format!("{l}\n"))
        .collect();
    let out =
        std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("store_model.rs");
    std::fs::write(&out, body).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
}
