//! `makiatto`, the node daemon: the command line is the library's
//! (`cli`), so that the fuzz targets reach the same parsers.

/// mimalloc returns freed memory to the system where glibc's allocator,
/// with an arena per thread, kept it (docs/benchmarks.md, "join").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    makiatto::cli::main()
}
