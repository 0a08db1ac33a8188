//! A running `llm-cxr serve` for the server's tests: started on a free port with a tiny model and
//! a random VQ-GAN, spoken to over real sockets (HTTP/1.0, so an answer ends with its connection).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{random_vqgan, tiny_llm_cxr};

/// A running server, killed when dropped; its log (stderr) is collected by a thread.
pub struct Server {
    pub child: Child,
    pub addr: String,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub fn start(model: &Path, vqgan: &Path, config: &Path, extra: &[&str]) -> Server {
        Self::start_env(model, vqgan, config, extra, &[])
    }

    /// As `start`, with environment variables set for the server.
    pub fn start_env(
        model: &Path,
        vqgan: &Path,
        config: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_llm-cxr"))
            .args(["serve", "--model"])
            .arg(model)
            .arg("--vqgan")
            .arg(vqgan)
            .arg("--config")
            .arg(config)
            .args(["--port", "0"])
            .args(extra)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start llm-cxr serve");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (err, sink) = (child.stderr.take().unwrap(), log.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("llm-cxr serving on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}: {}", log.lock().unwrap()))
            .to_string();
        Server { child, addr, log }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The log once it holds `needle` (a thread collects it, so a line may trail the answer by
    /// a moment on a loaded machine); the log as it is after 10 s otherwise.
    pub fn log_with(&self, needle: &str) -> String {
        let start = std::time::Instant::now();
        loop {
            let log = self.log();
            if log.contains(needle) || start.elapsed() > std::time::Duration::from_secs(10) {
                return log;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Opens a connection and sends one HTTP/1.0 request (the answer then ends with the
    /// connection: no chunked encoding to undo).
    pub fn send(&self, method: &str, path: &str, content_type: &str, body: &[u8]) -> TcpStream {
        self.send_with(method, path, &[], content_type, body)
    }

    /// As `send`, with more headers; a `Host` among them replaces the server's address.
    pub fn send_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        content_type: &str,
        body: &[u8],
    ) -> TcpStream {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut extra = String::new();
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            extra.push_str(&format!("Host: {}\r\n", self.addr));
        }
        for (k, v) in headers {
            extra.push_str(&format!("{k}: {v}\r\n"));
        }
        let head = format!(
            "{method} {path} HTTP/1.0\r\n{extra}Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        // A server may answer (413) and close before it has read a large body.
        let _ = s.write_all(body);
        s
    }

    pub fn request(&self, method: &str, path: &str, content_type: &str, body: &[u8]) -> Reply {
        let mut s = self.send(method, path, content_type, body);
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        Reply::parse(&raw)
    }

    /// One request with more headers (see `send_with`).
    pub fn request_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        content_type: &str,
        body: &[u8],
    ) -> Reply {
        let mut s = self.send_with(method, path, headers, content_type, body);
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        Reply::parse(&raw)
    }

    pub fn get(&self, path: &str) -> Reply {
        self.request("GET", path, "text/plain", b"")
    }

    pub fn json(&self, path: &str, body: serde_json::Value) -> Reply {
        self.request(
            "POST",
            path,
            "application/json",
            body.to_string().as_bytes(),
        )
    }

    pub fn form(&self, path: &str, fields: &[(&str, &[u8])]) -> Reply {
        let (ct, body) = multipart(fields);
        self.request("POST", path, &ct, &body)
    }

    /// `n` clients post the same form at once; their statuses, and whether each had Retry-After.
    pub fn at_once(&self, n: usize, path: &str, fields: &[(&str, &[u8])]) -> Vec<(u16, bool)> {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..n)
                .map(|_| {
                    scope.spawn(|| {
                        let r = self.form(path, fields);
                        (r.status, r.head.contains("retry-after"))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    pub fn metric(&self, name: &str) -> f64 {
        let m = self.get("/metrics").text();
        m.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in\n{m}"))
    }
}

pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn parse(raw: &[u8]) -> Reply {
        let cut = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(raw)));
        let head = String::from_utf8_lossy(&raw[..cut]).to_lowercase();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        Reply {
            status,
            head,
            body: raw[cut + 4..].to_vec(),
        }
    }
    /// A header's value (names and values are lowercased by `parse`).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
    }
    /// The message and request id of an error body.
    pub fn error(&self) -> (String, String) {
        let v = self.json();
        let field = |k: &str| v["error"][k].as_str().unwrap_or_default().to_string();
        (field("message"), field("request_id"))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {} {}", self.status, self.text()))
    }
    /// The `data:` payloads of a server-sent event stream, with their event names.
    pub fn events(&self) -> Vec<(String, String)> {
        self.text()
            .split("\n\n")
            .filter_map(|block| {
                let mut event = "message".to_string();
                let mut data = None;
                for line in block.lines() {
                    if let Some(e) = line.strip_prefix("event:") {
                        event = e.trim().to_string();
                    }
                    if let Some(d) = line.strip_prefix("data:") {
                        data = Some(d.trim().to_string());
                    }
                }
                Some((event, data?))
            })
            .collect()
    }
}

pub fn multipart(fields: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "llmcxrtestboundary7MA4YWxk";
    let mut body = Vec::new();
    for (name, value) in fields {
        let file = if *name == "image" {
            "; filename=\"upload\"\r\nContent-Type: application/octet-stream"
        } else {
            ""
        };
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"{file}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(value);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// A phantom CXR as PNG bytes, and a DICOM of it carrying synthetic patient tags.
pub fn images() -> (Vec<u8>, Vec<u8>) {
    let spec = cxr_phantom::PhantomSpec::sample(3, 0);
    let img = spec.render(64);
    let mut png = Vec::new();
    img.to_luma8()
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let dicom = cxr_image::dicom::encode_dicom(
        &img,
        &cxr_image::dicom::DicomWriteOptions {
            patient: Some(("SECRETSURNAME^GIVEN".into(), "SECRETID4711".into())),
            ..Default::default()
        },
    )
    .unwrap();
    (png, dicom)
}

pub fn models(dir: &Path) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let model = tiny_llm_cxr(dir)?;
    let (vqgan, config) = random_vqgan(dir, 64, "vq64");
    Some((model, vqgan, config))
}

/// A server of the tiny model and a random VQ-GAN with `flags`, and the folder holding them;
/// `None` (the test skips) where `../shared` is absent.
pub fn tiny_server(flags: &[&str]) -> Option<(tempfile::TempDir, Server)> {
    let dir = tempfile::tempdir().unwrap();
    let (model, vqgan, config) = models(dir.path())?;
    let server = Server::start(&model, &vqgan, &config, flags);
    Some((dir, server))
}
