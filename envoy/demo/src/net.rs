//! Loopback listeners and the one hyper accept loop the demo servers share.
//!
//! Everything in the demo binds to a loopback address only: the MCP server must be reachable
//! through Envoy (and the filter), never around it.

use std::future::Future;
use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::Error;

/// Parses a `--listen` value and refuses anything that is not a loopback address.
pub fn loopback_addr(value: &str) -> Result<SocketAddr, Error> {
    let addr: SocketAddr = value
        .parse()
        .map_err(|e| Error::msg(format!("--listen {value:?}: expected IP:PORT, e.g. 127.0.0.1:0 ({e})")))?;
    if !addr.ip().is_loopback() {
        return Err(Error::msg(format!("--listen {value:?}: the demo only binds to loopback addresses (127.0.0.1)")));
    }
    Ok(addr)
}

/// Binds a loopback listener (`port 0` picks a free one).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    if !addr.ip().is_loopback() {
        return Err(Error::msg(format!("refusing to bind {addr}: loopback only")));
    }
    TcpListener::bind(addr).await.map_err(|e| Error::msg(format!("cannot listen on {addr}: {e}")))
}

/// The line a binary prints first, so a script or test that started it on port 0 learns the port.
pub fn announce(listener: &TcpListener) -> Result<SocketAddr, Error> {
    let addr = listener.local_addr().map_err(|e| Error::msg(format!("listener address: {e}")))?;
    println!("listening on {addr}");
    Ok(addr)
}

/// Serves HTTP/1.1 connections from `listener` with `service` until the task is dropped.
pub async fn serve<S, B>(listener: TcpListener, service: S)
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: say so, back off, keep serving.
                eprintln!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = service.clone();
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// Runs `server` until Ctrl-C (or SIGTERM), for the binaries.
pub async fn until_shutdown(server: impl Future<Output = ()>) {
    let terminate = async {
        #[cfg(unix)]
        {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        }
        #[cfg(not(unix))]
        std::future::pending::<()>().await
    };
    tokio::select! {
        () = server => {}
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
