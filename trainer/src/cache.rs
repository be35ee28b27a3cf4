//! Where fitted (resized and centre-cropped) training images live between epochs: in memory up
//! to a budget, then in an unlinked file on local disk, read back with `pread` into each
//! batch. 100 k images at 224 px are 15 GB of pixels; with a budget the trainer's memory stays
//! bounded and the rest costs local disk (an `emptyDir` in the training pod) and page cache.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use image::RgbImage;

/// A fitted image, wherever it is kept.
#[derive(Debug, Clone)]
pub enum Crop {
    Memory(RgbImage),
    Disk {
        spill: Arc<SpillFile>,
        offset: u64,
        side: u32,
    },
}

impl Crop {
    /// Side of the square image in pixels.
    pub fn side(&self) -> u32 {
        match self {
            Crop::Memory(img) => img.width(),
            Crop::Disk { side, .. } => *side,
        }
    }

    /// Writes the packed HWC bytes (`3 * side * side`) into `out`.
    pub fn read_into(&self, out: &mut [u8]) -> io::Result<()> {
        match self {
            Crop::Memory(img) => {
                out.copy_from_slice(img.as_raw());
                Ok(())
            }
            Crop::Disk { spill, offset, .. } => spill.file.read_exact_at(out, *offset),
        }
    }

    /// The image itself (a copy when it lives on disk).
    pub fn to_image(&self) -> io::Result<RgbImage> {
        let side = self.side();
        let mut bytes = vec![0; 3 * (side as usize).pow(2)];
        self.read_into(&mut bytes)?;
        RgbImage::from_raw(side, side, bytes)
            .ok_or_else(|| io::Error::other("crop has the wrong number of bytes"))
    }

    pub fn in_memory(&self) -> bool {
        matches!(self, Crop::Memory(_))
    }
}

/// The unlinked file crops beyond the budget go to; it disappears with the process.
#[derive(Debug)]
pub struct SpillFile {
    file: File,
    end: AtomicU64,
}

/// Hands out [`Crop`]s, keeping at most `budget` bytes of pixels in memory.
#[derive(Debug)]
pub struct CropCache {
    budget: u64,
    in_memory: AtomicU64,
    dir: PathBuf,
    spill: Mutex<Option<Arc<SpillFile>>>,
}

/// What the cache holds, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheUsage {
    pub memory_bytes: u64,
    pub disk_bytes: u64,
}

impl CropCache {
    /// `budget` bytes of pixels in memory; the rest in a file under `dir`.
    pub fn new(budget: u64, dir: &Path) -> Self {
        Self {
            budget,
            in_memory: AtomicU64::new(0),
            dir: dir.to_path_buf(),
            spill: Mutex::new(None),
        }
    }

    /// Keeps `img` in memory while the budget allows, else appends it to the spill file.
    pub fn store(&self, img: RgbImage) -> io::Result<Crop> {
        let size = img.as_raw().len() as u64;
        let reserved = self
            .in_memory
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + size <= self.budget).then_some(used + size)
            })
            .is_ok();
        if reserved {
            return Ok(Crop::Memory(img));
        }
        let spill = self.spill_file()?;
        let offset = spill.end.fetch_add(size, Ordering::AcqRel);
        spill.file.write_all_at(img.as_raw(), offset)?;
        Ok(Crop::Disk {
            spill,
            offset,
            side: img.width(),
        })
    }

    fn spill_file(&self) -> io::Result<Arc<SpillFile>> {
        let mut slot = self.spill.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = slot.as_ref() {
            return Ok(f.clone());
        }
        let file = tempfile::tempfile_in(&self.dir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot create the image cache file in {} ({e}); set --cache-dir to a writable local directory",
                    self.dir.display()
                ),
            )
        })?;
        tracing::info!(dir = %self.dir.display(), budget_mb = self.budget >> 20, "image cache budget reached; further images go to local disk");
        let spill = Arc::new(SpillFile {
            file,
            end: AtomicU64::new(0),
        });
        *slot = Some(spill.clone());
        Ok(spill)
    }

    pub fn usage(&self) -> CacheUsage {
        let spill = self.spill.lock().unwrap_or_else(|e| e.into_inner());
        CacheUsage {
            memory_bytes: self.in_memory.load(Ordering::Acquire),
            disk_bytes: spill.as_ref().map_or(0, |s| s.end.load(Ordering::Acquire)),
        }
    }
}

/// The default budget: half the container's memory limit (cgroup v2, then v1), else half the
/// machine's memory; the other half is for libtorch, batches and the process itself.
pub fn default_budget_mb() -> u64 {
    let limit = cgroup_limit().or_else(physical_memory).unwrap_or(8 << 30);
    (limit / 2) >> 20
}

fn cgroup_limit() -> Option<u64> {
    [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(p).ok())
    .filter_map(|s| s.trim().parse::<u64>().ok())
    // cgroup v1 reports "no limit" as a huge number.
    .find(|&v| v < (1 << 50))
}

fn physical_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb << 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(seed: u8, side: u32) -> RgbImage {
        RgbImage::from_fn(side, side, |x, y| {
            image::Rgb([seed, (x as u8).wrapping_mul(3), (y as u8) ^ seed])
        })
    }

    /// Past the budget, crops go to disk and come back byte for byte.
    #[test]
    fn spills_past_the_budget_and_reads_back() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let one = 3 * 16 * 16;
        let cache = CropCache::new(2 * one, dir.path());
        let crops: Vec<Crop> = (0..5)
            .map(|k| cache.store(img(k, 16)).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        assert_eq!(crops.iter().filter(|c| c.in_memory()).count(), 2);
        assert_eq!(
            cache.usage(),
            CacheUsage {
                memory_bytes: 2 * one,
                disk_bytes: 3 * one
            }
        );
        for (k, c) in crops.iter().enumerate() {
            assert_eq!(c.to_image().ok(), Some(img(k as u8, 16)), "crop {k}");
        }
    }

    #[test]
    fn an_unwritable_directory_is_a_clear_error() {
        let cache = CropCache::new(0, Path::new("/nonexistent/cache"));
        let err = cache.store(img(1, 4)).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("--cache-dir")));
    }

    #[test]
    fn default_budget_is_positive() {
        assert!(default_budget_mb() > 0);
    }
}
