//! A tiny blocking HTTP/1.1 client over loopback for the dashboard tests and the WebDriver
//! session of the browser test: one request per connection (`Connection: close`), plus a
//! reader for server-sent event streams. Enough for JSON APIs; not a general client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A response: status, headers (lower-case names), body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not the expected JSON ({e}): {}", self.text()))
    }
}

fn connect(addr: &str, timeout: Duration) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(timeout)).unwrap();
    s
}

fn write_request(
    s: &mut impl Write,
    method: &str,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) {
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
}

fn read_head(r: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).expect("header line");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    (status, headers)
}

/// Sends one request to `addr` (`host:port`) and reads the whole response.
pub fn request(
    method: &str,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    exchange(
        connect(addr, Duration::from_secs(60)),
        method,
        addr,
        path,
        headers,
        body,
    )
}

/// [`request`] over HTTPS, trusting only the CA certificate in `ca_pem` (a file), with
/// `server_name` as the name the certificate must carry.
pub fn request_tls(
    ca_pem: &std::path::Path,
    server_name: &str,
    method: &str,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        rustls_pki_types::CertificateDer::pem_file_iter(ca_pem).map_err(|e| e.to_string())?
    {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|e| e.to_string())?;
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name)
        .map_err(|e| e.to_string())?;
    let mut tcp = connect(addr, Duration::from_secs(60));
    // Finish the handshake here, so a refused certificate is an error and not a panic.
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
    }
    let stream = rustls::StreamOwned::new(conn, tcp);
    Ok(exchange(stream, method, addr, path, headers, body))
}

fn exchange(
    mut s: impl Read + Write,
    method: &str,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    write_request(&mut s, method, addr, path, headers, body);
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r);
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).unwrap();
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        // Some servers (chromedriver) keep the connection open despite `Connection: close`.
        body = vec![0; n];
        r.read_exact(&mut body).expect("response body");
    } else {
        let _ = r.read_to_end(&mut body);
    }
    Response {
        status,
        headers,
        body,
    }
}

pub fn get(addr: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    request("GET", addr, path, headers, b"")
}

pub fn post_json(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &serde_json::Value,
) -> Response {
    let mut h = headers.to_vec();
    h.push(("Content-Type", "application/json"));
    request("POST", addr, path, &h, body.to_string().as_bytes())
}

/// An open server-sent event stream.
pub struct Sse(BufReader<TcpStream>);

impl Sse {
    pub fn open(addr: &str, path: &str, headers: &[(&str, &str)]) -> Sse {
        let mut s = connect(addr, Duration::from_millis(500));
        write_request(&mut s, "GET", addr, path, headers, b"");
        let mut r = BufReader::new(s);
        let (status, _) = read_head(&mut r);
        assert_eq!(status, 200, "event stream status");
        Sse(r)
    }

    /// Reads events (name, data) until `pred` holds for one, which is returned; panics after
    /// `timeout`. (Chunk-size lines of the chunked encoding are skipped as non-field lines.)
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&str, &str) -> bool,
    ) -> (String, String) {
        let deadline = Instant::now() + timeout;
        let (mut name, mut data) = (String::from("message"), String::new());
        let mut line = String::new();
        while Instant::now() < deadline {
            line.clear();
            match self.0.read_line(&mut line) {
                Ok(0) => panic!("the event stream ended"),
                Ok(_) => {}
                Err(_) => continue, // read timeout: check the deadline
            }
            let l = line.trim_end_matches(['\r', '\n']);
            if let Some(v) = l.strip_prefix("event:") {
                name = v.trim().to_string();
            } else if let Some(v) = l.strip_prefix("data:") {
                data.push_str(v.trim_start());
            } else if l.is_empty() && !data.is_empty() {
                if pred(&name, &data) {
                    return (name, data);
                }
                name = "message".into();
                data.clear();
            }
        }
        panic!("no matching server-sent event within {timeout:?}");
    }
}
