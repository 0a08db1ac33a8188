//! `llm-cxr serve`: the three tasks and plain chat over HTTP (axum on hyper and tokio). Handlers
//! parse and validate; the model runs on one worker thread behind a bounded queue (`scheduler`),
//! whose running batch requests join between steps. A full queue answers 429 with Retry-After, a
//! passed deadline 503, a body over the limit 413, a failure of the model 500 with the request's
//! id (the worker survives it). Text streams as server-sent events; a client that goes away ends
//! its generation. `access` holds the API key, Host and Origin checks and the log line of each
//! request, which never carries anything read from an upload. Connections that do not send
//! their headers within `--header-timeout` (idle ones included) are closed.

mod access;
mod api;
mod body;
mod chat;
mod error;
mod openapi;
mod scheduler;
mod status;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

pub use api::parse_upload_form;
use cxr_vqgan::VqganConfig;
use scheduler::{Event, Finish, Job, Refused, Scheduler, Serving, Task};

use super::commands::chat::ModelArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub lm: ModelArgs,
    #[command(flatten)]
    pub vqgan: super::commands::vqgan::VqganArgs,
    /// Address to listen on (0.0.0.0 to accept other machines: then an API key is required,
    /// or --insecure).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port; 0 picks a free one (printed on start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Requests that may wait for the model; one more is answered 429 with Retry-After.
    #[arg(long, default_value_t = 32)]
    pub queue: usize,
    /// The most requests generated at once: rows of the running batch, which waiting requests
    /// join between its steps (continuous batching).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// The most new tokens one text request may ask for (and its default).
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Seconds a request may take, waiting included; then 503 (or an `error` event when
    /// streaming).
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Largest request body in MiB (an upload); larger ones get 413.
    #[arg(long, default_value_t = 32)]
    pub max_body_mib: usize,
    /// A key every route but /health requires, as `Authorization: Bearer KEY`.
    #[arg(long, env = "LLM_CXR_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Listen on a non-loopback address without an API key (anyone who reaches it may use it).
    #[arg(long)]
    pub insecure: bool,
    /// A further Host name (or name:port) that POST requests may be addressed to, e.g. the
    /// name of a proxy in front; repeatable. Loopback names and the bound address always are.
    #[arg(long = "allowed-host", value_name = "HOST")]
    pub allowed_hosts: Vec<String>,
    /// Longest prompt in tokens that a request may bring (image codes and template included);
    /// a longer one is 400 before it reaches the model. Default: the model's positions less one.
    #[arg(long)]
    pub max_prompt_tokens: Option<usize>,
    /// Uploads read and decoded at once; one more waits up to 2 s for a slot, then gets 429.
    #[arg(long, default_value_t = 4)]
    pub max_uploads: usize,
    /// Seconds a connection may take to send a request's headers, or stay idle between
    /// requests; then it is closed.
    #[arg(long, default_value_t = 10)]
    pub header_timeout: u64,
    /// Seconds a request's body may take to arrive whole; then 408.
    #[arg(long, default_value_t = 60)]
    pub body_timeout: u64,
    #[command(flatten)]
    pub device: super::commands::device::DeviceArg,
}

/// What every handler shares.
pub struct AppState {
    pub scheduler: Scheduler,
    pub vqgan: VqganConfig,
    /// The VQ-GAN's device, where an upload becomes its input.
    pub device: candle_core::Device,
    pub model_name: String,
    pub max_tokens: usize,
    pub timeout: Duration,
    /// The prompt limit, and the model's positions (to say why).
    pub max_prompt_tokens: usize,
    pub positions: usize,
    /// To count the tokens of a request's text before it is queued.
    pub tokenizer: cxr_lm::TextTokenizer,
    pub limits: body::BodyLimits,
    pub access: access::Access,
    pub started: Instant,
    /// Requests answered, by (route, status).
    pub requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Seconds spent answering, summed, and the count, by route.
    pub latency: Mutex<BTreeMap<String, (f64, u64)>>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let ip: std::net::IpAddr = a
        .host
        .parse()
        .with_context(|| format!("--host {:?} is not an IP address", a.host))?;
    let api_key = a
        .api_key
        .as_deref()
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(String::from);
    if !ip.is_loopback() && api_key.is_none() && !a.insecure {
        anyhow::bail!(
            "refusing to listen on {ip}, which other machines can reach, without an API key: \
             set --api-key (or LLM_CXR_API_KEY), or pass --insecure to serve anyone who reaches it"
        );
    }
    let engine = super::commands::tasks::load_engine(&a.lm, &a.vqgan, &a.device.open()?)?;
    let config = engine.vqgan.config().clone();
    let device = engine.vqgan.device().clone();
    let positions = engine.lm.model.config().max_position_embeddings();
    let max_prompt_tokens = a
        .max_prompt_tokens
        .unwrap_or(positions.saturating_sub(1))
        .max(1);
    let tokenizer = engine.lm.tokenizer.clone();
    let serving = Serving {
        engine,
        max_prompt_tokens,
    };
    let scheduler = Scheduler::start(serving, a.queue.max(1), a.batch)
        .context("starting the model worker thread")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let addr = SocketAddr::new(ip, a.port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        let bound = listener.local_addr()?;
        if api_key.is_none() && !ip.is_loopback() {
            tracing::warn!(
                "serving {bound} to anyone who reaches it, without an API key (--insecure)"
            );
        }
        let state = Arc::new(AppState {
            scheduler,
            vqgan: config,
            device,
            model_name: a
                .lm
                .model
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "llm-cxr".into()),
            max_tokens: a.max_tokens.max(1),
            timeout: Duration::from_secs(a.timeout.max(1)),
            max_prompt_tokens,
            positions,
            tokenizer,
            limits: body::BodyLimits {
                max_bytes: a.max_body_mib << 20,
                timeout: Duration::from_secs(a.body_timeout.max(1)),
                uploads: Arc::new(tokio::sync::Semaphore::new(a.max_uploads.max(1))),
            },
            access: access::Access::new(api_key, bound, &a.allowed_hosts),
            started: Instant::now(),
            requests: Default::default(),
            latency: Default::default(),
        });
        let app = router(state, a.max_body_mib << 20);
        // Tests and scripts read this line to find a port picked with --port 0.
        println!("llm-cxr serving on http://{bound}");
        use std::io::Write;
        std::io::stdout().flush()?;
        serve(listener, app, Duration::from_secs(a.header_timeout.max(1))).await;
        anyhow::Ok(())
    })
}

/// Accepts connections until Ctrl-C, then lets those open finish (for up to 30 s). Each speaks
/// HTTP/1.1 with a header-read timeout, which also closes a connection idle between requests.
async fn serve(listener: tokio::net::TcpListener, app: Router, header_timeout: Duration) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut stop = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), graceful.shutdown()).await;
}

pub fn router(state: Arc<AppState>, max_body: usize) -> Router {
    // Layers run outermost last: the request id and log line first, then the access checks.
    Router::new()
        .route("/", get(status::page))
        .route("/health", get(status::health))
        .route("/metrics", get(status::metrics))
        .route("/openapi.json", get(status::openapi))
        .route("/v1/examples", get(status::examples))
        .route("/v1/report", post(api::report))
        .route("/v1/ask", post(api::ask))
        .route("/v1/draw", post(api::draw))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .fallback(status::not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::guard,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::account,
        ))
        .with_state(state)
}
