//! The demo MCP server (rmcp, Streamable HTTP at `/mcp`): a weather-station service whose tools
//! span the risk a policy cares about: `get_forecast` only reads, `post_alert` writes,
//! `decommission_station` cannot be undone. Plus a prompt (`summarize_week`) and a resource
//! (`docs://readme`), so every kind of MCP call the filter authorizes has something behind it.
//!
//! The server trusts its caller completely, as an MCP server behind mcp-guard may: each answer
//! repeats the verified-identity headers (`x-mcp-guard-*`) it received, if the filter sent any.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{Either, Full};

use rmcp::handler::server::router::prompt::PromptRouter;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, GetPromptResult, Implementation, ListResourcesResult, PaginatedRequestParams,
    PromptMessage, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Resource, ResourceContents,
    Role, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{
    prompt, prompt_handler, prompt_router, tool, tool_handler, tool_router, ErrorData, RoleServer, ServerHandler,
};
use serde::Deserialize;

pub const README_URI: &str = "docs://readme";
const README: &str = "Weather stations demo.\n\
    get_forecast reads a forecast (scope weather:read); post_alert publishes an alert \
    (alerts:write); decommission_station shuts a station down for good (stations:admin and \
    alerts:write). mcp-guard, in front of this server, checks those scopes before a call \
    reaches it.";

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct StationArgs {
    /// Station identifier, e.g. KSEA.
    pub station: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct AlertArgs {
    /// Station identifier, e.g. KSEA.
    pub station: String,
    /// The alert text.
    pub message: String,
}

/// `x-mcp-guard-*` headers of the HTTP request behind this call, as `name=value` pairs.
fn identity(ctx: &RequestContext<RoleServer>) -> String {
    let Some(parts) = ctx.extensions.get::<http::request::Parts>() else {
        return String::new();
    };
    let pairs: Vec<String> = parts
        .headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("x-mcp-guard-"))
        .map(|(name, value)| format!("{}={}", name, String::from_utf8_lossy(value.as_bytes())))
        .collect();
    if pairs.is_empty() {
        String::new()
    } else {
        format!(" [caller: {}]", pairs.join(", "))
    }
}

fn text(message: String) -> Result<CallToolResult, ErrorData> {
    Ok(CallToolResult::success(vec![ContentBlock::text(message)]))
}

#[derive(Clone)]
pub struct WeatherServer {
    tool_router: ToolRouter<WeatherServer>,
    prompt_router: PromptRouter<WeatherServer>,
}

impl Default for WeatherServer {
    fn default() -> Self {
        Self::new()
    }
}

#[tool_router]
impl WeatherServer {
    pub fn new() -> Self {
        Self { tool_router: Self::tool_router(), prompt_router: Self::prompt_router() }
    }

    #[tool(description = "Today's forecast for a station (read-only)", annotations(read_only_hint = true))]
    fn get_forecast(
        &self,
        Parameters(args): Parameters<StationArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        text(format!("Forecast for {}: light rain, 11°C, wind SW 15 km/h.{}", args.station, identity(&ctx)))
    }

    #[tool(
        description = "Publish a weather alert for a station (writes)",
        annotations(read_only_hint = false, destructive_hint = false)
    )]
    fn post_alert(
        &self,
        Parameters(args): Parameters<AlertArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        text(format!("Alert posted for {}: {:?}.{}", args.station, args.message, identity(&ctx)))
    }

    #[tool(
        description = "Permanently decommission a station (irreversible)",
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = true)
    )]
    fn decommission_station(
        &self,
        Parameters(args): Parameters<StationArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        text(format!("Station {} decommissioned.{}", args.station, identity(&ctx)))
    }
}

#[prompt_router]
impl WeatherServer {
    /// Summarize the past week of observations at a station.
    #[prompt(name = "summarize_week")]
    async fn summarize_week(
        &self,
        Parameters(args): Parameters<StationArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResult, ErrorData> {
        let messages = vec![PromptMessage::new_text(
            Role::User,
            format!("Summarize the past seven days of observations at station {}.", args.station),
        )];
        Ok(GetPromptResult::new(messages).with_description(format!(
            "Weekly summary for {}{}",
            args.station,
            identity(&ctx)
        )))
    }
}

// Route through the routers built once in `new` (the macros default to building one per call).
#[tool_handler(router = self.tool_router)]
#[prompt_handler(router = self.prompt_router)]
impl ServerHandler for WeatherServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().enable_prompts().enable_resources().build())
            .with_server_info(Implementation::new("mcp-guard-demo-weather", env!("CARGO_PKG_VERSION")))
            .with_instructions("Weather stations: get_forecast, post_alert, decommission_station; prompt summarize_week; resource docs://readme.")
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let readme =
            Resource::new(README_URI, "readme").with_description("What this server offers and which scopes it takes");
        Ok(ListResourcesResult::with_all_items(vec![readme]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        if request.uri != README_URI {
            return Err(ErrorData::resource_not_found(format!("no resource {}", request.uri), None));
        }
        let body = format!("{README}{}", identity(&ctx));
        Ok(ReadResourceResult::new(vec![ResourceContents::text(body, README_URI)]).into())
    }
}

/// The path the MCP endpoint answers at (anything else is 404).
pub const MCP_PATH: &str = "/mcp";

/// The Streamable HTTP service: stateful sessions (`Mcp-Session-Id`, GET for the SSE stream,
/// DELETE to end one).
pub fn service() -> StreamableHttpService<WeatherServer, LocalSessionManager> {
    // Host validation stays on its loopback default: Envoy forwards the client's Host
    // (127.0.0.1:<envoy port>).
    StreamableHttpService::new(
        || Ok(WeatherServer::new()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    )
}

/// Serves the MCP server at [`MCP_PATH`] on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener) {
    let mcp = hyper_util::service::TowerToHyperService::new(service());
    let routed = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let mcp = mcp.clone();
        async move {
            if request.uri().path() == MCP_PATH {
                hyper::service::Service::call(&mcp, request).await.map(|r| r.map(Either::Left))
            } else {
                let mut response = hyper::Response::new(Full::new(Bytes::from_static(b"not found\n")));
                *response.status_mut() = http::StatusCode::NOT_FOUND;
                Ok(response.map(Either::Right))
            }
        }
    });
    crate::net::serve(listener, routed).await
}
