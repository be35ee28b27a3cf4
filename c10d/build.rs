// Compiles csrc/shim.cpp against the libtorch tch links (torch-sys tells where it is, as
// DEP_TCH_LIBTORCH_LIB; else $LIBTORCH) and gloo's headers, which PyPI's torch wheel does not
// ship: scripts/setup-debs.sh (run by `make setup`) puts Debian's libgloo-dev headers in
// .deps/gloo/include and .cargo/config.toml names that directory. The NCCL path is compiled
// only against a CUDA libtorch (libtorch_cuda.so beside libtorch_cpu.so) with NCCL's and the
// CUDA runtime's headers at hand; the crate then gets `--cfg c10d_nccl`.

#[path = "../build/libtorch_rpath.rs"]
mod libtorch_rpath;

use std::env;
use std::path::{Path, PathBuf};

const GLOO_ENV: &str = "FACE2SIMPSON_GLOO_INCLUDE";
const NCCL_ENV: &str = "FACE2SIMPSON_NCCL_INCLUDE";
const CUDA_ENV: &str = "FACE2SIMPSON_CUDA_INCLUDE";

fn main() {
    libtorch_rpath::main();
    println!("cargo:rerun-if-changed=csrc/shim.cpp");
    println!("cargo:rustc-check-cfg=cfg(c10d_nccl)");
    for var in [GLOO_ENV, NCCL_ENV, CUDA_ENV, "DEP_TCH_LIBTORCH_LIB"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let lib = libtorch_lib();
    let root = lib.parent().map(Path::to_path_buf).unwrap_or_default();
    let gloo = gloo_include();

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        .std("c++17")
        // The libtorch headers warn under -Wall; ours should not.
        .flag(format!("-isystem{}", root.join("include").display()))
        .flag(format!(
            "-isystem{}",
            root.join("include/torch/csrc/api/include").display()
        ))
        .flag(format!("-isystem{}", gloo.display()))
        .define("USE_C10D_GLOO", None)
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("GLOG_USE_GLOG_EXPORT", None)
        .warnings(true)
        .extra_warnings(true)
        .file("csrc/shim.cpp");
    if let Some(includes) = nccl_includes(&lib, &root) {
        build.define("USE_C10D_NCCL", None).define("F2S_NCCL", None);
        for dir in includes {
            build.flag(format!("-isystem{}", dir.display()));
        }
        println!("cargo:rustc-cfg=c10d_nccl");
    }
    build.compile("f2s_c10d");
    println!("cargo:rustc-link-search=native={}", lib.display());
    // The shim calls c10d directly (tch only needs it indirectly): keep the libraries it uses.
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}

/// libtorch's `lib/` directory.
fn libtorch_lib() -> PathBuf {
    if let Ok(lib) = env::var("DEP_TCH_LIBTORCH_LIB") {
        return PathBuf::from(lib);
    }
    match env::var("LIBTORCH") {
        Ok(dir) => Path::new(&dir).join("lib"),
        Err(_) => panic!(
            "face2simpson-c10d: cannot tell where libtorch is (neither torch-sys's \
             DEP_TCH_LIBTORCH_LIB nor LIBTORCH is set); run `make setup`"
        ),
    }
}

/// The directory holding `gloo/`, or a build failure that says how to get it.
fn gloo_include() -> PathBuf {
    let dir = env::var_os(GLOO_ENV).map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "face2simpson-c10d: {GLOO_ENV} is not set. It names the directory holding gloo's \
             headers (PyPI's torch wheel ships none); `make setup` fetches them into \
             .deps/gloo/include and .cargo/config.toml points there"
        )
    });
    let marker = dir.join("gloo/config.h");
    println!("cargo:rerun-if-changed={}", marker.display());
    if !marker.is_file() {
        panic!(
            "face2simpson-c10d: gloo's headers are not in {} ({} is missing). Run `make setup` \
             (scripts/setup-debs.sh fetches Debian's libgloo-dev headers into .deps/gloo/include) \
             or point {GLOO_ENV} at a directory holding gloo/",
            dir.display(),
            marker.display()
        );
    }
    dir
}

/// NCCL's and the CUDA runtime's include directories when this libtorch is a CUDA build and
/// both are at hand: from the variables, else where PyPI's wheels put them (torch/lib beside
/// nvidia/<package>/include, the layout `scripts/setup.sh --cuda` keeps).
fn nccl_includes(lib: &Path, root: &Path) -> Option<Vec<PathBuf>> {
    if !lib.join("libtorch_cuda.so").is_file() {
        return None;
    }
    let nvidia = root.parent().map(|p| p.join("nvidia")).unwrap_or_default();
    // CUDA 13's wheels keep the runtime under nvidia/cu13, CUDA 12's under nvidia/cuda_runtime.
    let pick = |var: &str, wheels: &[&str], header: &str| {
        let candidates: Vec<PathBuf> = match env::var_os(var) {
            Some(dir) => vec![PathBuf::from(dir)],
            None => wheels
                .iter()
                .map(|w| nvidia.join(w).join("include"))
                .collect(),
        };
        candidates
            .into_iter()
            .find(|dir| dir.join(header).is_file())
    };
    let nccl = pick(NCCL_ENV, &["nccl"], "nccl.h");
    let cuda = pick(CUDA_ENV, &["cu13", "cuda_runtime"], "cuda_runtime_api.h");
    match (nccl, cuda) {
        (Some(nccl), Some(cuda)) => Some(vec![nccl, cuda]),
        _ => {
            println!(
                "cargo:warning=face2simpson-c10d: CUDA libtorch without NCCL's or the CUDA \
                 runtime's headers ({NCCL_ENV}, {CUDA_ENV}); building Gloo only"
            );
            None
        }
    }
}
