//! glibc's allocator told to keep what libtorch frees.
//!
//! libtorch allocates every activation and gradient of a training step afresh (its CPU allocator
//! is plain `posix_memalign`) and frees them by the end of the step. glibc hands blocks above
//! its mmap threshold (at most 32 MiB) straight back to the kernel, and gives each thread an
//! arena whose heaps cannot grow past 64 MiB, so a MobileNetV2 step at batch 32 faulted about
//! 500 MiB of fresh zeroed pages back in every step: a fifth of the process's CPU time in the
//! kernel on the 2-core reference machine. With one arena, no mmap and no trimming, a step
//! reuses the previous step's memory; the process holds its peak (about 2.1 GiB at 224 px,
//! batch 32) until it exits, which is what a training Job sizes its memory request for.

/// The same policy as glibc's environment variables, for processes that are not ours (the
/// training benchmark's PyTorch peer).
pub const GLIBC_ENV: [(&str, &str); 3] = [
    ("MALLOC_ARENA_MAX", "1"),
    ("MALLOC_MMAP_MAX_", "0"),
    // 1 TiB: the environment takes no -1.
    ("MALLOC_TRIM_THRESHOLD_", "1099511627776"),
];

/// Applies the policy; false if glibc refused a setting. Must run before the process starts its
/// threads: glibc fixes the number of arenas when a second thread first allocates.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn keep_freed_memory() -> bool {
    // mallopt only sets glibc's allocator parameters; it touches no memory of ours.
    let applied = unsafe {
        [
            libc::mallopt(libc::M_ARENA_MAX, 1),
            libc::mallopt(libc::M_MMAP_MAX, 0),
            // -1: never trim the heap (mallopt(3)).
            libc::mallopt(libc::M_TRIM_THRESHOLD, -1),
        ]
    };
    !applied.contains(&0)
}

/// Other C libraries: their allocators keep their own policies.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn keep_freed_memory() -> bool {
    true
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    /// glibc accepts every setting as given (mallopt answers 0 to a value it refuses, e.g. a
    /// parameter this glibc does not know).
    #[test]
    fn glibc_accepts_the_policy() {
        assert!(super::keep_freed_memory());
    }
}
