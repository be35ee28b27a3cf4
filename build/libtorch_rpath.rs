// Shared build script of every crate that links libtorch (model, trainer, inference).
// Bake the libtorch directory into every binary, test and bench of this crate as an RPATH
// (not RUNPATH, which the dynamic loader does not follow for libtorch's own dependencies),
// so nothing needs LD_LIBRARY_PATH. `LIBTORCH` comes from .cargo/config.toml or the caller.
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(dir) = std::env::var("LIBTORCH") {
        println!("cargo:rustc-link-arg=-Wl,--disable-new-dtags,-rpath,{dir}/lib");
    }
}
