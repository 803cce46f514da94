//! What a component sees of `wasi:http` beyond its own incoming request:
//! every outgoing request is refused (`http-request-denied`), so a web
//! endpoint has no network, as no guest has without `allowed_hosts`.

use wasmtime_wasi_http::{
    Error, RequestOptions, WasiBody, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use super::component::ComponentState;

/// The hooks that decide what a component's outgoing requests may reach:
/// nothing.
#[derive(Default)]
pub struct NoNetwork;

/// What `send_request` hands back: the response, and a future that
/// reports how its body ended.
type Sent = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), Error>> + Send>,
                ),
                Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for NoNetwork {
    fn send_request(
        &mut self,
        _request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _body_ended: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Sent {
        Box::new(async { Err(Error::HttpRequestDenied) })
    }
}

impl WasiHttpView for ComponentState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.network,
        }
    }
}
