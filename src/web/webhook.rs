//! `POST /webhook` (SPEC 7.1). The extractor checks size, signature, headers
//! and JSON; the handler only stores and acknowledges. No work happens while
//! GitHub waits.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use tracing::Instrument;

use super::AppState;
use crate::domain::DeliveryId;
use crate::store::{NewDelivery, Payload};
use crate::webhook::events::{self, Parsed};
use crate::webhook::signature;

/// GitHub caps payloads at 25 MB; anything larger is not from GitHub.
pub const MAX_BODY: usize = 25 * 1024 * 1024;

/// A delivery whose signature, headers and JSON have been checked. The
/// body itself is not kept: what is stored is its compressed copy, and
/// what the worker gets is the event parsed from it.
pub struct VerifiedDelivery {
    pub id: DeliveryId,
    pub event: String,
    pub payload: Payload,
    /// The body as the worker will want it.
    pub parsed: Parsed,
}

/// Why a request is not a delivery: always a 4xx with a one-line reason.
pub struct Rejection(StatusCode, &'static str);

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// The body in one buffer. A body that arrives in one chunk (a webhook
/// usually does) is that chunk, the connection's own buffer, not a copy;
/// one in several chunks is joined once, at its size. Refused over
/// [`MAX_BODY`] whatever `Content-Length` says.
async fn read_body(mut body: Body, headers: &HeaderMap) -> Result<Bytes, Rejection> {
    use http_body_util::BodyExt;
    let too_large = || Rejection(StatusCode::PAYLOAD_TOO_LARGE, "payload larger than 25 MiB");
    let announced = header(headers, "content-length").and_then(|v| v.parse::<usize>().ok());
    if announced.is_some_and(|n| n > MAX_BODY) {
        return Err(too_large());
    }
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|_| Rejection(StatusCode::BAD_REQUEST, "the body could not be read"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len();
        if total > MAX_BODY {
            return Err(too_large());
        }
        if !data.is_empty() {
            chunks.push(data);
        }
    }
    match chunks.as_slice() {
        // A reference count, not a copy.
        [only] => Ok(only.clone()),
        all => Ok(all.concat().into()),
    }
}

impl FromRequest<AppState> for VerifiedDelivery {
    type Rejection = Rejection;

    async fn from_request(req: Request<Body>, state: &AppState) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let bytes = read_body(body, &parts.headers).await?;
        let headers = &parts.headers;
        let Some(sig) = header(headers, "x-hub-signature-256") else {
            return Err(Rejection(
                StatusCode::UNAUTHORIZED,
                "missing X-Hub-Signature-256",
            ));
        };
        if !signature::verify(&state.config.github.webhook_secrets, &bytes, sig) {
            return Err(Rejection(
                StatusCode::UNAUTHORIZED,
                "signature does not match",
            ));
        }
        let Some(event) = header(headers, "x-github-event") else {
            return Err(Rejection(StatusCode::BAD_REQUEST, "missing X-GitHub-Event"));
        };
        let Some(id) = header(headers, "x-github-delivery") else {
            return Err(Rejection(
                StatusCode::BAD_REQUEST,
                "missing X-GitHub-Delivery",
            ));
        };
        if id.len() > 200 || event.len() > 100 {
            return Err(Rejection(StatusCode::BAD_REQUEST, "header value too long"));
        }
        // The whole body at once, with SIMD: a quarter of the standard
        // library's time on a 25 KB body, and the JSON parser then checks
        // no string again.
        let text = simdutf8::basic::from_utf8(&bytes)
            .map_err(|_| Rejection(StatusCode::BAD_REQUEST, "body is not valid UTF-8"))?;
        // Checked and parsed into the typed event in one pass; the event
        // goes to this process's worker instead of the body, so the worker
        // does not read 25 KB of JSON a second time.
        let parsed = events::parse_received(event, text)
            .map_err(|_| Rejection(StatusCode::BAD_REQUEST, "body is not valid JSON"))?;
        Ok(VerifiedDelivery {
            id: DeliveryId::new(id),
            event: event.to_owned(),
            payload: Payload::compress(&bytes),
            parsed,
        })
    }
}

/// Stores and acknowledges: 202 when new, 200 when seen before.
pub async fn receive(
    State(state): State<AppState>,
    delivery: Result<VerifiedDelivery, Rejection>,
) -> Response {
    let delivery = match delivery {
        Ok(d) => d,
        Err(rejection) => {
            state.metrics.count_delivery("unknown", "rejected");
            tracing::info!(
                status = rejection.0.as_u16(),
                reason = rejection.1,
                "webhook rejected"
            );
            return rejection.into_response();
        }
    };
    let span = tracing::info_span!("intake", delivery = %delivery.id, event = %delivery.event);
    async move {
        let event = delivery.event.clone();
        let stored = state
            .writer
            .write(
                NewDelivery {
                    id: delivery.id,
                    event: delivery.event,
                    payload: delivery.payload,
                    received_at: Utc::now(),
                    claim: None,
                },
                delivery.parsed,
            )
            .await;
        match stored {
            Ok(true) => {
                state.metrics.count_delivery(&event, "accepted");
                tracing::debug!("delivery stored");
                (StatusCode::ACCEPTED, "accepted").into_response()
            }
            Ok(false) => {
                state.metrics.count_delivery(&event, "duplicate");
                tracing::info!("delivery seen before; not processed again");
                (StatusCode::OK, "already received").into_response()
            }
            Err(e) => {
                // Not bad input: the database failed. GitHub shows the 503
                // and the operator can redeliver; nothing was acknowledged.
                tracing::error!(error = %e, "delivery could not be stored");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cannot store the delivery now; redeliver it later",
                )
                    .into_response()
            }
        }
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn length(n: usize) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("content-length", n.to_string().parse().unwrap());
        headers
    }

    #[tokio::test]
    async fn the_body_is_read_whole_and_the_limit_holds_whatever_the_length_header_says() {
        let body = Bytes::from_static(b"{\"zen\":\"hi\"}");
        let read = read_body(Body::from(body.clone()), &length(body.len())).await;
        assert_eq!(read.ok(), Some(body.clone()));
        // No length, or a wrong one: the bytes that arrive count.
        let read = read_body(Body::from(body.clone()), &HeaderMap::new()).await;
        assert_eq!(read.ok(), Some(body.clone()));
        // One chunk is read as it came, not copied.
        let read = read_body(chunked_as(vec![body.clone()]), &HeaderMap::new()).await;
        assert_eq!(read.ok().map(|b| b.as_ptr()), Some(body.as_ptr()));
        let big = vec![b' '; MAX_BODY + 1];
        for headers in [HeaderMap::new(), length(10)] {
            let Err(Rejection(status, _)) = read_body(Body::from(big.clone()), &headers).await
            else {
                panic!("over the limit was read");
            };
            assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        }
        // A length over the limit is refused before anything is read.
        let Err(Rejection(status, _)) = read_body(Body::empty(), &length(MAX_BODY + 1)).await
        else {
            panic!("an announced 25 MiB + 1 was read");
        };
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    /// A body that arrives as these chunks, one frame each.
    struct Chunks(std::collections::VecDeque<Bytes>);

    impl axum::body::HttpBody for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
        }
    }

    fn chunked(parts: &[&[u8]]) -> Body {
        chunked_as(parts.iter().map(|p| Bytes::copy_from_slice(p)).collect())
    }

    fn chunked_as(parts: Vec<Bytes>) -> Body {
        Body::new(Chunks(parts.into()))
    }

    #[tokio::test]
    async fn a_body_in_several_chunks_is_joined_in_order() {
        let read = read_body(chunked(&[b"{\"zen\"", b"", b":\"hi\"", b"}"]), &length(12)).await;
        assert_eq!(read.ok().as_deref(), Some(&b"{\"zen\":\"hi\"}"[..]));
        // An empty first chunk, and large chunks, whatever the length
        // header says.
        let big = vec![b'x'; 64 * 1024 + 10];
        for headers in [HeaderMap::new(), length(3), length(2 * big.len())] {
            let read = read_body(chunked(&[b"", &big, &big]), &headers).await;
            let read = read.ok().expect("read");
            assert_eq!(read.len(), 2 * big.len());
            assert!(read.iter().all(|&b| b == b'x'));
        }
        // Over the limit across chunks: refused.
        let half = vec![b' '; MAX_BODY / 2 + 1];
        let Err(Rejection(status, _)) = read_body(chunked(&[&half, &half]), &length(10)).await
        else {
            panic!("over the limit was read");
        };
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    }
}
