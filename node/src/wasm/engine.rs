//! The wasmtime engine: components compiled once per blob hash and kept on
//! disk (wasmtime's serialized form, which it checks against this engine's
//! build and settings when it loads it), instances from the pooling
//! allocator (a request pays no mmap), and a clock of epochs that stops a
//! guest in a tight loop (a plain async timeout cannot).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use makiatto_events::Blake3Hash;
pub use makiatto_protocol::health::MemoryReset;
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// One epoch: the granularity of timeouts.
pub const EPOCH: Duration = Duration::from_millis(10);
/// The largest memory any component may be given (`wasm.max_memory_mb`'s
/// ceiling): the pooling allocator's slot size.
pub const MAX_MEMORY_BYTES: usize = 512 << 20;
/// Instances the pool holds at once (more wait in the work pool's queue).
const POOL_INSTANCES: u32 = 64;
/// Memory of a linear memory slot kept resident after its instance ends,
/// and reset in place (its resident pages, found with `PAGEMAP_SCAN`:
/// those this call wrote and those kept from earlier calls, which the
/// scan cannot tell apart; copied back from the component's image or
/// zeroed) instead of given back with `madvise`. `madvise` on a process whose
/// threads run on other cores makes the kernel interrupt each of them to
/// flush its TLB: profiled on the echo handler, that was 15% of the work
/// threads' time, and every page the next call touched faulted again.
/// The scan needs /proc/self/pagemap, which wasmtime opens when the pool
/// is made: the daemon makes its engine before it drops root (after the
/// drop the process is not dumpable and the file is root's; without it,
/// wasmtime zeroes the whole kept memory, up to the memory's size, after
/// every call). 2 MiB, chosen by what it costs: the daemon's RSS after the wasm
/// bench's rounds was 310 MiB with it, 293 MiB with none kept and 366 MiB
/// with 8 MiB (one run each, docs/benchmarks.md).
const KEEP_RESIDENT: usize = 2 << 20;
/// Slots that keep their memory with no instance in them, at most (each
/// up to [`KEEP_RESIDENT`]): bounds what the pool holds between calls,
/// 128 MiB at worst. Memory beyond [`KEEP_RESIDENT`] is given back when
/// its instance ends (wasmtime's default of one slot per `madvise`:
/// batching would hold a large component's memory of several calls at
/// once).
///
/// Half the pool's memories, so that a component met for the first time
/// takes a slot never used before (wasmtime does so while a thread's
/// share of this budget is not reached) rather than one another
/// component left warm. A slot keeps the pages its earlier components
/// wrote, zeroed: wasmtime maps the new image over the old one's range
/// only, and the `PAGEMAP_SCAN` reset counts every resident page as
/// written: a small component in a slot a large one left would zero up
/// to [`KEEP_RESIDENT`] after every call, for as long as it keeps it.
const WARM_SLOTS: u32 = POOL_INSTANCES;

/// Why a component could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("blob {0} is not stored on this node")]
    Missing(Blake3Hash),
    #[error("component {hash} does not compile: {error:#}")]
    Invalid {
        hash: Blake3Hash,
        error: wasmtime::Error,
    },
    #[error("the compiled-component cache {}: {error}", path.display())]
    Cache {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// The engine of this node: instances from the pooling allocator, or,
/// where its address space cannot be reserved (about 0.5 TB of virtual
/// memory, never touched: refused under `ulimit -v`, strict overcommit
/// or valgrind), from wasmtime's on-demand allocator, with a warning.
/// Components run the same either way, each under its memory limit
/// (`StoreLimits`); on demand, an instance pays its own mmap.
pub fn engine() -> wasmtime::Result<NodeEngine> {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(POOL_INSTANCES)
        .total_core_instances(POOL_INSTANCES * 4)
        .total_memories(POOL_INSTANCES * 2)
        .total_tables(POOL_INSTANCES * 4)
        .max_memory_size(MAX_MEMORY_BYTES)
        .max_memories_per_component(4)
        .max_tables_per_component(8)
        .max_core_instances_per_component(64)
        .pagemap_scan(wasmtime::Enabled::Auto)
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(1 << 16)
        .max_unused_warm_slots(WARM_SLOTS);
    match Engine::new(&config(InstanceAllocationStrategy::Pooling(pool))) {
        Ok(engine) => {
            let reset = if page_scan() {
                MemoryReset::PageScan
            } else {
                tracing::warn!(
                    "PAGEMAP_SCAN is not available (Linux before 6.7, or /proc/self/pagemap unreadable): each WebAssembly call's memory is zeroed whole, up to 2 MiB, after it ends"
                );
                MemoryReset::WholeMemory
            };
            Ok(NodeEngine { engine, reset })
        }
        Err(error) => {
            tracing::warn!(error = %format!("{error:#}"), "the WebAssembly instance pool cannot reserve its memory; instances are allocated on demand");
            Ok(NodeEngine {
                engine: Engine::new(&config(InstanceAllocationStrategy::OnDemand))?,
                reset: MemoryReset::OnDemand,
            })
        }
    }
}

/// The engine, and how its instances' memory is made fresh for the next
/// call (reported by `makiatto health`).
#[derive(Clone)]
pub struct NodeEngine {
    pub engine: Engine,
    pub reset: MemoryReset,
}

/// Whether this process can scan its own page table for the pages a call
/// left resident (`PAGEMAP_SCAN` on /proc/self/pagemap, Linux 6.7+), as
/// wasmtime's pool does when it is made: the same file and the same
/// empty-range probe, at the same moment, so the answer is the pool's.
fn page_scan() -> bool {
    use std::os::fd::AsRawFd;
    /// `struct pm_scan_arg` of <linux/fs.h>.
    #[repr(C)]
    #[derive(Default)]
    struct PmScanArg {
        size: u64,
        flags: u64,
        start: u64,
        end: u64,
        walk_end: u64,
        vec: u64,
        vec_len: u64,
        max_pages: u64,
        category_inverted: u64,
        category_mask: u64,
        category_anyof_mask: u64,
        return_mask: u64,
    }
    /// `_IOWR('f', 16, struct pm_scan_arg)`.
    const PAGEMAP_SCAN: libc::c_ulong = 0xc000_0000
        | ((std::mem::size_of::<PmScanArg>() as libc::c_ulong) << 16)
        | ((b'f' as libc::c_ulong) << 8)
        | 16;
    let Ok(file) = std::fs::File::open("/proc/self/pagemap") else {
        return false;
    };
    let mut arg = PmScanArg {
        size: std::mem::size_of::<PmScanArg>() as u64,
        ..PmScanArg::default()
    };
    // SAFETY: PAGEMAP_SCAN reads and writes only `arg` (an empty range, no
    // output vector) on a file this function owns.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) };
    rc >= 0
}

fn config(allocation: InstanceAllocationStrategy) -> Config {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .allocation_strategy(allocation)
        // A guest that recurses without end traps on this, not the thread.
        .max_wasm_stack(1 << 20);
    config
}

/// Advances the engine's epoch every [`EPOCH`] for as long as the daemon
/// runs (a thread of its own: it must tick while every core is busy).
pub fn start_clock(engine: &Engine) -> std::io::Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("makiatto-wasm-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH);
            }
        })?;
    Ok(())
}

/// Epochs for a timeout (at least one).
pub fn ticks(timeout: Duration) -> u64 {
    (timeout.as_millis() / EPOCH.as_millis()).max(1) as u64
}

/// Compiled components on disk: `<data>/wasm/compiled/<hash>.cwasm`.
pub struct CompiledCache {
    dir: PathBuf,
}

impl CompiledCache {
    pub fn open(data_dir: &Path) -> std::io::Result<CompiledCache> {
        let dir = data_dir.join("wasm").join("compiled");
        std::fs::create_dir_all(&dir)?;
        Ok(CompiledCache { dir })
    }

    /// The cache in `dir` (made by [`CompiledCache::open`]).
    pub fn at(dir: &Path) -> CompiledCache {
        CompiledCache {
            dir: dir.to_owned(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, hash: &Blake3Hash) -> PathBuf {
        self.dir.join(format!("{}.cwasm", hash.to_hex()))
    }

    /// The component of blob `source` (whose hash is `hash`): loaded from
    /// the cache when wasmtime accepts the file there, else compiled and
    /// written (atomically). Runs on the work pool: compiling takes
    /// seconds for a large component.
    pub fn load(
        &self,
        engine: &Engine,
        hash: Blake3Hash,
        source: &Path,
    ) -> Result<Arc<Component>, CompileError> {
        let cached = self.path(&hash);
        if cached.exists() {
            // SAFETY: the file was written by `Component::serialize` of an
            // engine of this daemon into a directory only the daemon's
            // user writes; wasmtime checks its header (version, target,
            // engine settings) and refuses one made otherwise.
            match unsafe { Component::deserialize_file(engine, &cached) } {
                Ok(c) => return Ok(Arc::new(c)),
                Err(error) => {
                    tracing::warn!(component = %hash, error = %error, "a cached compiled component was refused; compiling again");
                    let _ = std::fs::remove_file(&cached);
                }
            }
        }
        let bytes = match std::fs::read(source) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CompileError::Missing(hash));
            }
            Err(error) => {
                return Err(CompileError::Cache {
                    path: source.to_owned(),
                    error,
                });
            }
        };
        let started = std::time::Instant::now();
        let component = Component::new(engine, &bytes)
            .map_err(|error| CompileError::Invalid { hash, error })?;
        tracing::info!(
            component = %hash,
            bytes = bytes.len(),
            millis = started.elapsed().as_millis() as u64,
            "component compiled"
        );
        match component.serialize() {
            Ok(compiled) => {
                let tmp = cached.with_extension("tmp");
                let written =
                    std::fs::write(&tmp, compiled).and_then(|()| std::fs::rename(&tmp, &cached));
                if let Err(error) = written {
                    tracing::warn!(component = %hash, %error, "cannot keep the compiled component");
                }
            }
            Err(error) => {
                tracing::warn!(component = %hash, %error, "cannot serialize the compiled component")
            }
        }
        Ok(Arc::new(component))
    }

    /// Deletes compiled components no kept hash names.
    pub fn collect(&self, keep: &std::collections::HashSet<Blake3Hash>) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in dir.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let hash = name
                .strip_suffix(".cwasm")
                .and_then(|h| crate::blobs::parse_hash(h).ok());
            if hash.is_none_or(|h| !keep.contains(&h)) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}
