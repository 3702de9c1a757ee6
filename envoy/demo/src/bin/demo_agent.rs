//! `demo-agent`: an MCP client (rmcp) that talks to the MCP server through Envoy with DPoP and
//! runs a short scripted session, printing for each call what it asked, what it expected and
//! what the filter decided. Exits non-zero if any outcome differs from the script's.

use std::process::ExitCode;

use mcp_guard_demo::agent::{Agent, AgentConfig};
use mcp_guard_demo::cli::Spec;
use mcp_guard_demo::{script, Error};

const SPEC: Spec = Spec {
    program: "demo-agent",
    about: "a DPoP MCP client running a scripted session through Envoy",
    flags: &[
        ("mcp-url", Some("http://127.0.0.1:10000/mcp"), "the MCP endpoint through Envoy"),
        ("htu", Some(""), "the htu of DPoP proofs: the public URL the filter is configured with (default: --mcp-url)"),
        ("issuer-url", Some("http://127.0.0.1:19002"), "the demo issuer"),
        ("key", Some("es256"), "the agent's DPoP key type: es256 or ed25519"),
    ],
};

async fn run() -> Result<bool, Error> {
    let flags = SPEC.parse(std::env::args().skip(1))?;
    let ed25519 = match flags.get("key") {
        "es256" => false,
        "ed25519" => true,
        other => return Err(Error::msg(format!("--key {other:?}: expected es256 or ed25519"))),
    };
    let mcp_url = flags.get("mcp-url").to_string();
    let htu = match flags.get("htu") {
        "" => mcp_url.clone(),
        htu => htu.to_string(),
    };
    let agent = Agent::new(AgentConfig { mcp_url, htu, issuer_url: flags.get("issuer-url").to_string() }, ed25519)?;
    println!("demo-agent: MCP endpoint {} (proofs' htu {})", agent.config.mcp_url, agent.config.htu);
    let mut n = 0;
    let steps = script::run(&agent, &mut |step| {
        n += 1;
        script::print_step(n, step);
    })
    .await;
    let failed = steps.iter().filter(|s| !s.ok).count();
    if failed == 0 {
        println!("demo-agent: all {} steps went as expected", steps.len());
    } else {
        println!("demo-agent: {failed} of {} steps did not go as expected", steps.len());
    }
    Ok(failed == 0)
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo-agent: {e}");
            ExitCode::from(2)
        }
    }
}
