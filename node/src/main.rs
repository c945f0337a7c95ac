//! `makiatto`, the node daemon: the command line is the library's
//! (`cli`), so that the fuzz targets reach the same parsers.

fn main() -> std::process::ExitCode {
    makiatto::cli::main()
}
