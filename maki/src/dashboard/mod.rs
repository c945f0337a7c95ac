//! `maki dashboard`: a read-only status page on the operator's machine.
//!
//! It reads the cluster over SSH like every other command — nothing new
//! is exposed on the nodes — every few seconds, and serves what it read
//! on 127.0.0.1 (by default): the nodes on a world map with their health,
//! the last events of the log (who, what, when, verified), each site's
//! live version and history, certificates and their expiry. The page
//! refreshes itself.
//!
//! It is guarded as a local web server must be: a token printed at start
//! (in the URL once, then an HttpOnly same-site cookie), the Host header
//! checked (DNS rebinding), cross-site requests refused (Origin,
//! Sec-Fetch-Site), a strict Content-Security-Policy (scripts and styles
//! from itself only, no inline script, nothing fetched elsewhere: the map
//! is drawn from coastlines embedded in the binary), GET only.
//!
//! # Layout
//! - [`state`]: what the page shows, read from the cluster.
//! - [`http`]: the server: the guards, the page, its script and the state.

mod http;
mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::cluster::Ctx;

/// `maki dashboard` arguments.
pub struct Args {
    pub listen: SocketAddr,
    pub refresh: Duration,
}

/// Serves the dashboard until interrupted.
pub async fn dashboard(ctx: Ctx, args: Args) -> anyhow::Result<()> {
    if !args.listen.ip().is_loopback() {
        eprintln!(
            "warning: the dashboard listens on {}, beyond this machine: anyone who can reach it and has the token sees the cluster's state",
            args.listen
        );
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (pass --listen)", args.listen))?;
    let bound = listener.local_addr()?;
    let token = http::Token::new();
    let shared = Arc::new(state::Shared::default());
    let ctx = Arc::new(ctx);
    tokio::spawn(state::refresh(ctx, shared.clone(), args.refresh));
    println!("maki dashboard: http://{bound}/?token={}", token.as_str());
    println!("(read-only; the token is needed once, then kept in a cookie; Ctrl-C stops it)");
    let server = http::Server::new(bound, token, shared, args.refresh);
    tokio::select! {
        r = server.serve(listener) => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
