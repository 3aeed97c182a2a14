//! Compiles proto/ into Rust with protox (no system protoc needed) and writes the
//! descriptor set that server reflection and the HTTP/JSON routes read;
//! everything goes to OUT_DIR.
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/careroute/v1/careroute.proto";
    println!("cargo:rerun-if-changed=proto");
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler
        .include_source_info(true)
        .include_imports(true)
        .open_file(proto)?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    // Encoded by protox itself so that extension options (the
    // `google.api.http` bindings) survive; prost's types would drop them.
    fs::write(
        out.join("careroute_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    tonic_prost_build::configure().compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
