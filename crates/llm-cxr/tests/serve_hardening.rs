//! `llm-cxr serve` against its own faults and hostile clients, over real sockets with the tiny
//! model and a random VQ-GAN: a panic in a batch (answered 500 with a request id, the worker
//! goes on; repeated ones make /health degraded), SIGKILL under load and a restart, the API key,
//! Host and Origin checks, the prompt, upload, body and header limits, `n`, and error bodies
//! that carry no internal detail.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

mod common;
mod server_harness;
use server_harness::{images, models, multipart, Reply, Server};

/// A chat the untrained tiny model answers with exactly `max_tokens` tokens at temperature 0
/// (it needs batch steps after its first token).
fn chat_body(max_tokens: usize) -> serde_json::Value {
    json!({"messages": [{"role": "user", "content": "Describe a chest X-ray."}],
           "max_tokens": max_tokens, "temperature": 0})
}

/// The tiny model and VQ-GAN in a fresh folder, and a server of them; `None` where the shared
/// tokenizer is absent (the test skips).
fn serve(
    flags: &[&str],
    env: &[(&str, &str)],
) -> Option<(tempfile::TempDir, (PathBuf, PathBuf, PathBuf), Server)> {
    let dir = tempfile::tempdir().unwrap();
    let m = models(dir.path())?;
    let server = Server::start_env(&m.0, &m.1, &m.2, flags, env);
    Some((dir, m, server))
}

fn assert_error(r: &Reply, status: u16, needle: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let (message, id) = r.error();
    assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    assert_eq!(
        Some(id),
        r.header("x-request-id"),
        "the body's request id is the header's"
    );
}

#[test]
fn a_panic_in_a_batch_is_answered_500_and_the_next_request_200() {
    let Some((_dir, (model, ..), server)) = serve(
        &["--max-tokens", "8"],
        &[("LLM_CXR_FAULT_INJECT", "panic-once")],
    ) else {
        return;
    };
    let failed = server.json("/v1/chat/completions", chat_body(4));
    assert_error(&failed, 500, "request id");
    let (message, id) = failed.error();
    assert_eq!(id.len(), 16, "{id}");
    assert!(message.contains(&id), "{message}");
    // The client is told nothing of the panic; the log has it, under the same id.
    let body = failed.text();
    for internal in ["panic", "FAULT_INJECT", ".rs", model.to_str().unwrap()] {
        assert!(!body.contains(internal), "{internal} in {body}");
    }
    let log = server.log_with(&id);
    assert!(
        log.contains(&id) && log.contains("LLM_CXR_FAULT_INJECT"),
        "{log}"
    );

    // One failed batch: the server still serves, and says so.
    let health = server.get("/health");
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");
    let next = server.json("/v1/chat/completions", chat_body(4));
    assert_eq!(next.status, 200, "{}", next.text());
    assert_eq!(next.json()["usage"]["completion_tokens"], 4);
    assert_eq!(server.metric("llmcxr_failed_batches_total"), 1.0);
    assert_eq!(server.metric("llmcxr_worker_up"), 1.0);
}

#[test]
fn repeated_panics_make_health_degraded_with_the_reason() {
    let Some((_dir, _, server)) = serve(
        &["--max-tokens", "8"],
        &[("LLM_CXR_FAULT_INJECT", "panic-always")],
    ) else {
        return;
    };
    for _ in 0..3 {
        assert_error(
            &server.json("/v1/chat/completions", chat_body(4)),
            500,
            "request id",
        );
    }
    let health = server.get("/health");
    assert_eq!(health.status, 503, "{}", health.text());
    let v = health.json();
    assert_eq!(v["status"], "degraded");
    assert!(
        v["reason"].as_str().unwrap().contains("failed its last 3"),
        "{v}"
    );
    // The worker is alive: a request is still answered (500 again), not lost.
    assert_eq!(
        server.json("/v1/chat/completions", chat_body(4)).status,
        500
    );
    assert_eq!(server.metric("llmcxr_worker_up"), 1.0);
}

/// Every file under `dir`, with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn sigkill_under_load_leaves_the_model_intact_and_a_restart_serves() {
    let dir = tempfile::tempdir().unwrap();
    let Some((model, vqgan, config)) = models(dir.path()) else {
        return;
    };
    let before = snapshot(dir.path());
    let flags = ["--batch", "4", "--max-tokens", "200"];
    let mut server = Server::start(&model, &vqgan, &config, &flags);
    let (png, _) = images();
    let addr = server.addr.clone();
    // Six clients in flight (text, an upload, a drawing); each reads until the connection ends.
    let answered: Vec<usize> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..6)
            .map(|i| {
                let (addr, png) = (&addr, &png);
                scope.spawn(move || {
                    let (path, ct, body) = match i % 3 {
                        0 => {
                            let b = chat_body(200).to_string().into_bytes();
                            ("/v1/chat/completions", "application/json".to_string(), b)
                        }
                        1 => {
                            let (ct, b) = multipart(&[("image", png), ("max_tokens", b"200")]);
                            ("/v1/report", ct, b)
                        }
                        _ => {
                            let b = json!({"report": "Small effusion."}).to_string().into_bytes();
                            ("/v1/draw", "application/json".to_string(), b)
                        }
                    };
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                    let head = format!(
                        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(head.as_bytes());
                    let _ = s.write_all(&body);
                    let mut raw = Vec::new();
                    let _ = s.read_to_end(&mut raw);
                    raw.len()
                })
            })
            .collect();
        let t0 = Instant::now();
        while server.metric("llmcxr_running_rows") < 2.0 {
            assert!(t0.elapsed() < Duration::from_secs(30), "no load built up");
            std::thread::sleep(Duration::from_millis(10));
        }
        server.child.kill().unwrap(); // SIGKILL
        let status = server.child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "{status:?}");
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    });
    assert!(
        answered.contains(&0),
        "some requests were cut off in flight: {answered:?}"
    );
    drop(server);

    // The server writes nothing: the model folder is as it was, with no file more or less.
    let after = snapshot(dir.path());
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    assert!(before == after, "a file changed under the server");

    let server = Server::start(&model, &vqgan, &config, &flags);
    assert_eq!(server.get("/health").json()["status"], "ok");
    let r = server.json("/v1/chat/completions", chat_body(4));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = server.form("/v1/report", &[("image", &png), ("max_tokens", b"4")]);
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_non_loopback_address_needs_a_key_or_insecure() {
    // Refused before anything is loaded: the model paths need not exist.
    let o = common::llm_cxr(&[
        "serve", "--model", "absent", "--vqgan", "absent", "--host", "0.0.0.0", "--port", "0",
    ]);
    assert!(!o.status.success());
    let err = common::stderr(&o);
    assert!(
        err.contains("without an API key") && err.contains("--insecure"),
        "{err}"
    );
    // With --insecure the refusal is gone (what fails now is the absent model).
    let o = common::llm_cxr(&[
        "serve",
        "--model",
        "absent",
        "--vqgan",
        "absent",
        "--host",
        "0.0.0.0",
        "--port",
        "0",
        "--insecure",
    ]);
    assert!(!common::stderr(&o).contains("without an API key"));
}

#[test]
fn an_api_key_guards_every_route_but_health() {
    // On every interface, with the key from the environment.
    let Some((_dir, _, server)) = serve(
        &["--host", "0.0.0.0", "--max-tokens", "4"],
        &[("LLM_CXR_API_KEY", "k3y-for-tests")],
    ) else {
        return;
    };
    let health = server.get("/health");
    assert_eq!(health.status, 200);
    assert!(health.header("x-request-id").is_some());
    for path in ["/", "/metrics", "/openapi.json", "/v1/examples", "/nowhere"] {
        let r = server.get(path);
        assert_error(&r, 401, "API key");
        assert_eq!(r.header("www-authenticate").as_deref(), Some("bearer"));
    }
    let post = |auth: Option<&str>| {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        server.request_with(
            "POST",
            "/v1/chat/completions",
            &headers,
            "application/json",
            chat_body(4).to_string().as_bytes(),
        )
    };
    assert_error(&post(None), 401, "API key");
    assert_error(&post(Some("Bearer k3y-for-test")), 401, "API key");
    assert_error(&post(Some("Bearer k3y-for-tests2")), 401, "API key");
    assert_error(&post(Some("Basic k3y-for-tests")), 401, "API key");
    assert_eq!(post(Some("Bearer k3y-for-tests")).status, 200);
    let metrics = server.request_with(
        "GET",
        "/metrics",
        &[("Authorization", "Bearer k3y-for-tests")],
        "text/plain",
        b"",
    );
    assert_eq!(metrics.status, 200);
    assert!(!server.log().contains("k3y-for-tests"), "the key is logged");
}

#[test]
fn posts_from_a_foreign_host_or_origin_are_refused() {
    let Some((_dir, _, server)) =
        serve(&["--max-tokens", "4", "--allowed-host", "cxr.example"], &[])
    else {
        return;
    };
    let port = server.addr.rsplit(':').next().unwrap().to_string();
    let chat = |headers: &[(&str, &str)]| {
        server.request_with(
            "POST",
            "/v1/chat/completions",
            headers,
            "application/json",
            chat_body(2).to_string().as_bytes(),
        )
    };
    // DNS rebinding: a page at evil.example whose name now points at 127.0.0.1.
    let evil_host = format!("evil.example:{port}");
    assert_error(&chat(&[("Host", &evil_host)]), 403, "Host");
    assert_error(&chat(&[("Host", "127.0.0.1:1")]), 403, "Host");
    // A page elsewhere posting to localhost: multipart needs no preflight.
    let (png, _) = images();
    let (ct, body) = multipart(&[("image", &png)]);
    let r = server.request_with(
        "POST",
        "/v1/report",
        &[("Origin", "http://evil.example")],
        &ct,
        &body,
    );
    assert_error(&r, 403, "Origin");
    assert_error(&chat(&[("Origin", "null")]), 403, "Origin");
    // Same origin (the served page), no Origin (curl), the loopback names and --allowed-host.
    let own = format!("http://{}", server.addr);
    assert_eq!(chat(&[("Origin", &own)]).status, 200);
    assert_eq!(chat(&[]).status, 200);
    let localhost = format!("localhost:{port}");
    let proxy = format!("cxr.example:{port}");
    assert_eq!(chat(&[("Host", &localhost)]).status, 200);
    assert_eq!(chat(&[("Host", &proxy)]).status, 200);
    // Reading routes are not state-changing: a foreign Host may read /health.
    let h = server.request_with("GET", "/health", &[("Host", &evil_host)], "text/plain", b"");
    assert_eq!(h.status, 200);
}

#[test]
fn a_prompt_over_the_limit_is_refused_before_prefill() {
    let Some((_dir, _, server)) = serve(&["--max-tokens", "4", "--max-prompt-tokens", "60"], &[])
    else {
        return;
    };
    let long = "pleural effusion ".repeat(40);
    let r = server.json(
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": long}]}),
    );
    assert_error(&r, 400, "limit of 60");
    assert!(r.error().0.contains("the prompt has "), "{}", r.text());
    let (png, _) = images();
    let r = server.form("/v1/ask", &[("image", &png), ("question", long.as_bytes())]);
    assert_error(&r, 400, "limit of 60");
    let r = server.json("/v1/draw", json!({"report": long}));
    assert_error(&r, 400, "limit of 60");
    // A report's prompt is its template and 64 image codes: over 60, which only the worker
    // can count (still before the prefill).
    let r = server.form("/v1/report", &[("image", &png)]);
    assert_error(&r, 400, "limit of 60");
    assert_eq!(
        server.metric("llmcxr_admitted_total"),
        0.0,
        "a prompt was prefilled"
    );
    let ok = server.json("/v1/chat/completions", chat_body(2));
    assert_eq!(ok.status, 200, "{}", ok.text());
}

#[test]
fn n_must_be_one() {
    let Some((_dir, _, server)) = serve(&["--max-tokens", "4"], &[]) else {
        return;
    };
    for n in [0, 2, 5] {
        let mut body = chat_body(2);
        body["n"] = n.into();
        assert_error(
            &server.json("/v1/chat/completions", body),
            400,
            "n must be 1",
        );
    }
    let mut body = chat_body(2);
    body["n"] = 1.into();
    let r = server.json("/v1/chat/completions", body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["choices"].as_array().unwrap().len(), 1);
}

/// Seconds until the server ends a connection that sends `bytes` one every `pause`, then waits.
fn seconds_until_closed(addr: &str, bytes: &[u8], pause: Duration) -> f64 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let t0 = Instant::now();
    let mut sent = 0;
    let mut buf = [0u8; 1024];
    while t0.elapsed() < Duration::from_secs(30) {
        if sent < bytes.len() && s.write_all(&bytes[sent..sent + 1]).is_err() {
            return t0.elapsed().as_secs_f64();
        }
        sent += 1;
        let until = Instant::now() + pause;
        while Instant::now() < until {
            match s.read(&mut buf) {
                Ok(0) => return t0.elapsed().as_secs_f64(),
                Ok(_) => {} // an answer (408 and the like) before the close
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return t0.elapsed().as_secs_f64(),
            }
        }
    }
    panic!("the connection was held for 30 s");
}

#[test]
fn slow_and_idle_connections_are_closed_and_uploads_are_capped() {
    let Some((_dir, _, server)) = serve(
        &[
            "--header-timeout",
            "2",
            "--body-timeout",
            "3",
            "--max-uploads",
            "1",
            "--max-tokens",
            "4",
        ],
        &[],
    ) else {
        return;
    };
    // Slow-loris: headers one byte every 200 ms (they would take 20 s).
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nX-Padding: {}\r\n\r\n",
        server.addr,
        "a".repeat(40)
    );
    let slow = seconds_until_closed(&server.addr, head.as_bytes(), Duration::from_millis(200));
    assert!((1.5..5.0).contains(&slow), "closed after {slow:.1} s");
    // A connection that sends nothing, and one idle after its first answer (keep-alive).
    let idle = seconds_until_closed(&server.addr, b"", Duration::from_millis(100));
    assert!((1.5..5.0).contains(&idle), "idle closed after {idle:.1} s");
    let get = format!("GET /health HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr);
    let mut s = TcpStream::connect(&server.addr).unwrap();
    s.write_all(get.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t0 = Instant::now();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    assert!(String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 200"));
    let kept = t0.elapsed().as_secs_f64();
    assert!(
        (1.5..5.0).contains(&kept),
        "kept-alive closed after {kept:.1} s"
    );

    // An upload whose body never finishes holds the one upload slot: the next upload waits
    // up to 2 s for it and is told 429; the slow one gets 408 when its body time is up.
    let (png, _) = images();
    let (ct, body) = multipart(&[("image", &png)]);
    let mut stuck = TcpStream::connect(&server.addr).unwrap();
    stuck
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let head = format!(
        "POST /v1/report HTTP/1.0\r\nHost: {}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
        server.addr,
        body.len()
    );
    stuck.write_all(head.as_bytes()).unwrap();
    stuck.write_all(&body[..body.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let busy = server.form("/v1/report", &[("image", &png)]);
    assert_error(&busy, 429, "uploads");
    assert!(busy.header("retry-after").is_some());
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "it did not wait for a slot"
    );
    let mut raw = Vec::new();
    let _ = stuck.read_to_end(&mut raw);
    assert_error(&Reply::parse(&raw), 408, "body-timeout");
    // The slot is free again.
    let r = server.form("/v1/report", &[("image", &png)]);
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn error_bodies_say_what_is_wrong_without_internal_detail() {
    let Some((_dir, _, server)) = serve(&["--max-tokens", "4", "--max-body-mib", "1"], &[]) else {
        return;
    };
    let (png, _) = images();
    // A PNG cut short: the decoder's own words stay in the log.
    let cut = &png[..png.len() / 2];
    let r = server.form("/v1/report", &[("image", cut)]);
    assert_error(
        &r,
        400,
        "could not be read: its PNG data is broken or cut short",
    );
    let body = r.text();
    for internal in ["upload:", "Png", "Corrupt", "{ "] {
        assert!(!body.contains(internal), "{internal:?} in {body}");
    }
    let log = server.log_with("broken Png data");
    assert!(log.contains("broken Png data"), "{log}");
    let r = server.request("POST", "/v1/draw", "application/json", b"{not json");
    assert_error(&r, 400, "not valid JSON (line 1, column 2)");
    assert!(!r.text().contains("Failed to"), "{}", r.text());
    let r = server.request("POST", "/v1/draw", "text/plain", b"{\"report\": \"x\"}");
    assert_error(&r, 400, "Content-Type: application/json");
    let r = server.request("POST", "/v1/report", "text/plain", b"hello");
    assert_error(&r, 400, "multipart/form-data");
    let r = server.form("/v1/report", &[("image", &png), ("max_tokens", b"lots")]);
    assert_error(&r, 400, "field max_tokens: \"lots\" is not a valid value");
    assert_error(&server.get("/nowhere"), 404, "no route /nowhere");
    // A declared length over the limit is refused before the body is read.
    let mut s = TcpStream::connect(&server.addr).unwrap();
    let head = format!(
        "POST /v1/draw HTTP/1.0\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        server.addr,
        5 << 20
    );
    s.write_all(head.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    assert_error(&Reply::parse(&raw), 413, "limit of 1 MiB");
}

#[test]
fn the_openapi_document_describes_every_designed_answer() {
    let Some((_dir, _, server)) = serve(&[], &[]) else {
        return;
    };
    let spec = server.get("/openapi.json").json();
    for route in ["/v1/report", "/v1/ask", "/v1/draw", "/v1/chat/completions"] {
        let responses = &spec["paths"][route]["post"]["responses"];
        for status in [
            "200", "400", "401", "403", "408", "413", "429", "500", "503",
        ] {
            let r = &responses[status];
            assert!(
                r["content"]["application/json"]["schema"].is_object(),
                "{route} {status}: {r}"
            );
        }
        assert!(responses["429"]["headers"]["Retry-After"].is_object());
    }
    // The server's own --max-tokens (256 by default) bounds the documented max_tokens.
    let chat = &spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]
        ["application/json"]["schema"]["properties"]["max_tokens"];
    assert_eq!(chat["maximum"], 256);
    assert!(spec["paths"]["/health"]["get"]["responses"]["503"]["content"].is_object());
    assert_eq!(
        spec["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

/// Not a test: writes the tiny model and the random VQ-GAN into `$LLMCXR_FIXTURE_DIR` for
/// `scripts/fuzz-api.sh` (`llm-cxr-tiny/`, `vq64.safetensors`, `vq64.json`).
#[test]
#[ignore = "a fixture writer for scripts/fuzz-api.sh"]
fn write_fixture() {
    let dir = PathBuf::from(std::env::var("LLMCXR_FIXTURE_DIR").expect("LLMCXR_FIXTURE_DIR"));
    std::fs::create_dir_all(&dir).unwrap();
    let (model, vqgan, config) = models(&dir).expect("the shared tokenizer");
    println!(
        "{} {} {}",
        model.display(),
        vqgan.display(),
        config.display()
    );
}
