//! A `wasi:http/proxy` component answers a request: its response is sent
//! as soon as it sets one, its body streamed as it writes it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::StatusCode;
use http_body_util::BodyExt;

use super::{Endpoint, Response, WebRequest, answered, failure, text_response};
use crate::calls::Ending;
use crate::invoke::{Call, Held};

/// Who answers the client: the guest's response, or, if it sets none, the
/// host's one-line failure. Whichever comes first is sent.
type Answer = Arc<Mutex<Option<Box<dyn FnOnce(Response) + Send + Sync>>>>;

pub fn serve(
    endpoint: &Endpoint,
    held: Held,
    request: WebRequest,
    respond: impl FnOnce(Response) + Send + Sync + 'static,
) -> Ending {
    let answer: Answer = Arc::new(Mutex::new(Some(Box::new(respond))));
    let status: Arc<Mutex<Option<StatusCode>>> = Arc::default();
    let (guest_answer, guest_status) = (answer.clone(), status.clone());
    let respond_from_guest = Box::new(move |result: Result<_, _>| {
        let response = match result {
            Ok(response) => response,
            Err(code) => text_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("the endpoint answered with an error: {code:?}"),
            ),
        };
        *lock(&guest_status) = Some(response.status());
        if let Some(send) = lock(&guest_answer).take() {
            send(response);
        }
    });
    let env = BTreeMap::new();
    let call = Call {
        args: &[],
        env: &env,
        stop: endpoint.stop,
    };
    let ended = endpoint.prepared.serve_http(
        Some(held),
        &call,
        request.map(|body| body.boxed_unsync()),
        respond_from_guest,
        endpoint.log.clone(),
    );
    let guest_status = *lock(&status);
    let failed = !ended.succeeded();
    match guest_status {
        Some(status) => answered(status, failed.then(|| failure(&ended).1)),
        None => {
            let (status, reason) = match failed {
                true => failure(&ended),
                false => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the endpoint returned without setting a response".to_owned(),
                ),
            };
            if let Some(send) = lock(&answer).take() {
                send(text_response(status, &reason));
            }
            answered(status, Some(reason))
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
