//! What one call of a component may touch: its store's state. WASI
//! preview 2 with the live version of the function's own domain mounted
//! read-only at `/` (a tree of hard links into the blob store, nothing
//! else: never another domain's files, never a write), its `env` values
//! (opened on this node, held in memory only), outgoing TCP to public
//! addresses only (`destination`), no UDP, and a memory limit.

use std::path::Path;
use std::sync::Arc;

use wasmtime::ResourceLimiter;
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, ResourceTable, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::destination::Destinations;
use super::outgoing::Outgoing;

/// The memory a call may take.
pub struct Memory {
    max: usize,
    /// Set when the guest asked for more: the call answers "memory limit",
    /// not a plain trap.
    pub exceeded: bool,
}

impl ResourceLimiter for Memory {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max {
            self.exceeded = true;
            return Err(wasmtime::Error::msg(format!(
                "the component asked for {} MiB of memory, over its limit of {} MiB",
                desired >> 20,
                self.max >> 20
            )));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// A call's store state.
pub struct Sandbox {
    wasi: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    pub memory: Memory,
    pub outgoing: Outgoing,
}

/// What a call is given.
pub struct Grant<'a> {
    /// Whose call it is (domain, component path), for the log.
    pub caller: (Arc<str>, Arc<str>),
    /// The live version's tree, mounted read-only at `/` (none: no files).
    pub root: Option<&'a Path>,
    pub env: &'a [(String, String)],
    pub max_memory: usize,
    pub destinations: Destinations,
    /// Outgoing requests and connections allowed in this call.
    pub outgoing_calls: u32,
    /// When the call must be over: outgoing waits end by then too (the
    /// epoch only stops a guest while it runs its own code).
    pub deadline: std::time::Instant,
}

impl Sandbox {
    pub fn new(grant: Grant<'_>) -> wasmtime::Result<Sandbox> {
        let mut b = WasiCtxBuilder::new();
        b.envs(grant.env);
        if let Some(root) = grant.root {
            b.preopened_dir(root, "/", FsPerms::ReadOnly)?;
        }
        let outgoing = Outgoing::new(
            grant.caller,
            grant.destinations,
            grant.outgoing_calls,
            grant.deadline,
        );
        let check = outgoing.clone();
        b.allow_udp(false)
            .allow_tcp(true)
            .allow_ip_name_lookup(true)
            .socket_addr_check(move |addr, using| {
                let allowed = match using {
                    // The implicit bind before a connect (the wildcard).
                    SocketAddrUse::TcpBind => true,
                    SocketAddrUse::TcpConnect => check.allow(addr.ip()),
                    // No listening, no UDP.
                    _ => false,
                };
                Box::pin(async move { allowed })
            });
        Ok(Sandbox {
            wasi: b.build(),
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            memory: Memory {
                max: grant.max_memory,
                exceeded: false,
            },
            outgoing,
        })
    }
}

impl WasiView for Sandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Sandbox {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            hooks: &mut self.outgoing,
            table: &mut self.table,
            ctx: &mut self.http,
        }
    }
}
