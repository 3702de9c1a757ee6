//! `mcp-guard-harness`: what would the filter do with this request? (See `--help`.)

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(mcp_guard_harness::cli_main(args));
}
