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

/// An open server-sent event stream. The response body is de-chunked and split into events
/// only once complete, so a read timeout in the middle of a chunk or a line loses nothing.
pub struct Sse {
    stream: TcpStream,
    chunked: bool,
    /// Bytes read and not yet de-chunked.
    raw: Vec<u8>,
    /// The event stream's text not yet split into events.
    text: Vec<u8>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Sse {
    pub fn open(addr: &str, path: &str, headers: &[(&str, &str)]) -> Sse {
        let mut stream = connect(addr, Duration::from_secs(10));
        write_request(&mut stream, "GET", addr, path, headers, b"");
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        let end = loop {
            if let Some(i) = find(&raw, b"\r\n\r\n") {
                break i;
            }
            let n = stream.read(&mut buf).expect("event stream head");
            assert!(n > 0, "the event stream closed before its head");
            raw.extend_from_slice(&buf[..n]);
        };
        let (status, headers) = read_head(&mut &raw[..end + 4]);
        assert_eq!(status, 200, "event stream status");
        raw.drain(..end + 4);
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        let mut sse = Sse {
            stream,
            chunked,
            raw: Vec::new(),
            text: Vec::new(),
        };
        sse.take(raw);
        sse
    }

    /// Moves what was read into `text`, de-chunked.
    fn take(&mut self, bytes: Vec<u8>) {
        if !self.chunked {
            self.text.extend_from_slice(&bytes);
            return;
        }
        self.raw.extend_from_slice(&bytes);
        while let Some(eol) = find(&self.raw, b"\r\n") {
            let size_line = String::from_utf8_lossy(&self.raw[..eol]).into_owned();
            let hex = size_line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(hex, 16)
                .unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
            let start = eol + 2;
            if self.raw.len() < start + size + 2 {
                return;
            }
            self.text.extend_from_slice(&self.raw[start..start + size]);
            self.raw.drain(..start + size + 2);
        }
    }

    /// The first complete event in `text`, if any (comments and events without data, such as
    /// keep-alives, are skipped).
    fn parse(&mut self) -> Option<(String, String)> {
        while let Some(end) = find(&self.text, b"\n\n") {
            let block: Vec<u8> = self.text.drain(..end + 2).collect();
            let block = String::from_utf8_lossy(&block);
            let (mut name, mut data) = (String::from("message"), Vec::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                }
            }
            if !data.is_empty() {
                return Some((name, data.join("\n")));
            }
        }
        None
    }

    /// The next event (name, data) arriving before `deadline`; `None` if none did. Panics when
    /// the stream ends.
    pub fn next_before(&mut self, deadline: Instant) -> Option<(String, String)> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(event) = self.parse() {
                return Some(event);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let wait = (deadline - now).clamp(Duration::from_millis(1), Duration::from_millis(500));
            self.stream.set_read_timeout(Some(wait)).unwrap();
            match self.stream.read(&mut buf) {
                Ok(0) => panic!("the event stream ended"),
                Ok(n) => self.take(buf[..n].to_vec()),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => panic!("the event stream failed: {e}"),
            }
        }
    }

    /// Reads events (name, data) until `pred` holds for one, which is returned; panics after
    /// `timeout`.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&str, &str) -> bool,
    ) -> (String, String) {
        let deadline = Instant::now() + timeout;
        while let Some((name, data)) = self.next_before(deadline) {
            if pred(&name, &data) {
                return (name, data);
            }
        }
        panic!("no matching server-sent event within {timeout:?}");
    }
}

#[cfg(test)]
mod test {
    use super::*;

    /// A loopback server that answers with `wire` in pieces of `pieces` bytes, pausing
    /// between them.
    fn serve(wire: Vec<u8>, pieces: usize) -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req);
            for p in wire.chunks(pieces) {
                s.write_all(p).unwrap();
                s.flush().unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(500));
        });
        addr
    }

    #[test]
    fn events_split_across_chunks_and_reads_arrive_whole() {
        let text = "event: hello\ndata: {\"a\":1}\n\n:\n\ndata: {\"b\":2}\n\ndata: x\ndata: y\n\n";
        // Chunks of 7 bytes, so chunk boundaries fall inside lines.
        let mut wire = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for c in text.as_bytes().chunks(7) {
            wire.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            wire.extend_from_slice(c);
            wire.extend_from_slice(b"\r\n");
        }
        // And reads of 5 bytes, so reads end inside chunk-size lines and inside data.
        let mut sse = Sse::open(&serve(wire, 5), "/", &[]);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut next = || sse.next_before(deadline).map(|(n, d)| format!("{n} {d}"));
        assert_eq!(next().as_deref(), Some("hello {\"a\":1}"));
        assert_eq!(next().as_deref(), Some("message {\"b\":2}"));
        assert_eq!(next().as_deref(), Some("message x\ny"));
        assert_eq!(
            sse.next_before(Instant::now() + Duration::from_millis(100)),
            None
        );
    }
}
