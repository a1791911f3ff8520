//! A WebDriver session with headless Chromium (Debian's `chromium` and `chromium-driver`) over
//! the tiny HTTP client of [`crate::http`]: enough to load a page, run JavaScript in it, click,
//! wait for a condition and take a screenshot. Used by the browser test and by the dashboard
//! benchmark (`pifleet-bench`'s `pifleet-dashboard-bench`).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{descendants, http, wait_until, Proc};

/// The key of an element reference in WebDriver answers.
pub const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where Debian installs the browser.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// A chromedriver process with one browser session; both end on drop.
pub struct Driver {
    proc: Proc,
    addr: String,
    session: String,
}

impl Driver {
    /// Starts chromedriver on a free loopback port and a headless Chromium (1400 × 1100) with
    /// its profile in `profile`.
    pub fn start(profile: &Path) -> Driver {
        Driver::start_with(profile, &[])
    }

    /// [`Driver::start`] with more Chromium command-line switches.
    pub fn start_with(profile: &Path, extra_args: &[&str]) -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = Command::new("chromedriver");
        cmd.arg(format!("--port={port}"));
        let proc = Proc::spawn("chromedriver", cmd);
        let addr = format!("127.0.0.1:{port}");
        wait_until("chromedriver listens", Duration::from_secs(20), || {
            std::net::TcpStream::connect(&addr).is_ok()
        });
        let mut args: Vec<String> = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1400,1100",
        ]
        .iter()
        .chain(extra_args)
        .map(|s| s.to_string())
        .collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args}
        }}});
        let r = http::post_json(&addr, "/session", &[], &caps);
        assert_eq!(r.status, 200, "new WebDriver session: {}", r.text());
        let v: Value = r.json();
        let session = v["value"]["sessionId"].as_str().unwrap().to_string();
        Driver {
            proc,
            addr,
            session,
        }
    }

    /// chromedriver's process id; the browser's processes are its descendants.
    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// One WebDriver command of this session (`path` after `/session/ID`); its `value`.
    pub fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let r = if method == "GET" {
            http::get(&self.addr, &path, &[])
        } else {
            http::post_json(&self.addr, &path, &[], &body)
        };
        assert_eq!(r.status, 200, "WebDriver {method} {path}: {}", r.text());
        r.json::<Value>()["value"].take()
    }

    /// Navigates to `url`.
    pub fn goto(&self, url: &str) {
        self.call("POST", "/url", json!({ "url": url }));
    }

    /// Runs `script` (a function body) in the page; what it returns.
    pub fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
    }

    /// Clicks the first element matching `css`.
    pub fn click(&self, css: &str) {
        let e = self.call(
            "POST",
            "/element",
            json!({"using": "css selector", "value": css}),
        );
        let id = e[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("element id in {e}"))
            .to_string();
        self.call("POST", &format!("/element/{id}/click"), json!({}));
    }

    /// Polls `script` every 100 ms until it returns true: how long that took, or `None` after
    /// `timeout`.
    pub fn poll(&self, timeout: Duration, script: &str) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if self.js(script) == Value::Bool(true) {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// Polls `script` until it returns true; on timeout fails with what `explain` returns.
    pub fn wait(&self, what: &str, timeout: Duration, script: &str, explain: &str) {
        if self.poll(timeout, script).is_none() {
            panic!(
                "the page did not show {what} within {timeout:?}: {}",
                self.js(explain)
            );
        }
    }

    /// A PNG of the window.
    pub fn screenshot(&self) -> Vec<u8> {
        base64_decode(
            self.call("GET", "/screenshot", Value::Null)
                .as_str()
                .unwrap(),
        )
    }
}

impl Drop for Driver {
    /// Ends the session (unless unwinding from a panic, when chromedriver may not answer), then
    /// ends every browser process still running: killing chromedriver leaves them behind.
    fn drop(&mut self) {
        let browser = descendants(self.pid());
        if !std::thread::panicking() {
            let _ = http::request(
                "DELETE",
                &self.addr,
                &format!("/session/{}", self.session),
                &[],
                b"",
            );
        }
        for pid in browser {
            let _ = Command::new("kill")
                .args(["-9", &pid.to_string()])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// Standard base64 (WebDriver's screenshots).
pub fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= u32::from(val(*c)) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn base64_decodes_padded_and_unpadded_input() {
        assert_eq!(base64_decode("aGVsbG8="), b"hello");
        assert_eq!(base64_decode("aGVsbG8h"), b"hello!");
        assert_eq!(base64_decode("iVBO\nRw=="), b"\x89PNG");
    }
}
