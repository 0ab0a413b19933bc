//! A forward proxy that speaks HTTP `CONNECT` (as squid or a corporate proxy does for HTTPS):
//! it reads the request head, connects to the named host, answers `200` and then copies bytes
//! both ways. Every head it received is kept, so a test can see which upstream connections
//! went through it and with which `Proxy-Authorization`.
//!
//! The gateway reaches a loopback upstream directly, whatever the proxy settings, so tests name
//! their upstreams `NAME.test` (a reserved TLD nobody resolves): only this proxy can reach them,
//! and it sends every `*.test` host to 127.0.0.1. [`via_test_host`] rewrites a URL so.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The longest request head read; a longer one is refused.
const MAX_HEAD: usize = 16 << 10;

pub struct ConnectProxy {
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ConnectProxy {
    pub async fn start() -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(tunnel(client, seen.clone()));
            }
        });
        ConnectProxy { addr, heads, task }
    }

    /// `http://127.0.0.1:PORT`, with `user:pass@` when given (already percent-encoded).
    pub fn url(&self, userinfo: Option<&str>) -> String {
        match userinfo {
            Some(u) => format!("http://{u}@{}", self.addr),
            None => format!("http://{}", self.addr),
        }
    }

    /// The request heads received so far, in order.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn tunnel(mut client: TcpStream, heads: Arc<Mutex<Vec<String>>>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > MAX_HEAD {
            return;
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    heads.lock().unwrap().push(head.clone());
    let target = match head.split_whitespace().collect::<Vec<_>>()[..] {
        ["CONNECT", target, ..] => target.to_string(),
        _ => {
            let _ = client
                .write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
                .await;
            return;
        }
    };
    let target = match target.rsplit_once(':') {
        Some((host, port)) if host.ends_with(".test") => format!("127.0.0.1:{port}"),
        _ => target,
    };
    let Ok(mut upstream) = TcpStream::connect(&target).await else {
        let _ = client
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// `url` (an `http(s)://127.0.0.1:PORT/...` of an in-process upstream) with its host renamed
/// `name.test`, which only a [`ConnectProxy`] can reach.
pub fn via_test_host(url: &str, name: &str) -> String {
    url.replacen("127.0.0.1", &format!("{name}.test"), 1)
}
