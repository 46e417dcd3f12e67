//! The ceiling: a bare UDP echo server in-process.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;

/// A bare UDP echo server on loopback, built like the mboard driver (receive loops on a
/// multi-threaded runtime sharing one socket) so the comparison isolates what mboard does
/// per request. It parses nothing and stores nothing: the ceiling for every scenario.
pub(crate) fn start(threads: usize) -> io::Result<SocketAddr> {
    let threads = threads.max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    let std_socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    std_socket.set_nonblocking(true)?;
    let addr = std_socket.local_addr()?;
    // Registering the socket with the reactor needs the runtime's context.
    let socket = {
        let _entered = runtime.enter();
        Arc::new(UdpSocket::from_std(std_socket)?)
    };
    // The server lives as long as the process: nothing stops it before the bench exits.
    std::thread::spawn(move || runtime.block_on(serve(socket, 2 * threads)));
    Ok(addr)
}

/// `loops` receive loops answering every datagram with itself.
async fn serve(socket: Arc<UdpSocket>, loops: usize) {
    let loops: Vec<_> = (0..loops)
        .map(|_| {
            let socket = socket.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                    let _ = socket.send_to(&buf[..n], from).await;
                }
            })
        })
        .collect();
    for l in loops {
        let _ = l.await;
    }
}
