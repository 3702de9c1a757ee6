//! `demo-mcp-server --listen 127.0.0.1:PORT`: the demo's MCP server (rmcp, Streamable HTTP at
//! `/mcp`). With port 0 it picks a free port; the first line it prints names it.

use std::process::ExitCode;

use mcp_guard_demo::cli::Spec;
use mcp_guard_demo::{net, weather, Error};

const SPEC: Spec = Spec {
    program: "demo-mcp-server",
    about: "the demo MCP server (weather stations), Streamable HTTP at /mcp",
    flags: &[("listen", Some("127.0.0.1:19001"), "loopback address to listen on (port 0: any free port)")],
};

async fn run() -> Result<(), Error> {
    let flags = SPEC.parse(std::env::args().skip(1))?;
    let listener = net::bind(net::loopback_addr(flags.get("listen"))?).await?;
    let addr = net::announce(&listener)?;
    println!("MCP endpoint: http://{addr}{}", weather::MCP_PATH);
    net::until_shutdown(weather::serve(listener)).await;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo-mcp-server: {e}");
            ExitCode::FAILURE
        }
    }
}
