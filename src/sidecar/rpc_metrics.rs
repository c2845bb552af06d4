//! Per-RPC metrics of the gRPC server: a tower layer that counts every call
//! by service, method and status code (`switchyard_grpc_server_handled_total`)
//! and times it from arrival to its last response byte
//! (`switchyard_grpc_server_handling_seconds`; for a stream, its lifetime).
//! Paths that name no served method share the method label `unknown`, so a
//! client cannot grow the label set.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Frame, SizeHint};
use metrics::{Counter, Histogram};
use prost::Message as _;
use tonic::body::Body;
use tonic::codegen::http::{HeaderMap, Request, Response};
use tonic::Code;

use crate::telemetry;

/// The handles of one served method, resolved once.
struct Method {
    service: String,
    method: String,
    ok: Counter,
    handling: Histogram,
}

impl Method {
    fn new(service: &str, method: &str) -> Self {
        Self {
            service: service.to_owned(),
            method: method.to_owned(),
            ok: counter(service, method, Code::Ok),
            handling: metrics::histogram!(
                telemetry::GRPC_HANDLING,
                "grpc_service" => service.to_owned(),
                "grpc_method" => method.to_owned()
            ),
        }
    }

    fn finished(&self, code: Code, started: Instant) {
        self.handling.record(started.elapsed().as_secs_f64());
        if code == Code::Ok {
            self.ok.increment(1);
        } else {
            counter(&self.service, &self.method, code).increment(1);
        }
    }
}

fn counter(service: &str, method: &str, code: Code) -> Counter {
    metrics::counter!(
        telemetry::GRPC_HANDLED,
        "grpc_service" => service.to_owned(),
        "grpc_method" => method.to_owned(),
        "grpc_code" => format!("{code:?}")
    )
}

/// The served methods by path (`/package.Service/Method`).
struct Methods {
    known: HashMap<String, Method>,
    unknown: Method,
}

/// The layer; its series exist (at 0) for every method from the start.
#[derive(Clone)]
pub(crate) struct RpcMetricsLayer(Arc<Methods>);

impl RpcMetricsLayer {
    /// Every method of every service in these encoded descriptor sets.
    pub(crate) fn new(descriptor_sets: &[&[u8]]) -> Result<Self, prost::DecodeError> {
        let mut known = HashMap::new();
        for bytes in descriptor_sets {
            let set = prost_types::FileDescriptorSet::decode(*bytes)?;
            for file in &set.file {
                for service in &file.service {
                    let service_name = match file.package() {
                        "" => service.name().to_owned(),
                        package => format!("{package}.{}", service.name()),
                    };
                    for method in &service.method {
                        known.insert(
                            format!("/{service_name}/{}", method.name()),
                            Method::new(&service_name, method.name()),
                        );
                    }
                }
            }
        }
        Ok(Self(Arc::new(Methods {
            known,
            unknown: Method::new("unknown", "unknown"),
        })))
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            methods: self.0.clone(),
        }
    }
}

/// The service the layer wraps around the server's routes.
#[derive(Clone)]
pub(crate) struct RpcMetrics<S> {
    inner: S,
    methods: Arc<Methods>,
}

impl<S> tower::Service<Request<Body>> for RpcMetrics<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let started = Instant::now();
        let methods = self.methods.clone();
        let path = request.uri().path().to_owned();
        // The clone that was polled ready serves this call (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(request).await?;
            let mut call = Call {
                methods,
                path,
                started,
                done: false,
            };
            // A call that fails before any message is answered with the
            // status in the headers ("trailers-only").
            if let Some(code) = status(response.headers()) {
                call.finish(code);
            }
            Ok(response.map(|body| Body::new(Measured { body, call })))
        })
    }
}

/// One call, recorded once: at its status, at the end of its body, or
/// when its body is dropped unfinished (the client went away: `Cancelled`).
struct Call {
    methods: Arc<Methods>,
    path: String,
    started: Instant,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let methods = &self.methods;
        let method = methods.known.get(&self.path).unwrap_or(&methods.unknown);
        method.finished(code, self.started);
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

/// The `grpc-status` of a header or trailer map, if it has one.
fn status(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    value.parse::<i32>().ok().map(Code::from_i32)
}

/// A response body that records its call when it ends.
struct Measured {
    body: Body,
    call: Call,
}

impl http_body::Body for Measured {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status) {
                    self.call.finish(code);
                }
            }
            Poll::Ready(Some(Err(status))) => self.call.finish(status.code()),
            // Ended without trailers: tonic always sends a status, so only
            // an empty, already-finished body gets here.
            Poll::Ready(None) => self.call.finish(Code::Ok),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
