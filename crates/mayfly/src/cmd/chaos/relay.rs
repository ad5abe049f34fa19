//! The chaos run's TCP forwarders. The agent↔server link is a forwarder per agent that can be
//! cut (nothing is forwarded either way and new connections are held, as in a partition where
//! every packet is lost, until it is restored; nothing is reset, so TCP on both sides finds out
//! only by its own timeouts and heartbeats). The webhook relay carries the simulator's
//! deliveries from the internet stand-in to the servers on loopback, round robin, as a load
//! balancer would.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A forwarder listening on `addr`.
#[derive(Debug)]
pub struct Forwarder {
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    /// Forwards every connection to `bind` to one of `targets`: the next in turn that accepts.
    pub async fn start(bind: SocketAddr, targets: Vec<SocketAddr>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let (cut, cut_rx) = watch::channel(false);
        let next = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (targets, next, cut) = (targets.clone(), next.clone(), cut_rx.clone());
                tokio::spawn(forward(client, targets, next, cut));
            }
        });
        Ok(Self { addr, cut, task })
    }

    /// Cut (`true`) or restore (`false`) the link.
    pub fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    client: TcpStream,
    targets: Vec<SocketAddr>,
    next: Arc<AtomicUsize>,
    mut cut: watch::Receiver<bool>,
) {
    // A connection made during a cut waits for the restore, as a SYN would be retransmitted.
    if cut.wait_for(|c| !*c).await.is_err() {
        return;
    }
    let first = next.fetch_add(1, Ordering::Relaxed);
    let mut upstream = None;
    for i in 0..targets.len() {
        if let Ok(stream) = TcpStream::connect(targets[(first + i) % targets.len()]).await {
            upstream = Some(stream);
            break;
        }
    }
    // No target up: the client sees the connection closed.
    let Some(upstream) = upstream else { return };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (up_read, up_write) = upstream.into_split();
    tokio::join!(
        pump(client_read, up_write, cut.clone()),
        pump(up_read, client_write, cut)
    );
}

/// Copies bytes one way; while the link is cut, reads and writes wait.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut cut: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if cut.wait_for(|c| !*c).await.is_err() {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = cut.wait_for(|c| *c) => continue,
        };
        // Bytes read just as the cut began are held until the restore, not lost.
        if cut.wait_for(|c| !*c).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
