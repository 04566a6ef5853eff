//! The reference hub, started inside the simulator's process for runs that need no setup.

use std::net::SocketAddr;
use std::thread::JoinHandle;

use anyhow::Context;
use clap::Parser;
use iothub_hub::Config;
use tokio::sync::oneshot;

/// Workers of the hub's own runtime, kept apart from the simulator's.
const HUB_WORKERS: usize = 2;

#[derive(Parser)]
struct HubArgs {
    #[command(flatten)]
    config: Config,
}

/// A hub running on its own runtime threads, with a temporary data directory.
pub struct EmbeddedHub {
    /// Where its MQTT listener is.
    pub mqtt_addr: SocketAddr,
    /// Where its HTTP API is.
    pub http_addr: SocketAddr,
    /// Its admin token.
    pub admin_token: String,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    _data: tempfile::TempDir,
}

impl EmbeddedHub {
    /// Starts the hub on loopback with free ports; `extra` are more `iothub` flags.
    pub fn start(extra: &[String]) -> anyhow::Result<EmbeddedHub> {
        let data = tempfile::tempdir().context("cannot create a temporary data directory")?;
        let mut args: Vec<String> = vec![
            "iothub".into(),
            "--mqtt-addr".into(),
            "127.0.0.1:0".into(),
            "--http-addr".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            data.path().display().to_string(),
        ];
        args.extend(extra.iter().cloned());
        let config = HubArgs::try_parse_from(args)
            .context("bad hub flags")?
            .config;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("embedded-hub".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(HUB_WORKERS)
                    .thread_name("hub")
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx
                            .send(Err(anyhow::anyhow!("cannot build the hub runtime: {e}")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match iothub_hub::start(config).await {
                        Ok(hub) => {
                            let _ = ready_tx.send(Ok((
                                hub.mqtt_addr,
                                hub.http_addr,
                                hub.admin_token.clone(),
                            )));
                            let _ = stop_rx.await;
                            hub.shutdown().await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
            })?;
        let (mqtt_addr, http_addr, admin_token) = ready_rx
            .recv()
            .context("the embedded hub thread ended before it was ready")??;
        Ok(EmbeddedHub {
            mqtt_addr,
            http_addr,
            admin_token,
            stop: Some(stop_tx),
            thread: Some(thread),
            _data: data,
        })
    }

    /// Shuts the hub down gracefully and waits for it.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for EmbeddedHub {
    fn drop(&mut self) {
        self.stop_inner();
    }
}
