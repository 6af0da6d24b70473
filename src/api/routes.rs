//! The endpoints: axum handlers from HTTP to [`Handle`] calls and back. Each shard request is
//! bounded by `shard_timeout`; every error is an [`ApiError`].

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::request::Parts;
use http::{HeaderMap, Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::body::{self, BatchError, Limits, Prefix, PublishBody, SeedParams, UidBody};
use super::coalesce::Coalescer;
use super::demo;
use super::error::ApiError;
use super::stats::{ApiStats, Counters};
use crate::addressing::{Applied, Publish, PublishReport, RequestError, Session, Stats};
use crate::cluster::ops::RemoteOp;
use crate::history::{Claim, ReadFrom};
use crate::ids::ConnId;
use crate::{Handle, Pending};

/// What every handler shares.
pub(crate) struct Shared {
    pub(crate) handle: Handle,
    /// Where idempotency keys live (the node's store, or Redis shared by every node).
    pub(crate) keys: super::keys::Keys,
    /// The demo page, when it is on (`ApiConfig::demo_page`).
    pub(crate) demo: Option<demo::Page>,
    pub(crate) limits: Limits,
    pub(crate) shard_timeout: Duration,
    pub(crate) body_bytes_max: usize,
    pub(crate) counters: Counters,
    /// Single publishes of one tick go to the node as one batch.
    pub(crate) coalescer: Arc<Coalescer>,
    /// The cluster backplane, if clustered: queries answer cluster-wide.
    pub(crate) cluster: Option<crate::cluster::Cluster>,
    /// What `/metrics` encodes (set once, right after `Shared` is built: it refers back to
    /// the API's counters).
    pub(crate) registry: std::sync::OnceLock<prometheus_client::registry::Registry>,
    /// Extra collectors and readiness checks (`/readyz`).
    pub(crate) observability: crate::observe::Observability,
}

type St = State<Arc<Shared>>;
type Answer = Result<Response, ApiError>;

impl Shared {
    /// Wait for the shards' answer, at most `shard_timeout`.
    async fn ask<T>(&self, pending: Pending<T>) -> Result<T, ApiError> {
        match tokio::time::timeout(self.shard_timeout, pending).await {
            Ok(r) => r.map_err(ApiError::from),
            Err(_) => Err(RequestError::Timeout.into()),
        }
    }

    /// A cluster-wide query: bounded by the cluster's `query_timeout` (nodes that did not
    /// answer are listed as missing) and, as a backstop, by `shard_timeout`.
    async fn ask_cluster<T, E>(
        &self,
        f: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, ApiError>
    where
        ApiError: From<E>,
    {
        match tokio::time::timeout(self.shard_timeout, f).await {
            Ok(r) => r.map_err(ApiError::from),
            Err(_) => Err(RequestError::Timeout.into()),
        }
    }

    /// Publish one message through the coalescer. The batch it joins is bounded by
    /// `shard_timeout` (one timer per batch: a tokio timer per request would cost a wake-up
    /// of the runtime's driver each).
    async fn publish_one(&self, p: Publish) -> Result<PublishReport, ApiError> {
        match self.coalescer.submit(p).await {
            Ok(r) => r.map_err(ApiError::from),
            Err(_) => Err(RequestError::Stopped.into()),
        }
    }
}

/// The router, without the auth/counting wrapper (see `service.rs`).
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let limit = shared.body_bytes_max;
    let mut router = Router::new();
    if shared.demo.is_some() {
        router = router
            .route(demo::APP_JS_PATH, get(demo_app_js))
            .route(demo::STYLE_CSS_PATH, get(demo_style_css))
            .route(demo::CONFIG_PATH, get(demo_config));
    }
    router
        .route("/", get(root).post(seed))
        .route("/healthz", get(healthz))
        .route("/api/publish", axum::routing::post(publish))
        .route("/api/publish/batch", axum::routing::post(publish_batch))
        .route("/api/groups", get(groups))
        .route("/api/groups/{group}", get(group).delete(dissolve))
        .route("/api/groups/{group}/history", get(history))
        .route("/api/groups/{group}/clients/{client_id}", put(join).delete(leave))
        .route("/api/clients/{client_id}", get(client).delete(close))
        .route("/api/clients/{client_id}/uid", put(bind_uid).delete(unbind_uid))
        .route("/api/clients/{client_id}/session", put(set_session).patch(merge_session))
        .route("/api/uids/{uid}", get(uid))
        .route("/api/stats", get(stats))
        .route("/api/metrics", get(metrics))
        .merge(super::observe::routes())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(shared)
}

/// A JSON answer with `status`.
pub(crate) fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut r = Response::new(Body::from(body));
            *r.status_mut() = status;
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        Err(e) => ApiError::new_internal(format!("encoding the answer: {e}")).into_response(),
    }
}

impl ApiError {
    fn new_internal(message: String) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: super::error::ErrorKind::Other,
            message: message.into(),
        }
    }
}

fn ok<T: Serialize>(value: &T) -> Answer {
    Ok(json(StatusCode::OK, value))
}

/// Path parameters, with a JSON 400 when they do not decode.
struct Params<T>(T);

impl<T, S> FromRequestParts<S> for Params<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(Params(v)),
            Err(e) => Err(ApiError::bad_request(format!("path: {}", e.body_text()))),
        }
    }
}

fn has_content_type(headers: &HeaderMap, expected: &str) -> bool {
    let Some(v) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let essence = v.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case(expected)
}

/// The whole body, within `DefaultBodyLimit` (413 beyond).
async fn read_body(req: Request, bytes_max: usize) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, &()).await.map_err(|e| match e {
        BytesRejection::FailedToBufferBody(f) if f.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::payload_too_large(bytes_max)
        }
        e => ApiError::bad_request(format!("reading the body: {}", e.body_text())),
    })
}

/// A JSON body: `Content-Type: application/json` (415 otherwise), within the limit.
async fn json_body(req: Request, bytes_max: usize) -> Result<Bytes, ApiError> {
    if !has_content_type(req.headers(), "application/json") {
        return Err(ApiError::unsupported_media_type("application/json"));
    }
    read_body(req, bytes_max).await
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_json(&e))
}

/// 503 when nothing was delivered because a shard's inbox was full (then a retry cannot
/// deliver twice); otherwise the reports, `shards_missed` included.
fn publish_answer(reports: &[PublishReport], batch: bool) -> Answer {
    let missed = reports.iter().any(|r| r.shards_missed > 0);
    let queued: u64 = reports.iter().map(|r| r.queued).sum();
    if missed && queued == 0 {
        return Err(ApiError::unavailable(
            "a shard's inbox is full; nothing was delivered; retry later",
        ));
    }
    Ok(reports_json(reports, batch))
}

/// `{"queued":N,"shards_missed":K,"slow_consumers":S}` (plus `"positions":{..}` for groups
/// with history), or `{"results":[..]}` of those for a batch. Written by hand: a batch answer
/// holds up to 10,000 of them.
fn reports_json(reports: &[PublishReport], batch: bool) -> Response {
    json_bytes(reports_body(reports, batch))
}

fn one_report(out: &mut Vec<u8>, r: &PublishReport, n: &mut itoa::Buffer) {
    out.extend_from_slice(br#"{"queued":"#);
    out.extend_from_slice(n.format(r.queued).as_bytes());
    out.extend_from_slice(br#","shards_missed":"#);
    out.extend_from_slice(n.format(r.shards_missed).as_bytes());
    out.extend_from_slice(br#","slow_consumers":"#);
    out.extend_from_slice(n.format(r.slow_consumers).as_bytes());
    if !r.positions.is_empty() {
        out.extend_from_slice(br#","positions":{"#);
        for (i, (g, p)) in r.positions.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            // Serialising a `str` cannot fail.
            out.extend_from_slice(serde_json::to_string(g.as_str()).unwrap_or_default().as_bytes());
            out.extend_from_slice(br#":{"epoch":""#);
            out.extend_from_slice(p.epoch.to_string().as_bytes());
            out.extend_from_slice(br#"","offset":"#);
            out.extend_from_slice(n.format(p.offset).as_bytes());
            out.push(b'}');
        }
        out.push(b'}');
    }
    out.push(b'}');
}

fn reports_body(reports: &[PublishReport], batch: bool) -> Vec<u8> {
    let mut n = itoa::Buffer::new();
    let mut out = Vec::with_capacity(16 + 64 * reports.len());
    if batch {
        out.extend_from_slice(br#"{"results":["#);
        for (i, r) in reports.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            one_report(&mut out, r, &mut n);
        }
        out.extend_from_slice(b"]}");
    } else if let Some(r) = reports.first() {
        one_report(&mut out, r, &mut n);
    }
    out
}

fn json_bytes(body: impl Into<Body>) -> Response {
    let mut r = Response::new(body.into());
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A remembered answer, flagged: `{..,"duplicate":true}`.
fn duplicate_of(answer: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(answer.len() + 20);
    out.extend_from_slice(answer.strip_suffix(b"}").unwrap_or(answer));
    out.extend_from_slice(br#","duplicate":true}"#);
    out
}

// ---- idempotency ----------------------------------------------------------------------------

/// The `Idempotency-Key` header, validated.
fn header_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => {
            let v = v
                .to_str()
                .map_err(|_| ApiError::bad_request("Idempotency-Key: must be visible ASCII"))?;
            body::idempotency_key(v, &"Idempotency-Key").map(Some).map_err(ApiError::bad_request)
        }
    }
}

/// A claimed idempotency key: released when dropped (the publish failed, or the request was
/// abandoned) unless completed with the answer.
struct KeyGuard {
    keys: super::keys::Keys,
    key: Option<String>,
}

impl KeyGuard {
    /// Claim `key`. A duplicate is answered (`Err`) with the remembered answer, flagged; a key
    /// in flight with 409.
    async fn claim(keys: &super::keys::Keys, key: String) -> Result<KeyGuard, Box<Answer>> {
        match keys.claim(&key).await {
            Ok(Claim::New) => Ok(KeyGuard { keys: keys.clone(), key: Some(key) }),
            Ok(Claim::Duplicate(answer)) => Err(Box::new(Ok(json_bytes(duplicate_of(&answer))))),
            Ok(Claim::InProgress) => Err(Box::new(Err(ApiError::conflict(
                "a publish with this idempotency key is in progress; retry once it is answered",
            )))),
            Err(e) => Err(Box::new(Err(e))),
        }
    }

    /// Claim `key` if given.
    async fn claim_opt(
        keys: &super::keys::Keys,
        key: Option<String>,
    ) -> Result<Option<KeyGuard>, Box<Answer>> {
        match key {
            None => Ok(None),
            Some(k) => KeyGuard::claim(keys, k).await.map(Some),
        }
    }

    async fn complete(mut self, answer: &[u8]) {
        if let Some(key) = self.key.take() {
            self.keys.complete(&key, answer).await;
        }
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.keys.release(key);
        }
    }
}

// ---- the demo page --------------------------------------------------------------------------

/// `GET /`: the demo page when it is on and there is no query string; seed 003 otherwise
/// (where a bare `GET /`, say a browser's, gets a 400 that points at both).
async fn root(state: St, req: Request) -> Answer {
    if demo::is_page_request(&req) {
        if let Some(page) = &state.0.demo {
            return Ok(page.index());
        }
        if req.method() == Method::GET {
            return Err(ApiError::bad_request(
                "content: missing or empty (GET /?content=... publishes, as seed 003 does; \
                 the demo page is served here only with --demo)",
            ));
        }
    }
    seed(state, req).await
}

// The three below are routed only when the page is on.
async fn demo_app_js(State(s): St) -> Answer {
    s.demo.as_ref().map(demo::Page::app_js).ok_or_else(|| ApiError::not_found("no such endpoint"))
}

async fn demo_style_css(State(s): St) -> Answer {
    s.demo
        .as_ref()
        .map(demo::Page::style_css)
        .ok_or_else(|| ApiError::not_found("no such endpoint"))
}

async fn demo_config(State(s): St) -> Answer {
    s.demo.as_ref().map(demo::Page::config).ok_or_else(|| ApiError::not_found("no such endpoint"))
}

// ---- seed 003 -------------------------------------------------------------------------------

/// `GET|POST /?content=..[&to_client_id=..|&to_worker_id=..&to_connection_id=..|&to_group=..]`
async fn seed(State(s): St, req: Request) -> Answer {
    if req.method() == Method::HEAD {
        // axum routes HEAD to GET handlers; a probe must not publish.
        return Err(ApiError::method_not_allowed("HEAD / does not publish: use GET or POST"));
    }
    let mut params = SeedParams::default();
    params.extend(req.uri().query().unwrap_or("").as_bytes());
    if req.method() == Method::POST {
        let typed = req.headers().contains_key(CONTENT_TYPE);
        if typed && !has_content_type(req.headers(), "application/x-www-form-urlencoded") {
            return Err(ApiError::unsupported_media_type("application/x-www-form-urlencoded"));
        }
        let form = read_body(req, s.body_bytes_max).await?;
        if !form.is_empty() && !typed {
            return Err(ApiError::unsupported_media_type("application/x-www-form-urlencoded"));
        }
        params.extend(&form);
    }
    let p = params.into_publish(s.handle.node_id(), s.limits).map_err(ApiError::bad_request)?;
    let r = s.publish_one(p).await?;
    s.counters.published(1);
    publish_answer(std::slice::from_ref(&r), false)
}

async fn healthz() -> Answer {
    #[derive(Serialize)]
    struct Healthy {
        ok: bool,
    }
    ok(&Healthy { ok: true })
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

// ---- publish --------------------------------------------------------------------------------

/// `POST /api/publish`; with an idempotency key (header or `idempotency_key`), a repeat
/// within the window gets the first answer flagged `"duplicate":true` and delivers nothing.
async fn publish(State(s): St, req: Request) -> Answer {
    let header = header_key(req.headers())?;
    let body = json_body(req, s.body_bytes_max).await?;
    let mut parsed: PublishBody<'_> = parse(&body)?;
    let key = match (header, parsed.take_key().map_err(ApiError::bad_request)?) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::bad_request(
                "idempotency_key: differs from the Idempotency-Key header",
            ))
        }
        (a, b) => a.or(b),
    };
    let ack = parsed.ack().map_err(ApiError::bad_request)?;
    let p = parsed.into_publish(Prefix(None), &body, s.limits).map_err(ApiError::bad_request)?;
    let guard = match KeyGuard::claim_opt(&s.keys, key).await {
        Ok(g) => g,
        Err(answer) => return *answer,
    };
    let answer: Vec<u8> = match (&s.cluster, ack) {
        (None, body::Ack::Local) => {
            let report = s.publish_one(p).await?;
            s.counters.published(1);
            publish_answer(std::slice::from_ref(&report), false)?;
            reports_body(std::slice::from_ref(&report), false)
        }
        (Some(c), body::Ack::Local) => {
            // The routing decision, from local state: no other node is waited for.
            let forwarded_to = c.forwarded_to(&p.to);
            let report = s.publish_one(p).await?;
            s.counters.published(1);
            publish_answer(std::slice::from_ref(&report), false)?;
            ClusterPublishAnswer::local(report, &forwarded_to).to_json()
        }
        (None, body::Ack::Nodes) => {
            let report = s.publish_one(p).await?;
            s.counters.published(1);
            publish_answer(std::slice::from_ref(&report), false)?;
            let acked = crate::cluster::AckedPublish { local: report, ..Default::default() };
            ClusterPublishAnswer::acked(&acked).to_json()
        }
        (Some(c), body::Ack::Nodes) => {
            let acked = s.ask_cluster(c.publish_acked(p)).await?;
            s.counters.published(1);
            publish_answer(std::slice::from_ref(&acked.local), false)?;
            ClusterPublishAnswer::acked(&acked).to_json()
        }
    };
    if let Some(guard) = guard {
        guard.complete(&answer).await;
    }
    Ok(json_bytes(answer))
}

/// A clustered node's answer to a single publish: the local report, where it was forwarded
/// and, with `"ack": "nodes"`, every receiving node's count.
#[derive(Serialize)]
struct ClusterPublishAnswer {
    queued: u64,
    shards_missed: u32,
    slow_consumers: u64,
    forwarded_to: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nodes: Option<Vec<crate::cluster::NodeReport>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nodes_missing: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    queued_total: Option<u64>,
    /// The publish's positions in this node's group histories (as in a single node's answer).
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    positions: serde_json::Value,
}

impl ClusterPublishAnswer {
    fn local(r: PublishReport, forwarded_to: &[crate::ids::NodeId]) -> Self {
        let positions = serde_json::to_value(&r)
            .ok()
            .and_then(|v| v.get("positions").cloned())
            .unwrap_or(serde_json::Value::Null);
        ClusterPublishAnswer {
            positions,
            queued: r.queued,
            shards_missed: r.shards_missed,
            slow_consumers: r.slow_consumers,
            forwarded_to: forwarded_to.iter().map(|n| n.to_string()).collect(),
            nodes: None,
            nodes_missing: None,
            queued_total: None,
        }
    }

    fn acked(a: &crate::cluster::AckedPublish) -> Self {
        let mut out = Self::local(a.local.clone(), &a.forwarded_to);
        out.queued_total = Some(a.local.queued + a.nodes.iter().map(|n| n.queued).sum::<u64>());
        out.nodes = Some(a.nodes.clone());
        out.nodes_missing = Some(a.nodes_missing.iter().map(|n| n.to_string()).collect());
        out
    }

    fn to_json(&self) -> Vec<u8> {
        // Plain data: serialising cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A clustered batch's answer: `{"results":[..]}`, each with `forwarded_to`.
fn cluster_results(
    reports: Vec<PublishReport>,
    forwarded: Vec<Vec<crate::ids::NodeId>>,
) -> Vec<u8> {
    #[derive(Serialize)]
    struct Results {
        results: Vec<ClusterPublishAnswer>,
    }
    let results = reports
        .into_iter()
        .zip(forwarded)
        .map(|(r, f)| ClusterPublishAnswer::local(r, &f))
        .collect();
    // Plain data: serialising cannot fail.
    serde_json::to_vec(&Results { results }).unwrap_or_default()
}

/// `POST /api/publish/batch`. The `Idempotency-Key` header covers the whole request; an
/// item's `idempotency_key` covers that item (a repeated item gets its first answer, flagged
/// `"duplicate":true`, and is not delivered again).
async fn publish_batch(State(s): St, req: Request) -> Answer {
    let header = header_key(req.headers())?;
    let body = json_body(req, s.body_bytes_max).await?;
    let (batch, keys) = body::parse_batch(&body, s.limits).map_err(|e| match e {
        BatchError::Json(e) => ApiError::bad_json(&e),
        BatchError::Invalid(msg) => ApiError::bad_request(msg),
    })?;
    let whole = match KeyGuard::claim_opt(&s.keys, header).await {
        Ok(g) => g,
        Err(answer) => return *answer,
    };
    if batch.is_empty() {
        return Ok(reports_json(&[], true));
    }
    // Clustered: each result also names the nodes its publish was forwarded to.
    let forwarded_to = |p: &Publish| s.cluster.as_ref().map(|c| c.forwarded_to(&p.to));
    if keys.iter().all(Option::is_none) {
        let n = batch.len();
        let forwarded: Option<Vec<_>> = batch.iter().map(forwarded_to).collect();
        let reports = s.ask(s.handle.publish_batch(batch)).await?;
        s.counters.published(n);
        publish_answer(&reports, true)?;
        let body = match forwarded {
            None => reports_body(&reports, true),
            Some(f) => cluster_results(reports, f),
        };
        if let Some(guard) = whole {
            guard.complete(&body).await;
        }
        return Ok(json_bytes(body));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, k) in keys.iter().enumerate() {
        if let Some(k) = k {
            if !seen.insert(k.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "publishes[{i}].idempotency_key: given twice in one batch"
                )));
            }
        }
    }
    // Items already answered within the window are not sent again.
    let n = batch.len();
    let mut remembered: Vec<Option<Vec<u8>>> = vec![None; n];
    let mut guards: Vec<(usize, KeyGuard)> = Vec::new();
    let mut send = Vec::with_capacity(n);
    let mut sent_at = Vec::with_capacity(n);
    let mut forwarded = vec![None; n];
    for (i, (p, k)) in
        batch.into_iter().zip(keys.into_iter().chain(std::iter::repeat(None))).enumerate()
    {
        if let Some(k) = k {
            match s.keys.claim(&k).await? {
                Claim::New => guards.push((i, KeyGuard { keys: s.keys.clone(), key: Some(k) })),
                Claim::Duplicate(answer) => {
                    remembered[i] = Some(duplicate_of(&answer));
                    continue;
                }
                Claim::InProgress => {
                    return Err(ApiError::conflict(format!(
                        "publishes[{i}]: a publish with this idempotency key is in progress; \
                         retry once it is answered"
                    )))
                }
            }
        }
        sent_at.push(i);
        forwarded[i] = forwarded_to(&p);
        send.push(p);
    }
    let reports = if send.is_empty() {
        Vec::new()
    } else {
        let k = send.len();
        let reports = s.ask(s.handle.publish_batch(send)).await?;
        s.counters.published(k);
        publish_answer(&reports, true)?;
        reports
    };
    let mut fresh: Vec<Option<&PublishReport>> = vec![None; n];
    for (&i, r) in sent_at.iter().zip(&reports) {
        fresh[i] = Some(r);
    }
    let mut num = itoa::Buffer::new();
    let mut out = Vec::with_capacity(16 + 64 * n);
    out.extend_from_slice(br#"{"results":["#);
    let mut guards = guards.into_iter().peekable();
    for i in 0..n {
        if i > 0 {
            out.push(b',');
        }
        if let Some(answer) = &remembered[i] {
            out.extend_from_slice(answer);
        } else if let Some(r) = fresh[i] {
            let start = out.len();
            match &forwarded[i] {
                None => one_report(&mut out, r, &mut num),
                Some(f) => {
                    out.extend_from_slice(&ClusterPublishAnswer::local(r.clone(), f).to_json())
                }
            }
            if guards.peek().is_some_and(|(j, _)| *j == i) {
                if let Some((_, guard)) = guards.next() {
                    guard.complete(&out[start..]).await;
                }
            }
        }
    }
    out.extend_from_slice(b"]}");
    if let Some(guard) = whole {
        guard.complete(&out).await;
    }
    Ok(json_bytes(out))
}

// ---- groups ---------------------------------------------------------------------------------

#[derive(Serialize)]
struct Changed {
    ok: bool,
    changed: bool,
}

/// An operation's outcome: `{"ok":true,"changed":..}`, 404 for an unknown client, 409 with the
/// reason for a refusal.
fn applied(a: Applied) -> Answer {
    match a {
        Applied::Done => ok(&Changed { ok: true, changed: true }),
        Applied::Unchanged => ok(&Changed { ok: true, changed: false }),
        Applied::NoSuchClient => Err(ApiError::not_found("client not found")),
        Applied::Refused(reason) => Err(ApiError::conflict(reason)),
    }
}

fn conn(s: &str) -> Result<ConnId, ApiError> {
    body::client_id(s, &"client_id").map_err(ApiError::bad_request)
}

/// Whether another node of the cluster holds `id` (its id names the node).
fn elsewhere(s: &Shared, id: ConnId) -> bool {
    s.cluster.as_ref().is_some_and(|c| id.node() != c.node_id())
}

/// An operation on a connection another node holds: forwarded there and answered within the
/// cluster's query timeout (504 past it, 404 for a node not in the cluster).
async fn forward(s: &Shared, id: ConnId, op: RemoteOp) -> Answer {
    let Some(c) = &s.cluster else {
        return Err(ApiError::not_found("client not found"));
    };
    applied(s.ask_cluster(c.op(id, &op)).await?)
}

/// `PUT /api/groups/{group}/clients/{client_id}`
async fn join(State(s): St, Params((g, c)): Params<(String, String)>) -> Answer {
    let group = body::group_id(&g, &"group", s.limits).map_err(ApiError::bad_request)?;
    let id = conn(&c)?;
    if elsewhere(&s, id) {
        return forward(&s, id, RemoteOp::JoinGroup { group: group.to_string() }).await;
    }
    applied(s.ask(s.handle.join_group(id, group)).await?)
}

/// `DELETE /api/groups/{group}/clients/{client_id}`
async fn leave(State(s): St, Params((g, c)): Params<(String, String)>) -> Answer {
    let group = body::group_id(&g, &"group", s.limits).map_err(ApiError::bad_request)?;
    let id = conn(&c)?;
    if elsewhere(&s, id) {
        return forward(&s, id, RemoteOp::LeaveGroup { group: group.to_string() }).await;
    }
    applied(s.ask(s.handle.leave_group(id, group)).await?)
}

/// `GET /api/groups/{group}`
async fn group(State(s): St, Params(g): Params<String>) -> Answer {
    let group = body::group_id(&g, &"group", s.limits).map_err(ApiError::bad_request)?;
    if let Some(c) = &s.cluster {
        return ok(&s.ask_cluster(c.group(group)).await?);
    }
    ok(&s.ask(s.handle.group(group)).await?)
}

/// `DELETE /api/groups/{group}`
async fn dissolve(State(s): St, Params(g): Params<String>) -> Answer {
    #[derive(Serialize)]
    struct Removed {
        removed: u64,
    }
    let group = body::group_id(&g, &"group", s.limits).map_err(ApiError::bad_request)?;
    ok(&Removed { removed: s.ask(s.handle.dissolve(group)).await? })
}

/// Most bytes of messages one history answer carries (`more: true` past it).
const HISTORY_ANSWER_BYTES_MAX: usize = 8 << 20;

/// `GET /api/groups/{group}/history?since_epoch=&since_offset=&limit=`: the newest `limit`
/// messages (default 100, at most 1000), or those after a position; 404 for a group that
/// keeps no history.
async fn history(State(s): St, Params(g): Params<String>, req: Request) -> Answer {
    use base64::Engine as _;
    #[derive(Serialize)]
    struct Msg<'a> {
        offset: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        binary_base64: Option<String>,
    }
    #[derive(Serialize)]
    struct HistoryAnswer<'a> {
        group_id: &'a str,
        epoch: String,
        offset: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'static str>,
        messages: Vec<Msg<'a>>,
        more: bool,
    }
    let group = body::group_id(&g, &"group", s.limits).map_err(ApiError::bad_request)?;
    let (since, limit) = body::history_params(req.uri().query()).map_err(ApiError::bad_request)?;
    let from = since.map_or(ReadFrom::Last(limit), ReadFrom::Since);
    let read = match &s.cluster {
        // A clustered node keeps history in Redis: read there (any node answers the same).
        Some(c) => match c.history(&group, from, limit).await {
            Ok(Some(read)) => read,
            Ok(None) => s.handle.history(&group, from, limit),
            Err(e) => return Err(ApiError::unavailable(format!("history store unavailable: {e}"))),
        },
        None => s.handle.history(&group, from, limit),
    };
    let Some(position) = read.position else {
        return Err(ApiError::not_found(format!(
            "group {:?} keeps no history (no history rule matches it)",
            group.as_str()
        )));
    };
    let (stored, mut more, reason) = match &read.outcome {
        Ok((m, more)) => (&m[..], *more, None),
        Err(why) => (&[][..], false, Some(why.as_str())),
    };
    let mut messages = Vec::with_capacity(stored.len());
    let mut bytes = 0;
    for m in stored {
        bytes += m.message.as_bytes().len();
        if !messages.is_empty() && bytes > HISTORY_ANSWER_BYTES_MAX {
            more = true;
            break;
        }
        messages.push(match &m.message {
            crate::proto::Message::Text(t) => {
                Msg { offset: m.offset, data: Some(t.as_str()), binary_base64: None }
            }
            crate::proto::Message::Binary(b) => Msg {
                offset: m.offset,
                data: None,
                binary_base64: Some(base64::engine::general_purpose::STANDARD.encode(b)),
            },
        });
    }
    ok(&HistoryAnswer {
        group_id: group.as_str(),
        epoch: position.epoch.to_string(),
        offset: position.offset,
        recovered: since.map(|_| read.outcome.is_ok()),
        reason,
        messages,
        more,
    })
}

/// `GET /api/groups`
async fn groups(State(s): St) -> Answer {
    #[derive(Serialize)]
    struct Groups<'a> {
        groups: Vec<&'a str>,
    }
    let all = s.handle.groups();
    ok(&Groups { groups: all.iter().map(|g| g.as_str()).collect() })
}

// ---- clients --------------------------------------------------------------------------------

/// `GET /api/clients/{client_id}`: 200 with `"online": false` for a client this node does not
/// hold (GatewayWorker's `isOnline`).
async fn client(State(s): St, Params(c): Params<String>) -> Answer {
    let id = conn(&c)?;
    if let Some(c) = &s.cluster {
        return ok(&s.ask_cluster(c.client(id)).await?);
    }
    ok(&s.ask(s.handle.client(id)).await?)
}

/// `DELETE /api/clients/{client_id}?code=&reason=`
async fn close(State(s): St, Params(c): Params<String>, req: Request) -> Answer {
    let id = conn(&c)?;
    let (code, reason) = body::close_params(req.uri().query()).map_err(ApiError::bad_request)?;
    if elsewhere(&s, id) {
        return forward(&s, id, RemoteOp::Close { code, reason: reason.to_string() }).await;
    }
    applied(s.ask(s.handle.close(id, code, &reason)).await?)
}

/// `PUT /api/clients/{client_id}/uid` `{"uid":".."}`
async fn bind_uid(State(s): St, Params(c): Params<String>, req: Request) -> Answer {
    let id = conn(&c)?;
    let body = json_body(req, s.body_bytes_max).await?;
    let b: UidBody<'_> = parse(&body)?;
    let uid = body::uid(&b.uid, &"uid", s.limits).map_err(ApiError::bad_request)?;
    if elsewhere(&s, id) {
        return forward(&s, id, RemoteOp::BindUid { uid: uid.to_string() }).await;
    }
    applied(s.ask(s.handle.bind_uid(id, uid)).await?)
}

/// `DELETE /api/clients/{client_id}/uid`
async fn unbind_uid(State(s): St, Params(c): Params<String>) -> Answer {
    let id = conn(&c)?;
    if elsewhere(&s, id) {
        return forward(&s, id, RemoteOp::UnbindUid).await;
    }
    applied(s.ask(s.handle.unbind_uid(id)).await?)
}

async fn session(s: &Shared, c: &str, req: Request, merge: bool) -> Answer {
    let id = conn(c)?;
    let body = json_body(req, s.body_bytes_max).await?;
    let session: Session = serde_json::from_slice(&body).map_err(|e| {
        if e.classify() == serde_json::error::Category::Data {
            ApiError::bad_request(format!("session: must be a JSON object ({e})"))
        } else {
            ApiError::bad_json(&e)
        }
    })?;
    if elsewhere(s, id) {
        return forward(s, id, RemoteOp::SetSession { session, merge }).await;
    }
    applied(s.ask(s.handle.set_session(id, session, merge)).await?)
}

/// `PUT /api/clients/{client_id}/session`: replace.
async fn set_session(State(s): St, Params(c): Params<String>, req: Request) -> Answer {
    session(&s, &c, req, false).await
}

/// `PATCH /api/clients/{client_id}/session`: merge; `null` deletes a key.
async fn merge_session(State(s): St, Params(c): Params<String>, req: Request) -> Answer {
    session(&s, &c, req, true).await
}

/// `GET /api/uids/{uid}`
async fn uid(State(s): St, Params(u): Params<String>) -> Answer {
    let uid = body::uid(&u, &"uid", s.limits).map_err(ApiError::bad_request)?;
    if let Some(c) = &s.cluster {
        return ok(&s.ask_cluster(c.uid(uid)).await?);
    }
    ok(&s.ask(s.handle.uid(uid)).await?)
}

// ---- node -----------------------------------------------------------------------------------

/// `GET /api/stats`
async fn stats(State(s): St) -> Answer {
    #[derive(Serialize)]
    struct WithApi {
        #[serde(flatten)]
        node: Stats,
        api: ApiStats,
        #[serde(skip_serializing_if = "Option::is_none")]
        cluster: Option<ClusterView>,
    }
    /// The backplane's state and counters, and every node's totals.
    #[derive(Serialize)]
    struct ClusterView {
        backplane: crate::cluster::BackplaneStatus,
        #[serde(flatten)]
        stats: crate::cluster::ClusterAnswer<crate::cluster::ClusterStats>,
    }
    let node = s.ask(s.handle.stats()).await?;
    let cluster = match &s.cluster {
        Some(c) => {
            Some(ClusterView { backplane: c.status(), stats: s.ask_cluster(c.stats()).await? })
        }
        None => None,
    };
    ok(&WithApi { node, api: s.counters.snapshot(), cluster })
}

/// `GET /api/metrics`: the node's counters, summed over its shards.
async fn metrics(State(s): St) -> Answer {
    let m = s.handle.metrics();
    let h = s.handle.history_counters();
    let map: serde_json::Map<String, serde_json::Value> =
        m.fields().into_iter().chain(h.fields()).map(|(k, v)| (k.to_owned(), v.into())).collect();
    ok(&map)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn text(r: Response) -> String {
        let b = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn reports_are_the_same_json_serde_would_write() {
        let g = crate::GroupId::new("g\"1", 64).unwrap();
        let p = crate::history::Position { epoch: crate::history::Epoch(0xfe), offset: 9 };
        let a = PublishReport {
            queued: 12,
            shards_missed: 1,
            slow_consumers: u64::MAX,
            positions: vec![(g, p)],
        };
        let b = PublishReport::default();
        assert_eq!(
            text(reports_json(std::slice::from_ref(&a), false)).await,
            serde_json::to_string(&a).unwrap()
        );
        #[derive(Serialize)]
        struct Results<'a> {
            results: &'a [PublishReport],
        }
        let both = [a, b];
        assert_eq!(
            text(reports_json(&both, true)).await,
            serde_json::to_string(&Results { results: &both }).unwrap()
        );
        assert_eq!(text(reports_json(&[], true)).await, r#"{"results":[]}"#);
        assert_eq!(duplicate_of(br#"{"queued":1}"#), br#"{"queued":1,"duplicate":true}"#.to_vec());
    }

    #[test]
    fn nothing_delivered_and_a_shard_missed_is_503() {
        let missed = PublishReport { shards_missed: 1, ..Default::default() };
        let partly = PublishReport { queued: 3, shards_missed: 1, ..Default::default() };
        let e = publish_answer(std::slice::from_ref(&missed), false).unwrap_err();
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(publish_answer(std::slice::from_ref(&partly), false).is_ok());
        assert!(publish_answer(&[missed, partly], true).is_ok());
        assert!(publish_answer(&[PublishReport::default()], false).is_ok());
    }
}
