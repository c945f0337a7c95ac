//! The Rust side of the two WIT packages in `wit/` (the compatibility
//! contract: a component built against them runs unchanged).

/// `makiatto:http@0.1.0`, world `http`.
pub mod http {
    wasmtime::component::bindgen!({
        path: "../wit/http",
        world: "makiatto:http/http",
    });
    pub use exports::makiatto::http::handler::{Method, NodeContext, Request, Response};
}

/// `makiatto:transform@0.1.0`, world `transform`.
pub mod transform {
    wasmtime::component::bindgen!({
        path: "../wit/transform",
        world: "makiatto:transform/transform",
    });
    pub use exports::makiatto::transform::transformer::{FileInfo, NodeContext};
}
