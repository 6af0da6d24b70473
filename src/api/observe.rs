//! `GET /metrics` (Prometheus text format 0.0.4) and `GET /readyz`. Both read published atomics
//! only: a scrape or a probe never waits on a shard.
//!
//! `/metrics` needs the bearer token like every endpoint (when one is configured); `/healthz`
//! and `/readyz` never do, so load balancers and orchestrators can probe them.

use std::fmt;
use std::sync::{Arc, Weak};

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::StatusCode;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;

use super::error::ErrorKind;
use super::routes::{json, Shared};

/// The observability endpoints, merged into the API's router.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new().route("/metrics", get(metrics)).route("/readyz", get(readyz))
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    let mut text = String::with_capacity(16 * 1024);
    let encoded = match s.registry.get() {
        Some(r) => prometheus_client::encoding::prometheus_text::encode(&mut text, r),
        None => Err(fmt::Error),
    };
    let mut r = Response::new(Body::from(text));
    if encoded.is_err() {
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    }
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(prometheus_client::encoding::prometheus_text::CONTENT_TYPE),
    );
    r
}

async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    let readiness = s.observability.readiness(&s.handle);
    let status = if readiness.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let mut r = json(status, &readiness);
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The API's own counters, for the registry.
pub(crate) struct ApiCollector(pub(crate) Weak<Shared>);

impl fmt::Debug for ApiCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiCollector")
    }
}

impl Collector for ApiCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Some(shared) = self.0.upgrade() else { return Ok(()) };
        let s = shared.counters.snapshot();
        let c = ConstCounter::new(s.requests);
        c.encode(e.encode_descriptor(
            "ringcast_api_requests",
            "HTTP API requests answered (any status).",
            None,
            c.metric_type(),
        )?)?;
        {
            let mut m = e.encode_descriptor(
                "ringcast_api_errors",
                "HTTP API error answers, by kind.",
                None,
                MetricType::Counter,
            )?;
            for (kind, n) in [
                (ErrorKind::BadRequest, s.bad_request),
                (ErrorKind::Unauthorized, s.unauthorized),
                (ErrorKind::Forbidden, s.forbidden),
                (ErrorKind::NotFound, s.not_found),
                (ErrorKind::MethodNotAllowed, s.method_not_allowed),
                (ErrorKind::Conflict, s.conflict),
                (ErrorKind::PayloadTooLarge, s.payload_too_large),
                (ErrorKind::UnsupportedMediaType, s.unsupported_media_type),
                (ErrorKind::Unavailable, s.unavailable),
                (ErrorKind::GatewayTimeout, s.gateway_timeout),
                (ErrorKind::Other, s.other_errors),
            ] {
                ConstCounter::new(n).encode(m.encode_family(&[("kind", kind.name())])?)?;
            }
        }
        let c = ConstCounter::new(s.messages_published);
        c.encode(e.encode_descriptor(
            "ringcast_api_messages_published",
            "Messages published through the HTTP API.",
            None,
            c.metric_type(),
        )?)?;
        let c = ConstCounter::new(s.connections_accepted);
        c.encode(e.encode_descriptor(
            "ringcast_api_connections_accepted",
            "HTTP connections accepted by the API.",
            None,
            c.metric_type(),
        )?)
    }
}
