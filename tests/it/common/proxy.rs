//! A TCP proxy the test controls, to take a database away from the server and give it back
//! without touching the database server itself.

use std::net::SocketAddr;

use tokio::{
    io::copy_bidirectional,
    net::{TcpListener, TcpStream},
    sync::watch,
};

#[derive(Debug)]
pub struct TcpProxy {
    pub addr: SocketAddr,
    up: watch::Sender<bool>,
    stalled: watch::Sender<bool>,
    silent: watch::Sender<bool>,
}

impl TcpProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (up, watcher) = watch::channel(true);
        let (stalled, stall_watcher) = watch::channel(false);
        let (silent, silence_watcher) = watch::channel(false);
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                if *stall_watcher.borrow() {
                    held.push(inbound); // accepted, never answered: a database that hangs
                    continue;
                }
                if !*watcher.borrow() {
                    continue; // dropped: the connection is refused as soon as it is made
                }
                let (mut down, mut quiet) = (watcher.clone(), silence_watcher.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else { return };
                    let silenced = tokio::select! {
                        _ = copy_bidirectional(&mut inbound, &mut outbound) => false,
                        _ = down.wait_for(|up| !*up) => false,
                        _ = quiet.wait_for(|silent| *silent) => true,
                    };
                    if silenced {
                        // Both ends stay open and hear nothing until the silence ends.
                        let _ = quiet.wait_for(|silent| !*silent).await;
                    }
                });
            }
        });
        Self { addr, up, stalled, silent }
    }

    /// Stops passing bytes on open connections, keeping them open, and holds new ones: a
    /// database that goes silent mid-query. [`TcpProxy::restore`] drops the silenced ones.
    pub fn silence(&self) {
        self.stalled.send_replace(true);
        self.silent.send_replace(true);
    }

    /// Drops open connections and holds every new one without an answer: the database hangs.
    pub fn stall(&self) {
        self.stalled.send_replace(true);
        self.cut();
    }

    /// Drops every open connection and every new one until [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    pub fn restore(&self) {
        self.silent.send_replace(false);
        self.stalled.send_replace(false);
        self.up.send_replace(true);
    }
}
