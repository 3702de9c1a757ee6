//! `demo-issuer --listen 127.0.0.1:PORT --audience URL [--issuer URL]`: the demo's authorization
//! server. `GET /jwks`, `POST /token`, `POST /rotate`; see `mcp_guard_demo::issuer`.

use std::process::ExitCode;
use std::sync::Arc;

use mcp_guard_demo::cli::Spec;
use mcp_guard_demo::issuer::{self, Issuer};
use mcp_guard_demo::{net, Error};

const SPEC: Spec = Spec {
    program: "demo-issuer",
    about: "the demo's authorization server: mints DPoP- and mTLS-bound ES256 access tokens",
    flags: &[
        ("listen", Some("127.0.0.1:19002"), "loopback address to listen on (port 0: any free port)"),
        ("issuer", Some(""), "the tokens' iss (default: http://<the address it listens on>)"),
        ("audience", Some("http://127.0.0.1:10000/mcp"), "the tokens' default aud: the MCP endpoint's public URL"),
    ],
};

async fn run() -> Result<(), Error> {
    let flags = SPEC.parse(std::env::args().skip(1))?;
    let listener = net::bind(net::loopback_addr(flags.get("listen"))?).await?;
    let addr = net::announce(&listener)?;
    let issuer_url = match flags.get("issuer") {
        "" => format!("http://{addr}"),
        url => url.to_string(),
    };
    let issuer = Arc::new(Issuer::new(&issuer_url, flags.get("audience")));
    println!("issuer {issuer_url}, audience {}, signing key kid {}", flags.get("audience"), issuer.kid());
    net::until_shutdown(issuer::serve(listener, issuer)).await;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo-issuer: {e}");
            ExitCode::FAILURE
        }
    }
}
