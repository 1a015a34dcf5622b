//! A TCP proxy a test can cut and restore, to take one service away from one client without
//! touching the shared server (other tests keep running against it); and that can delay what it
//! forwards, to put the service at a chosen distance from that client (a remote database).
//!
//! While cut, the proxy closes every connection it carries and refuses new ones, which is what a
//! client sees when a database or broker goes down or a network partition happens.
//!
//! A delayed proxy ([`TcpProxy::start_delayed`]) forwards every chunk it reads, in each
//! direction, a fixed time after it read it: a request and its answer each take that long more,
//! so a client's round trips take twice that long more. Each direction reads chunks and stamps
//! them on one thread and writes each when its time comes on another, with the chunks in flight
//! queued in between in order: bytes are never reordered, and throughput is not limited to one
//! chunk per round trip. Threads rather than tasks because Tokio's timers round up to whole
//! milliseconds, which would turn a 0.5 ms delay into about 1 ms; a thread's sleep is good to tens
//! of microseconds. The delay applies to the bytes, not to the TCP handshake or acknowledgements,
//! which the proxy's own sockets answer at once.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Bytes read from a socket at once by a delayed proxy.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks a delayed proxy holds per direction: at most 64 MiB, and far more than a delay of
/// milliseconds needs at loopback speeds; beyond it the reader waits, and TCP pushes back.
const CHUNKS_IN_FLIGHT: usize = 1024;

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub struct TcpProxy {
    address: SocketAddr,
    up: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards every connection to `target` (`host:port`).
    pub async fn start(target: &str) -> std::io::Result<Self> {
        Self::start_with(target, None).await
    }

    /// As [`TcpProxy::start`], and every chunk is forwarded `one_way` after it arrived, in each
    /// direction: `2 * one_way` of added round-trip time. A zero delay forwards through the same
    /// threads and queues with no wait, the baseline to compare delays with.
    pub async fn start_delayed(target: &str, one_way: Duration) -> std::io::Result<Self> {
        Self::start_with(target, Some(one_way)).await
    }

    async fn start_with(target: &str, delay: Option<Duration>) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let up = Arc::new(AtomicBool::new(true));
        let (generation, _) = watch::channel(0_u64);
        let target = target.to_owned();
        let task = {
            let up = Arc::clone(&up);
            let generation = generation.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        // Refused: the client sees the connection close at once.
                        drop(client);
                        continue;
                    }
                    let cut = generation.subscribe();
                    let target = target.clone();
                    match delay {
                        None => tokio::spawn(carry(client, target, cut)),
                        Some(one_way) => tokio::spawn(carry_delayed(client, target, one_way, cut)),
                    };
                }
            })
        };
        Ok(Self {
            address,
            up,
            generation,
            task,
        })
    }

    /// The proxy's `host:port`.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// Closes every connection and refuses new ones until [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

/// One connection, forwarded as it comes, until either side closes it or the proxy is cut.
async fn carry(client: TcpStream, target: String, mut cut: watch::Receiver<u64>) {
    let Ok(server) = TcpStream::connect(&target).await else {
        return;
    };
    let (mut client, mut server) = (client, server);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = cut.changed() => {}
    }
}

/// One connection, each direction delayed by `one_way`, until both sides closed it, one failed,
/// or the proxy is cut; then both sockets are shut down, which ends the four threads.
async fn carry_delayed(
    client: TcpStream,
    target: String,
    one_way: Duration,
    mut cut: watch::Receiver<u64>,
) {
    let Ok(server) = TcpStream::connect(&target).await else {
        return;
    };
    let (Ok(client), Ok(server)) = (blocking(client), blocking(server)) else {
        return;
    };
    let (finished_tx, mut finished) = mpsc::unbounded_channel();
    let mut directions = 0;
    for (from, to) in [(&client, &server), (&server, &client)] {
        let started = from
            .try_clone()
            .and_then(|from| Ok((from, to.try_clone()?)))
            .and_then(|(from, to)| forward_delayed(from, to, one_way, finished_tx.clone()));
        if started.is_ok() {
            directions += 1;
        } else {
            // Not both directions: close what there is.
            directions = 0;
            break;
        }
    }
    drop(finished_tx);
    while directions > 0 {
        tokio::select! {
            _ = cut.changed() => break,
            outcome = finished.recv() => match outcome {
                // This direction's source closed and its end was passed on (a half-close).
                Some(Ok(())) => directions -= 1,
                Some(Err(_)) | None => break,
            },
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}

/// A Tokio socket as a blocking std one, without Nagle's algorithm: each chunk goes out when its
/// time comes, not held for an acknowledgement (which a peer may delay by 40 ms).
fn blocking(stream: TcpStream) -> std::io::Result<std::net::TcpStream> {
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Starts the two threads of one direction: one reads chunks from `from` and stamps each with
/// the time it is due, one writes each to `to` when that time comes and, once `from` has ended
/// and everything read is written, shuts down `to`'s writing side. The outcome (an error of
/// either, or the end passed on) goes to `finished`.
fn forward_delayed(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    one_way: Duration,
    finished: mpsc::UnboundedSender<std::io::Result<()>>,
) -> std::io::Result<()> {
    let (chunks, due) = std_mpsc::sync_channel::<(Instant, Vec<u8>)>(CHUNKS_IN_FLIGHT);
    let written = finished.clone();
    std::thread::Builder::new()
        .name("proxy-write".to_owned())
        .spawn(move || {
            let outcome = (|| {
                for (at, chunk) in due {
                    let now = Instant::now();
                    if at > now {
                        std::thread::sleep(at - now);
                    }
                    to.write_all(&chunk)?;
                }
                to.shutdown(Shutdown::Write)
            })();
            let _ = written.send(outcome);
        })?;
    std::thread::Builder::new()
        .name("proxy-read".to_owned())
        .spawn(move || {
            let mut buffer = vec![0_u8; CHUNK_BYTES];
            loop {
                match from.read(&mut buffer) {
                    // The end: dropping `chunks` lets the writer finish and pass it on.
                    Ok(0) => break,
                    Ok(n) => {
                        if chunks
                            .send((Instant::now() + one_way, buffer[..n].to_vec()))
                            .is_err()
                        {
                            // The writer failed and said so.
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = finished.send(Err(e));
                        break;
                    }
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::TcpProxy;

    /// A loopback server that sends back what it reads, and closes its side after the client's.
    async fn echo_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                    let _ = write.shutdown().await;
                });
            }
        });
        address
    }

    #[tokio::test]
    async fn a_round_trip_takes_at_least_the_added_rtt() {
        let proxy = TcpProxy::start_delayed(&echo_server().await, Duration::from_millis(15))
            .await
            .unwrap();
        let mut stream = TcpStream::connect(proxy.address()).await.unwrap();
        for round in 0..3_u8 {
            let started = Instant::now();
            stream.write_all(&[round; 10]).await.unwrap();
            let mut answer = [0_u8; 10];
            stream.read_exact(&mut answer).await.unwrap();
            let took = started.elapsed();
            assert_eq!(answer, [round; 10]);
            assert!(took >= Duration::from_millis(30), "round trip in {took:?}");
        }
    }

    /// Megabytes both ways at once, written in uneven pieces, come back whole and in order; the
    /// client's end of writing reaches the server, and the server's end the client.
    #[tokio::test]
    async fn bytes_arrive_intact_and_in_order_under_load() {
        let proxy = TcpProxy::start_delayed(&echo_server().await, Duration::from_millis(2))
            .await
            .unwrap();
        let sent: Vec<u8> = (0..8_000_000_u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let stream = TcpStream::connect(proxy.address()).await.unwrap();
        let (mut read, mut write) = stream.into_split();
        let writer = {
            let sent = sent.clone();
            tokio::spawn(async move {
                let mut at = 0;
                let mut size = 1;
                while at < sent.len() {
                    let end = (at + size).min(sent.len());
                    write.write_all(&sent[at..end]).await.unwrap();
                    at = end;
                    size = size * 7 % 100_003 + 1;
                }
                write.shutdown().await.unwrap();
            })
        };
        let mut received = Vec::with_capacity(sent.len());
        tokio::time::timeout(Duration::from_secs(60), read.read_to_end(&mut received))
            .await
            .expect("the echo ends")
            .unwrap();
        writer.await.unwrap();
        assert_eq!(received.len(), sent.len());
        assert!(received == sent, "the bytes differ");
    }

    /// Cut and restore work on a delayed proxy as on a plain one.
    #[tokio::test]
    async fn a_delayed_proxy_can_be_cut_and_restored() {
        let proxy = TcpProxy::start_delayed(&echo_server().await, Duration::from_millis(1))
            .await
            .unwrap();
        let mut stream = TcpStream::connect(proxy.address()).await.unwrap();
        stream.write_all(b"ping").await.unwrap();
        let mut answer = [0_u8; 4];
        stream.read_exact(&mut answer).await.unwrap();
        proxy.cut();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
            .await
            .expect("the cut closes the connection");
        assert!(closed.is_err() || rest.is_empty());
        proxy.restore();
        let mut stream = TcpStream::connect(proxy.address()).await.unwrap();
        stream.write_all(b"pong").await.unwrap();
        stream.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"pong");
    }
}
