//! `llm-cxr serve` over real sockets, with an (untrained) tiny LLM-CXR model and a random
//! VQ-GAN: every route, streaming, the OpenAI-compatible endpoint, errors, the queue's 429,
//! cancellation on disconnect, and no DICOM patient tag in any response or log line.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

mod common;
mod server_harness;
use server_harness::{images, models, multipart, tiny_server, Reply, Server};

#[test]
fn every_route_answers_and_errors_are_clear() {
    let Some((_dir, server)) = tiny_server(&["--max-tokens", "12", "--max-body-mib", "1"]) else {
        return;
    };
    let (png, dicom) = images();

    let health = server.get("/health");
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");
    let page = server.get("/");
    assert_eq!(page.status, 200);
    assert!(page.text().contains("/v1/report") && page.text().contains("<title>llm-cxr"));
    let spec = server.get("/openapi.json").json();
    assert_eq!(spec["openapi"], "3.1.0");
    for route in [
        "/v1/report",
        "/v1/ask",
        "/v1/draw",
        "/v1/chat/completions",
        "/metrics",
    ] {
        assert!(
            spec["paths"][route].is_object(),
            "{route} missing from the OpenAPI document"
        );
    }
    let examples = server.get("/v1/examples").json();
    let first = &examples["examples"][0];
    assert!(first["report"].as_str().unwrap().contains("IMPRESSION"));
    assert!(first["png_base64"].as_str().unwrap().len() > 1000);

    // CXR -> report, whole and streamed; a PNG and a DICOM upload.
    for upload in [&png, &dicom] {
        let r = server.form("/v1/report", &[("image", upload), ("temperature", b"0")]);
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        let tokens = v["usage"]["completion_tokens"].as_u64().unwrap();
        assert!((1..=12).contains(&tokens), "{v}");
        assert!(v["text"].is_string());
        assert!(!r.text().contains("SECRET"));
    }
    let streamed = server.form(
        "/v1/report",
        &[("image", &png), ("temperature", b"0"), ("stream", b"true")],
    );
    assert_eq!(streamed.status, 200);
    assert!(streamed.head.contains("text/event-stream"));
    let events = streamed.events();
    let done = events
        .iter()
        .find(|(e, _)| e == "done")
        .expect("a done event");
    let whole: serde_json::Value = serde_json::from_str(&done.1).unwrap();
    let deltas: String = events
        .iter()
        .filter(|(e, _)| e == "token")
        .map(|(_, d)| {
            serde_json::from_str::<serde_json::Value>(d).unwrap()["delta"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        deltas.trim(),
        whole["text"].as_str().unwrap(),
        "the deltas add up to the answer"
    );
    // Greedy is deterministic: the streamed answer equals the whole one.
    let plain = server.form("/v1/report", &[("image", &png), ("temperature", b"0")]);
    assert_eq!(plain.json()["text"], whole["text"]);

    let ask = server.form(
        "/v1/ask",
        &[("image", &png), ("question", b"Is there pleural effusion?")],
    );
    assert_eq!(ask.status, 200, "{}", ask.text());
    assert!(ask.json()["text"].is_string());

    // Report -> CXR: exactly one image's codes, and a PNG of the VQ-GAN's size.
    let draw = server.json(
        "/v1/draw",
        serde_json::json!({"report": "Small left pleural effusion.", "seed": 3}),
    );
    assert_eq!(draw.status, 200, "{}", draw.text());
    let v = draw.json();
    assert_eq!(v["codes"].as_array().unwrap().len(), 64);
    assert!(v["codes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c.as_u64().unwrap() < 64));
    use base64::Engine as _;
    let png_out = base64::engine::general_purpose::STANDARD
        .decode(v["png_base64"].as_str().unwrap())
        .unwrap();
    let drawn = image::load_from_memory(&png_out).unwrap();
    assert_eq!((drawn.width(), drawn.height()), (16, 16));

    // OpenAI-compatible chat, whole and streamed.
    let body = serde_json::json!({"model": "tiny", "messages": [{"role": "user", "content": "Name a bone."}],
        "max_tokens": 5, "temperature": 0});
    let chat = server.json("/v1/chat/completions", body.clone());
    assert_eq!(chat.status, 200, "{}", chat.text());
    let v = chat.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= 5);
    let mut body = body;
    body["stream"] = true.into();
    let events = server.json("/v1/chat/completions", body).events();
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunk: serde_json::Value = serde_json::from_str(&events[0].1).unwrap();
    assert_eq!(chunk["object"], "chat.completion.chunk");
    let content: String = events[..events.len() - 1]
        .iter()
        .filter_map(|(_, d)| {
            serde_json::from_str::<serde_json::Value>(d).unwrap()["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(
        content.trim(),
        v["choices"][0]["message"]["content"].as_str().unwrap()
    );

    // Errors: a status and a message that says what is wrong.
    let error = |r: &Reply, status: u16, needle: &str| {
        assert_eq!(r.status, status, "{}", r.text());
        let m = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(m.contains(needle), "{m:?} lacks {needle:?}");
    };
    error(
        &server.form("/v1/report", &[("temperature", b"0")]),
        400,
        "no `image`",
    );
    error(
        &server.form("/v1/report", &[("image", b"not an image")]),
        400,
        "could not be read",
    );
    error(
        &server.form("/v1/ask", &[("image", &png)]),
        400,
        "no `question`",
    );
    error(
        &server.form("/v1/report", &[("image", &png), ("max_tokens", b"13")]),
        400,
        "limit of 12",
    );
    error(
        &server.form("/v1/report", &[("image", &png), ("colour", b"red")]),
        400,
        "unknown form field",
    );
    error(
        &server.json("/v1/draw", serde_json::json!({"report": " "})),
        400,
        "empty",
    );
    error(
        &server.request("POST", "/v1/draw", "application/json", b"{not json"),
        400,
        "",
    );
    error(
        &server.json("/v1/chat/completions", serde_json::json!({"messages": []})),
        400,
        "no user message",
    );
    // Longer than the model's 512 positions: the client is told, and the server goes on.
    let long = "effusion ".repeat(600);
    error(
        &server.json(
            "/v1/chat/completions",
            serde_json::json!({"messages": [{"role": "user", "content": long}]}),
        ),
        400,
        "positions",
    );
    let big = vec![0u8; 2 << 20];
    assert_eq!(server.form("/v1/report", &[("image", &big)]).status, 413);

    let metrics = server.get("/metrics");
    assert!(metrics.head.contains("text/plain"));
    assert!(server.metric("llmcxr_requests_total{route=\"/v1/report\",status=\"200\"}") >= 4.0);
    assert!(server.metric("llmcxr_generated_tokens_total") > 0.0);
    // Logs name routes and statuses, never a patient tag read from the DICOM.
    let log = server.log_with("POST /v1/report -> 200");
    assert!(log.contains("POST /v1/report -> 200"), "{log}");
    assert!(!log.contains("SECRET"), "{log}");
}

#[test]
fn a_full_queue_answers_429_a_gone_client_stops_and_a_deadline_answers_503() {
    let dir = tempfile::tempdir().unwrap();
    let Some((model, vqgan, config)) = models(dir.path()) else {
        return;
    };
    let server = Server::start(
        &model,
        &vqgan,
        &config,
        &["--queue", "1", "--batch", "1", "--max-tokens", "400"],
    );
    let (png, _) = images();

    // A stream that runs long; the client reads its first token and hangs up.
    let (ct, body) = multipart(&[("image", &png), ("stream", b"true"), ("max_tokens", b"400")]);
    let mut s = server.send("POST", "/v1/report", &ct, &body);
    let mut first = [0u8; 256];
    let n = s.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.0 200"));
    drop(s);
    let t0 = Instant::now();
    while server.metric("llmcxr_cancelled_total") < 1.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the generation was not cancelled"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let generated = server.metric("llmcxr_generated_tokens_total");
    assert!(
        generated < 400.0,
        "{generated} tokens: the row ran to its limit"
    );

    // Many clients at once against a queue of one: some wait, the rest are told when to retry.
    let fields: &[(&str, &[u8])] = &[
        ("image", &png),
        ("max_tokens", b"200"),
        ("temperature", b"0"),
    ];
    let statuses = server.at_once(24, "/v1/report", fields);
    assert!(
        statuses.iter().all(|(s, _)| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    assert!(statuses.iter().any(|(s, _)| *s == 200), "{statuses:?}");
    assert!(
        statuses.iter().any(|&(s, retry)| s == 429 && retry),
        "no 429 with Retry-After: {statuses:?}"
    );
    assert_eq!(server.get("/health").status, 200);
    drop(server);

    // A deadline of one second against work that takes longer: 503 with Retry-After, counted.
    let server = Server::start(
        &model,
        &vqgan,
        &config,
        &[
            "--queue",
            "16",
            "--batch",
            "1",
            "--max-tokens",
            "400",
            "--timeout",
            "1",
        ],
    );
    let statuses = server.at_once(12, "/v1/report", &[("image", &png), ("max_tokens", b"400")]);
    assert!(
        statuses.iter().all(|(s, _)| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    assert!(
        statuses.iter().any(|&(s, retry)| s == 503 && retry),
        "no 503 with Retry-After: {statuses:?}"
    );
    assert!(server.metric("llmcxr_timed_out_total") >= 1.0);
}

/// Continuous batching: a short chat sent while a long answer runs joins the running batch and
/// ends first (batching by request would make it wait for the long one).
#[test]
fn a_request_joins_a_running_batch_and_ends_first() {
    let Some((_dir, server)) = tiny_server(&["--batch", "4", "--max-tokens", "400"]) else {
        return;
    };
    let chat = |max_tokens: usize| {
        let r = server.json(
            "/v1/chat/completions",
            serde_json::json!({
                "messages": [{"role": "user", "content": "Describe a chest X-ray."}],
                "max_tokens": max_tokens,
                "temperature": 0,
            }),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["usage"]["completion_tokens"].as_u64().unwrap()
    };
    let t0 = Instant::now();
    let ((long_tokens, long_end), short_end) = std::thread::scope(|scope| {
        let long = scope.spawn(|| (chat(400), t0.elapsed()));
        while server.metric("llmcxr_running_rows") < 1.0 {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the long answer never started"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(chat(4), 4);
        let short_end = t0.elapsed();
        (long.join().unwrap(), short_end)
    });
    assert!(
        short_end < long_end,
        "the short answer ended at {short_end:?}, after the long one ({long_tokens} tokens) at {long_end:?}"
    );
    assert_eq!(server.metric("llmcxr_admitted_total"), 2.0);
    // Some steps ran both rows.
    assert!(server.metric("llmcxr_step_rows_total") > server.metric("llmcxr_steps_total"));
    assert_eq!(server.metric("llmcxr_running_rows"), 0.0);
}

/// The server's resident memory in MiB (Linux).
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// 64 clients for a bounded time, mixing every route with malformed and oversized requests: no
/// crash, no 5xx but the designed 503, bounded memory; prints throughput and latency (JSON, also
/// written to $LLMCXR_LOAD_OUT). `LLMCXR_LOAD_SECONDS` (default 8), `LLMCXR_LOAD_CLIENTS`
/// (64), `LLMCXR_LOAD_TIMEOUT` (the server's `--timeout`, 20) and `LLMCXR_LOAD_MODEL` / `_VQGAN` / `_CONFIG` (a real model instead of the tiny one)
/// size it for the figures in docs/serving.md.
#[test]
fn under_load_every_answer_is_designed_and_memory_stays_bounded() {
    let env = |k: &str| std::env::var(k).ok();
    let seconds: f64 = env("LLMCXR_LOAD_SECONDS")
        .and_then(|v| v.parse().ok())
        .unwrap_or(8.0);
    let clients: usize = env("LLMCXR_LOAD_CLIENTS")
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let timeout = env("LLMCXR_LOAD_TIMEOUT").unwrap_or_else(|| "20".into());
    let dir = tempfile::tempdir().unwrap();
    let (model, vqgan, config) = match (
        env("LLMCXR_LOAD_MODEL"),
        env("LLMCXR_LOAD_VQGAN"),
        env("LLMCXR_LOAD_CONFIG"),
    ) {
        (Some(m), Some(v), Some(c)) => (m.into(), v.into(), c.into()),
        _ => match models(dir.path()) {
            Some(m) => m,
            None => return,
        },
    };
    let server = Server::start(
        &model,
        &vqgan,
        &config,
        &[
            "--queue",
            "16",
            "--batch",
            "8",
            "--max-tokens",
            "32",
            "--timeout",
            &timeout,
            "--max-body-mib",
            "1",
        ],
    );
    let pid = server.child.id();
    let (png, _) = images();
    let big = vec![7u8; 3 << 19];

    // One client alone first: the figures to compare with.
    let single: Vec<f64> = (0..4)
        .map(|_| {
            let t = Instant::now();
            let r = server.form("/v1/report", &[("image", &png), ("max_tokens", b"32")]);
            assert_eq!(r.status, 200, "{}", r.text());
            t.elapsed().as_secs_f64()
        })
        .collect();
    let rss_start = rss_mib(pid);

    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Kind {
        Report,
        Ask,
        Draw,
        Chat,
        Malformed,
        Oversized,
        Garbage,
    }
    let kinds = [
        Kind::Report,
        Kind::Ask,
        Kind::Draw,
        Kind::Chat,
        Kind::Report,
        Kind::Malformed,
        Kind::Oversized,
        Kind::Garbage,
    ];
    let stop = Instant::now() + Duration::from_secs_f64(seconds);
    let peak_rss = std::sync::Mutex::new(rss_start);
    let results: Vec<(Kind, u16, f64)> = std::thread::scope(|scope| {
        scope.spawn(|| {
            while Instant::now() < stop {
                let r = rss_mib(pid);
                let mut p = peak_rss.lock().unwrap();
                *p = p.max(r);
                drop(p);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let (server, png, big) = (&server, &png, &big);
                scope.spawn(move || {
                    let mut out = Vec::new();
                    let mut n = c;
                    while Instant::now() < stop {
                        let kind = kinds[n % kinds.len()];
                        n += 1;
                        let t = Instant::now();
                        let status = match kind {
                            Kind::Report => server.form("/v1/report", &[("image", png)]).status,
                            Kind::Ask => {
                                server.form("/v1/ask", &[("image", png), ("question", b"Is the heart enlarged?")]).status
                            }
                            Kind::Draw => server.json("/v1/draw", serde_json::json!({"report": "No acute process."})).status,
                            Kind::Chat => server
                                .json("/v1/chat/completions", serde_json::json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}))
                                .status,
                            Kind::Malformed => server.form("/v1/report", &[("image", b"GIF89a-not-a-cxr")]).status,
                            Kind::Oversized => server.form("/v1/report", &[("image", big)]).status,
                            Kind::Garbage => {
                                let mut s = TcpStream::connect(&server.addr).unwrap();
                                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                                let _ = s.write_all(b"\x16\x03\x01 this is not HTTP\r\n\r\n");
                                let mut raw = Vec::new();
                                let _ = s.read_to_end(&mut raw);
                                if raw.is_empty() { 400 } else { Reply::parse(&raw).status }
                            }
                        };
                        out.push((kind, status, t.elapsed().as_secs_f64()));
                        // Clients as deployed ones behave: back off when told to, pause
                        // briefly otherwise (a tight loop of 429s would only starve the model
                        // of CPU on this 2-core machine).
                        let pause = if status == 429 { 250 } else { 20 };
                        std::thread::sleep(Duration::from_millis(pause));
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });

    for &(kind, status, _) in &results {
        let designed = match kind {
            Kind::Malformed | Kind::Garbage => status == 400,
            Kind::Oversized => status == 413,
            _ => matches!(status, 200 | 429 | 503),
        };
        assert!(designed, "{kind:?} answered {status}");
    }
    assert_eq!(server.get("/health").status, 200, "the server survived");
    let peak = *peak_rss.lock().unwrap();
    assert!(
        peak < rss_start + 512.0,
        "memory grew from {rss_start:.0} to {peak:.0} MiB"
    );
    let mut ok: Vec<f64> = results
        .iter()
        .filter(|(k, s, _)| {
            *s == 200 && matches!(k, Kind::Report | Kind::Ask | Kind::Draw | Kind::Chat)
        })
        .map(|r| r.2)
        .collect();
    ok.sort_by(f64::total_cmp);
    assert!(!ok.is_empty(), "no request succeeded under load");
    let count = |f: &dyn Fn(u16) -> bool| results.iter().filter(|r| f(r.1)).count();
    let mut single = single;
    single.sort_by(f64::total_cmp);
    let latencies = |kinds: &[Kind]| {
        let mut l: Vec<f64> = results
            .iter()
            .filter(|(k, s, _)| *s == 200 && kinds.contains(k))
            .map(|r| r.2)
            .collect();
        l.sort_by(f64::total_cmp);
        l
    };
    let text = latencies(&[Kind::Report, Kind::Ask, Kind::Chat]);
    let drawn = latencies(&[Kind::Draw]);
    let steps = server.metric("llmcxr_steps_total");
    let summary = serde_json::json!({
        "clients": clients,
        "timeout_s": timeout,
        "seconds": seconds,
        "requests": results.len(),
        "answered_200": ok.len(),
        "throughput_rps": ok.len() as f64 / seconds,
        "p50_s": percentile(&ok, 0.5),
        "p99_s": percentile(&ok, 0.99),
        "status_429": count(&|s| s == 429),
        "status_503": count(&|s| s == 503),
        "status_4xx_designed": count(&|s| s == 400 || s == 413),
        "single_client_report_p50_s": percentile(&single, 0.5),
        "rss_mib_start": rss_start,
        "rss_mib_peak": peak,
        "text_200": text.len(),
        "draw_200": drawn.len(),
        "text_p50_s": percentile(&text, 0.5),
        "text_p99_s": percentile(&text, 0.99),
        "draw_p50_s": percentile(&drawn, 0.5),
        "draw_p99_s": percentile(&drawn, 0.99),
        "generated_tokens": server.metric("llmcxr_generated_tokens_total"),
        "steps": steps,
        "rows_per_step": server.metric("llmcxr_step_rows_total") / steps,
    });
    println!("{summary}");
    if let Some(path) = env("LLMCXR_LOAD_OUT") {
        std::fs::write(path, summary.to_string()).unwrap();
    }
}
