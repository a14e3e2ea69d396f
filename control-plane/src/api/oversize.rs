//! Over-size requests answer `ResourceExhausted` naming the limit, and request bodies that
//! are not valid protobuf answer `InvalidArgument`.
//!
//! tonic refuses a request message over the service's decoding limit itself, before any
//! handler, with `OutOfRange` ("decoded message length too large"). The API's rule is that
//! a limit violation is `InvalidArgument` or `ResourceExhausted` naming the limit, so this
//! layer rewrites that one answer (its status arrives in the response trailers, or in the
//! headers of a trailers-only response) and leaves everything else untouched.
//!
//! tonic-prost likewise answers a request body prost cannot decode with `Internal`
//! ("failed to decode Protobuf message: …"), before any handler; that is the client's
//! fault, so it becomes `InvalidArgument` with the decoder's words (which name the field).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderValue;

#[derive(Clone, Copy, Debug)]
pub struct OversizeLayer {
    pub limit: usize,
}

impl<S> tower_layer::Layer<S> for OversizeLayer {
    type Service = Oversize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Oversize { inner, limit: self.limit }
    }
}

#[derive(Clone, Debug)]
pub struct Oversize<S> {
    inner: S,
    limit: usize,
}

const OUT_OF_RANGE: &str = "11";
const RESOURCE_EXHAUSTED: &str = "8";
const INTERNAL: &str = "13";
const INVALID_ARGUMENT: &str = "3";
/// How tonic-prost's decoder error begins (prost's `DecodeError` display).
const DECODE_FAILURE: &str = "failed to decode Protobuf message";

/// Rewrites tonic's over-size refusal in place; anything else is left alone. (A passed
/// deadline cannot be rewritten here: tonic's timeout layer sits outside user layers and
/// answers `Cancelled` "Timeout expired".)
pub fn rewrite(headers: &mut http::HeaderMap, limit: usize) {
    // Percent-encoded on the wire (spaces as %20).
    let message = headers.get("grpc-message").and_then(|v| v.to_str().ok()).map(|m| m.replace("%20", " "));
    let status = headers.get("grpc-status");
    if status.is_some_and(|v| v == INTERNAL) && message.as_deref().is_some_and(|m| m.starts_with(DECODE_FAILURE)) {
        headers.insert("grpc-status", HeaderValue::from_static(INVALID_ARGUMENT));
        if let Some(m) = message
            && let Ok(v) = HeaderValue::from_str(&format!("invalid request message: {m}").replace(' ', "%20"))
        {
            headers.insert("grpc-message", v);
        }
        return;
    }
    let is_oversize = status.is_some_and(|v| v == OUT_OF_RANGE)
        && message.as_deref().is_some_and(|m| m.contains("message length too large"));
    if !is_oversize {
        return;
    }
    headers.insert("grpc-status", HeaderValue::from_static(RESOURCE_EXHAUSTED));
    // grpc-message is percent-encoded; this text needs no escaping but spaces.
    let msg = format!("request message: over the limit of {limit} bytes per message");
    if let Ok(v) = HeaderValue::from_str(&msg.replace(' ', "%20")) {
        headers.insert("grpc-message", v);
    }
}

/// A response body whose trailers pass through [`rewrite`].
pub struct RewriteBody<B> {
    inner: B,
    limit: usize,
}

impl<B: http_body::Body + Unpin> http_body::Body for RewriteBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let limit = self.limit;
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(match frame.into_trailers() {
                Ok(mut trailers) => {
                    rewrite(&mut trailers, limit);
                    http_body::Frame::trailers(trailers)
                }
                Err(frame) => frame,
            }))),
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for Oversize<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: http_body::Body + Unpin,
{
    type Response = http::Response<RewriteBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let fut = self.inner.call(req);
        let limit = self.limit;
        Box::pin(async move {
            let mut resp = fut.await?;
            rewrite(resp.headers_mut(), limit);
            Ok(resp.map(|inner| RewriteBody { inner, limit }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_oversize_refusal_is_rewritten() {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static("11"));
        h.insert(
            "grpc-message",
            HeaderValue::from_static("Error,%20decoded%20message%20length%20too%20large:%20found%2020"),
        );
        rewrite(&mut h, 16);
        assert_eq!(h["grpc-status"], "8");
        assert!(h["grpc-message"].to_str().expect("ascii").contains("limit%20of%2016%20bytes"));
        let mut other = http::HeaderMap::new();
        other.insert("grpc-status", HeaderValue::from_static("11"));
        other.insert("grpc-message", HeaderValue::from_static("something else"));
        rewrite(&mut other, 16);
        assert_eq!(other["grpc-status"], "11");
    }

    #[test]
    fn undecodable_requests_are_invalid_argument() {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static("13"));
        h.insert(
            "grpc-message",
            HeaderValue::from_static("failed%20to%20decode%20Protobuf%20message:%20invalid%20wire%20type"),
        );
        rewrite(&mut h, 16);
        assert_eq!(h["grpc-status"], "3");
        assert!(h["grpc-message"].to_str().expect("ascii").starts_with("invalid%20request%20message:%20failed"));
        let mut other = http::HeaderMap::new();
        other.insert("grpc-status", HeaderValue::from_static("13"));
        other.insert("grpc-message", HeaderValue::from_static("internal%20error:%20disk"));
        rewrite(&mut other, 16);
        assert_eq!(other["grpc-status"], "13");
    }
}
