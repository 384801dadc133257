//! Link libtorch so that the binary and tests run without LD_LIBRARY_PATH and find CUDA where a
//! GPU exists.
//!
//! torch-sys passes its rpath only to its own static archive, and `--as-needed` drops
//! `libtorch.so` (and so `libtorch_cuda.so`) from NEEDED, which leaves CUDA unregistered on GPU
//! machines (tch-rs issues 329, 907, 980). `DEP_TCH_LIBTORCH_LIB` reaches only crates that depend
//! on torch-sys directly, hence the direct dependency in Cargo.toml.
fn main() {
    if let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.to_string_lossy());
    }
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
    println!("cargo:rerun-if-changed=build.rs");
}
