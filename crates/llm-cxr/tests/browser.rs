//! The web page of `llm-cxr serve` in headless Chromium, driven over WebDriver (Debian's
//! `chromium` and `chromium-driver`; `.ci/run` installs them, elsewhere the test says it skips):
//! upload a CXR, watch the report stream in, ask a question, draw a CXR from a report. The
//! screenshots are kept in target/tmp/browser/.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::{random_vqgan, tiny_llm_cxr};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.1 request with `Connection: close`; returns the status and the body as JSON.
fn http(addr: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    // Read the head, then exactly the body it announces: chromedriver keeps the connection
    // open whatever the request says.
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    let cut = loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the connection closed before the head");
        raw.extend_from_slice(&buf[..n]);
        if let Some(cut) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break cut;
        }
    };
    let head = String::from_utf8_lossy(&raw[..cut]).to_lowercase();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a Content-Length");
    while raw.len() < cut + 4 + length {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the connection closed inside the body");
        raw.extend_from_slice(&buf[..n]);
    }
    let payload = &raw[cut + 4..cut + 4 + length];
    (
        status,
        serde_json::from_slice(payload).unwrap_or(Value::Null),
    )
}

/// A WebDriver session.
struct Browser {
    driver: String,
    session: String,
}

impl Browser {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = http(
            &self.driver,
            method,
            &format!("/session/{}{path}", self.session),
            body.as_ref(),
        );
        assert_eq!(status, 200, "{method} {path}: {v}");
        v["value"].clone()
    }
    fn element(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }
    fn click(&self, css: &str) {
        let e = self.element(css);
        self.call("POST", &format!("/element/{e}/click"), Some(json!({})));
    }
    fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css);
        self.call("POST", &format!("/element/{e}/clear"), Some(json!({})));
        self.call(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        );
    }
    fn script(&self, js: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": js, "args": []})),
        )
    }
    /// Polls `js` until it returns something truthy, for up to a minute.
    fn wait_for(&self, js: &str, what: &str) -> Value {
        let t0 = Instant::now();
        loop {
            let v = self.script(js);
            if !(v.is_null() || v == json!(false) || v == json!("") || v == json!(0)) {
                return v;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "waited a minute for {what}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    fn screenshot(&self, path: &Path) {
        use base64::Engine as _;
        let v = self.call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        assert!(image::load_from_memory(&png).is_ok());
        std::fs::write(path, png).unwrap();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names
        .iter()
        .flat_map(|n| std::env::split_paths(&path).map(move |d| d.join(n)))
        .find(|p| p.is_file())
}

#[test]
fn the_page_reads_asks_and_draws_in_headless_chromium() {
    let (Some(driver_bin), Some(chromium)) = (
        find(&["chromedriver"]),
        find(&["chromium", "chromium-browser", "google-chrome"]),
    ) else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("chromedriver or chromium is absent (apt-get install chromium chromium-driver) (CI=true: CI must have it)");
        }
        eprintln!(
            "SKIP: chromedriver or chromium is absent (apt-get install chromium chromium-driver)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(model) = tiny_llm_cxr(dir.path()) else {
        return;
    };
    let (vqgan, config) = random_vqgan(dir.path(), 64, "vq64");
    let mut server = Command::new(env!("CARGO_BIN_EXE_llm-cxr"))
        .args(["serve", "--port", "0", "--max-tokens", "24", "--model"])
        .arg(&model)
        .arg("--vqgan")
        .arg(&vqgan)
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _server = Killed(server);
    let site = line
        .trim()
        .strip_prefix("llm-cxr serving on ")
        .unwrap()
        .to_string();

    let port = free_port();
    let _driver = Killed(
        Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let driver = format!("127.0.0.1:{port}");
    let t0 = Instant::now();
    while TcpStream::connect(&driver).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "chromedriver did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
        "binary": chromium,
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,1000"]
    }}}});
    let (status, v) = http(&driver, "POST", "/session", Some(&caps));
    assert_eq!(status, 200, "{v}");
    let browser = Browser {
        driver: driver.clone(),
        session: v["value"]["sessionId"].as_str().unwrap().to_string(),
    };
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&shots).unwrap();

    browser.call("POST", "/url", Some(json!({ "url": site })));
    let examples = browser.wait_for(
        "return document.querySelectorAll('#examples img').length",
        "the example phantoms",
    );
    assert_eq!(examples, json!(4));

    // Upload a phantom, watch the report stream in.
    let upload = dir.path().join("cxr.png");
    cxr_phantom::PhantomSpec::sample(5, 1)
        .render(128)
        .to_luma8()
        .save(&upload)
        .unwrap();
    let file = browser.element("#file");
    browser.call(
        "POST",
        &format!("/element/{file}/value"),
        Some(json!({ "text": upload.display().to_string() })),
    );
    browser.wait_for(
        "return document.getElementById('preview').naturalWidth",
        "the preview",
    );
    browser.click("#report-btn");
    browser.wait_for(
        "return document.getElementById('report').dataset.done === '1'",
        "the report",
    );
    let report = browser.script("return document.getElementById('report').textContent");
    let report_class = browser.script("return document.getElementById('report').className");
    assert_eq!(report_class, json!(""), "the page shows an error: {report}");
    browser.screenshot(&shots.join("report.png"));

    browser.type_into("#question", "Is there a pneumothorax?");
    browser.click("#ask-btn");
    browser.wait_for(
        "return document.getElementById('answer').dataset.done === '1'",
        "the answer",
    );
    assert_eq!(
        browser.script("return document.getElementById('answer').className"),
        json!("")
    );

    // Draw from a report: a decoded PNG appears.
    browser.type_into("#draw-report", "Large left pleural effusion.");
    browser.click("#draw-btn");
    let width = browser.wait_for(
        "return document.getElementById('drawing').naturalWidth",
        "the drawing",
    );
    assert_eq!(width, json!(16));
    let status = browser.script("return document.getElementById('draw-status').textContent");
    assert!(status.as_str().unwrap().starts_with("64 codes"), "{status}");
    browser.screenshot(&shots.join("draw.png"));

    http(
        &driver,
        "DELETE",
        &format!("/session/{}", browser.session),
        None,
    );
    eprintln!("screenshots in {}", shots.display());
}
