// The service never links libtorch: only its tests and benchmarks do (they train and export real
// models through the trainer). Give just those targets libtorch's directory as an RPATH (see
// build/libtorch_rpath.rs for why RPATH and not RUNPATH).
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(dir) = std::env::var("LIBTORCH") {
        for kind in ["tests", "benches"] {
            println!("cargo:rustc-link-arg-{kind}=-Wl,--disable-new-dtags,-rpath,{dir}/lib");
        }
    }
}
