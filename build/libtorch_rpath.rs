// Shared build script of every crate that links libtorch (model, trainer, inference).
//
// 1. Bake the libtorch directory into every binary, test and bench of this crate as an RPATH
//    (not RUNPATH, which the dynamic loader does not follow for libtorch's own dependencies),
//    so nothing needs LD_LIBRARY_PATH. `LIBTORCH` comes from .cargo/config.toml or the caller.
// 2. Keep libtorch.so as a dependency even though nothing calls into it: rustc links with
//    --as-needed, which would drop it. On CPU it is an empty wrapper; in the trainer image the
//    GPU libtorch's libtorch.so sits at the same path and pulls in libtorch_cuda.so, whose
//    static initialisers register CUDA. Without it the same binary would never see a GPU.
pub fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(dir) = std::env::var("LIBTORCH") {
        println!("cargo:rustc-link-arg=-Wl,--disable-new-dtags,-rpath,{dir}/lib");
        println!("cargo:rustc-link-arg=-Wl,-L{dir}/lib,--no-as-needed,-ltorch,--as-needed");
    }
}
