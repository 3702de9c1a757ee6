//! The scripted session `demo-agent` runs through Envoy: what it asks, what it expects the filter
//! to decide, and what the filter decided. The e2e test runs the same script.

use serde_json::json;

use crate::agent::{Agent, RawRequest, Refusal};
use crate::Error;

/// The scope the demo token carries: enough to read forecasts, not to decommission stations.
pub const DEMO_SCOPE: &str = "weather:read";

/// One step: what was asked, what the script expected, what happened.
#[derive(Debug, Clone)]
pub struct Step {
    pub asked: String,
    pub expected: String,
    pub got: String,
    pub ok: bool,
}

impl Step {
    fn new(asked: impl Into<String>, expected: impl Into<String>, got: impl Into<String>, ok: bool) -> Step {
        Step { asked: asked.into(), expected: expected.into(), got: got.into(), ok }
    }
}

/// Runs the script, reporting each step to `report` as it completes. Stops early when a step
/// leaves nothing to continue with (no token, no session); the last step then says why.
pub async fn run(agent: &Agent, report: &mut dyn FnMut(&Step)) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut record = |step: Step, steps: &mut Vec<Step>| {
        report(&step);
        steps.push(step);
    };
    let result = run_steps(agent, &mut |step| record(step, &mut steps)).await;
    if let Err(e) = result {
        record(Step::new("(script)", "every step to run", format!("stopped: {e}"), false), &mut steps);
    }
    steps
}

async fn run_steps(agent: &Agent, record: &mut dyn FnMut(Step)) -> Result<(), Error> {
    // 1. A token bound to the agent's own key.
    let token = agent.request_token(&agent.dpop_token_request(DEMO_SCOPE)).await?;
    record(Step::new(
        format!(
            "POST {}/token  scope={DEMO_SCOPE:?}, dpop_jkt=<thumbprint of the agent's {} key>",
            agent.config.issuer_url,
            agent.key_alg()
        ),
        "a DPoP-bound access token",
        format!("token_type {}, expires in {} s, cnf.jkt={}", token.token_type, token.expires_in, agent.jkt()),
        token.token_type == "DPoP",
    ));
    let holder = agent.holder(token.access_token);

    // 2. A real rmcp session: every HTTP request it makes carries a fresh proof.
    let session = agent.connect(holder.clone()).await?;
    let tools = session.tool_names().await;
    let got = match &tools {
        Ok(names) => format!(
            "allowed: session {}, protocol {}, tools: {}",
            session.session_id().unwrap_or_else(|| "-".into()),
            session.protocol_version().unwrap_or_else(|| "-".into()),
            names.join(", ")
        ),
        Err(e) => format!("failed: {e}"),
    };
    record(Step::new(
        "initialize + tools/list",
        "allowed (a valid DPoP-bound token is all they need)",
        got,
        tools.is_ok(),
    ));

    // 3. A read-only tool the token's scope covers.
    let forecast = session.call_tool("get_forecast", json!({"station": "KSEA"})).await;
    let (got, ok) = match &forecast {
        Ok(text) => (format!("allowed: {text}"), true),
        Err(e) => (describe(e), false),
    };
    record(Step::new(
        "tools/call get_forecast {station: KSEA}",
        "allowed (needs weather:read, which the token has)",
        got,
        ok,
    ));

    // 4. An irreversible tool the token's scope does not cover: MCP step-up challenge.
    let decommission = session.call_tool("decommission_station", json!({"station": "KSEA"})).await;
    let (got, ok) = match &decommission {
        Ok(text) => (format!("allowed (!): {text}"), false),
        Err(e) => match Refusal::of(e) {
            Some(r) => (
                format!(
                    "refused {} {}; WWW-Authenticate asks for scope=\"{}\"",
                    r.status,
                    r.error().unwrap_or_default(),
                    r.scope().unwrap_or_default()
                ),
                r.status == 403 && r.error().as_deref() == Some("insufficient_scope") && r.scope().is_some(),
            ),
            None => (describe(e), false),
        },
    };
    record(Step::new(
        "tools/call decommission_station {station: KSEA}",
        "refused 403 insufficient_scope (needs stations:admin)",
        got,
        ok,
    ));

    // 5. Someone who captured a request (token and proof) sends it again.
    let body = json!({"jsonrpc": "2.0", "id": 9001, "method": "tools/call",
                      "params": {"name": "get_forecast", "arguments": {"station": "KSEA"}}})
    .to_string();
    let mut captured = RawRequest::post(body).signed(&holder);
    if let Some(id) = session.session_id() {
        captured = captured.header("mcp-session-id", &id);
    }
    if let Some(version) = session.protocol_version() {
        captured = captured.header("mcp-protocol-version", &version);
    }
    let first = agent.send_raw(&captured).await?;
    let replay = agent.send_raw(&captured).await?;
    let replay_reason = replay.reason().unwrap_or_else(|| "-".into());
    let replay_error = replay.challenges().first().and_then(|c| crate::agent::challenge_param(c, "error"));
    record(Step::new(
        "the same request twice, with the same DPoP proof (a captured request replayed)",
        "first 200, replay 401 dpop_replay",
        format!(
            "first: {}; replay: {} {} (error=\"{}\")",
            first.status,
            replay.status,
            replay_reason,
            replay_error.unwrap_or_default()
        ),
        first.status == 200 && replay.status == 401 && replay_reason == "dpop_replay",
    ));

    // 6. End the session: the DELETE carries a proof too.
    let (post, get, delete) = session.close().await?;
    record(Step::new(
        "DELETE (end the session)",
        "allowed",
        format!("closed; fresh proofs sent by the rmcp client: POST {post}, GET {get}, DELETE {delete}"),
        delete >= 1,
    ));
    Ok(())
}

fn describe(error: &rmcp::service::ServiceError) -> String {
    match Refusal::of(error) {
        Some(r) => format!("refused {}: {}", r.status, r.challenge),
        None => format!("failed: {error}"),
    }
}

/// Prints a step as the demo shows it.
pub fn print_step(n: usize, step: &Step) {
    let mark = if step.ok { "ok " } else { "FAIL" };
    println!("[{n}] {}", step.asked);
    println!("    expected: {}", step.expected);
    println!("    {mark}  {}", step.got);
}
