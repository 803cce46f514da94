//! `wasi:http` for components: the outgoing handler, which sends a request
//! only if the function's `allowed_hosts` allow it (see `outbound`), and
//! the guarded name lookup of `wasi:sockets`. Every component gets both,
//! so one that imports them links whatever app.toml says; without
//! `allowed_hosts` each request is refused inside the guest
//! (`error-code::HTTP-request-denied`).

use http_body_util::BodyExt;
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::Network;
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{Host, ResolveAddressStream};
use wasmtime_wasi::p2::bindings::sockets::network::ErrorCode;
use wasmtime_wasi::sockets::WasiSocketsView;
use wasmtime_wasi_http::{
    Error, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use super::component::ComponentState;
use super::outbound::Outbound;

/// The `wasi:sockets` name-lookup interface that wasmtime-wasi links,
/// shadowed by [`add_to_linker`]; components importing any 0.2 version of
/// it are linked to this one.
const IP_NAME_LOOKUP: &str = "wasi:sockets/ip-name-lookup@0.2.12";

/// An instance's `wasi:http` state.
pub struct HttpState {
    ctx: WasiHttpCtx,
    hooks: Guarded,
}

impl HttpState {
    pub fn new(outbound: Outbound) -> Self {
        Self {
            ctx: WasiHttpCtx::new(),
            hooks: Guarded(outbound),
        }
    }
}

/// wasmtime-wasi-http's sender behind the allowed hosts.
struct Guarded(Outbound);

type Pending = Box<dyn Future<Output = Result<(), Error>> + Send>;

impl WasiHttpHooks for Guarded {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _: Pending,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, Pending), Error>> + Send> {
        if !self.0.allows_request(request.uri()) {
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        Box::new(async move {
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((response.map(BodyExt::boxed_unsync), Box::new(io) as Pending))
        })
    }
}

impl WasiHttpView for ComponentState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http.ctx,
            table: &mut self.table,
            hooks: &mut self.http.hooks,
        }
    }
}

/// Adds `wasi:http/outgoing-handler` and its types, and puts the allowed
/// hosts in front of `wasi:sockets` name lookups.
pub fn add_to_linker(linker: &mut Linker<ComponentState>) -> anyhow::Result<()> {
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    linker.allow_shadowing(true);
    let added = linker.instance(IP_NAME_LOOKUP)?.func_wrap(
        "resolve-addresses",
        |mut store: StoreContextMut<'_, ComponentState>,
         (network, name): (Resource<Network>, String)| {
            if !store.data().http.hooks.0.allows_lookup(&name) {
                return Ok((Err(ErrorCode::PermanentResolverFailure),));
            }
            let resolved: Result<Resource<ResolveAddressStream>, ErrorCode> =
                match Host::resolve_addresses(&mut store.data_mut().sockets(), network, name) {
                    Ok(stream) => Ok(stream),
                    Err(error) => Err(error.downcast()?),
                };
            Ok((resolved,))
        },
    );
    linker.allow_shadowing(false);
    added?;
    Ok(())
}
