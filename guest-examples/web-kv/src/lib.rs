//! A key-value store as a web endpoint (`wasmhost` serves it at its route,
//! e.g. `/kv/...`): `GET /kv/KEY` answers the value kept in `/data/KEY`
//! (404 if none), `POST /kv/KEY` stores the request body there and answers
//! 201 with a `Location`. Every answer carries `x-kv-key`. For the tests of
//! failures, a path ending in `/trap` panics and one ending in `/sleep`
//! sleeps for a minute.

#[cfg(target_env = "p2")]
mod handler {
    use std::io::{Read as _, Write as _};

    use wasi::http::types::{
        Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
    };

    wasi::http::proxy::export!(Kv);

    struct Kv;

    impl wasi::exports::http::incoming_handler::Guest for Kv {
        fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
            let path = request.path_with_query().unwrap_or_default();
            let path = path.split('?').next().unwrap_or_default().to_owned();
            if path.ends_with("/trap") {
                panic!("asked to trap at {path}");
            }
            if path.ends_with("/sleep") {
                std::thread::sleep(std::time::Duration::from_secs(60));
            }
            let key = path.rsplit('/').next().unwrap_or_default().to_owned();
            let file = format!("/data/{key}");
            let (status, body, location) = match request.method() {
                _ if key.is_empty() || key.starts_with('.') => {
                    (400, "name a key: /kv/KEY\n".to_owned(), None)
                }
                Method::Get => match std::fs::read(&file) {
                    Ok(value) => (200, String::from_utf8_lossy(&value).into_owned(), None),
                    Err(_) => (404, format!("no value for {key}\n"), None),
                },
                Method::Post | Method::Put => {
                    let value = read_body(&request);
                    match std::fs::write(&file, &value) {
                        Ok(()) => (
                            201,
                            format!("stored {} bytes at {key}\n", value.len()),
                            Some(path.clone()),
                        ),
                        Err(e) => (500, format!("cannot write {file}: {e}\n"), None),
                    }
                }
                _ => (405, "use GET or POST\n".to_owned(), None),
            };
            let headers = Fields::new();
            let set = |name: &str, value: &str| {
                headers
                    .append(name, value.as_bytes())
                    .expect("a valid header");
            };
            set("content-type", "text/plain; charset=utf-8");
            set("x-kv-key", &key);
            if let Some(location) = &location {
                set("location", location);
            }
            let response = OutgoingResponse::new(headers);
            response.set_status_code(status).expect("a valid status");
            let out_body = response.body().expect("a fresh response has a body");
            ResponseOutparam::set(response_out, Ok(response));
            let mut out = out_body.write().expect("a fresh body has a stream");
            out.write_all(body.as_bytes()).expect("write the body");
            out.flush().expect("flush the body");
            drop(out);
            OutgoingBody::finish(out_body, None).expect("finish the body");
        }
    }

    fn read_body(request: &IncomingRequest) -> Vec<u8> {
        let body = request.consume().expect("the body is read once");
        let mut value = Vec::new();
        {
            let mut stream = body.stream().expect("a fresh body has a stream");
            stream.read_to_end(&mut value).expect("read the body");
        }
        wasi::http::types::IncomingBody::finish(body);
        value
    }
}
