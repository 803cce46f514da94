//! `hello` as a wasi:http proxy component, for `wasmtime serve` (see
//! bench/run.py): every request is answered 200 with the text `hello` prints
//! when run without arguments — `hello from wasmhost`, then `GREETING=…` when
//! the environment has GREETING (`wasmtime serve -S cli=y --env GREETING=hi`).

#[cfg(target_env = "p2")]
mod handler {
    use std::io::Write as _;

    use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

    wasi::http::proxy::export!(Hello);

    struct Hello;

    impl wasi::exports::http::incoming_handler::Guest for Hello {
        fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
            let mut text = String::from("hello from wasmhost\n");
            if let Ok(greeting) = std::env::var("GREETING") {
                text.push_str(&format!("GREETING={greeting}\n"));
            }
            let headers = Fields::new();
            headers
                .set("content-type", &[b"text/plain; charset=utf-8".to_vec()])
                .expect("content-type is a valid header");
            let response = OutgoingResponse::new(headers);
            let body = response.body().expect("a fresh response has a body");
            ResponseOutparam::set(response_out, Ok(response));
            let mut out = body.write().expect("a fresh body has a stream");
            out.write_all(text.as_bytes()).expect("write the body");
            out.flush().expect("flush the body");
            drop(out);
            OutgoingBody::finish(body, None).expect("finish the body");
        }
    }
}
