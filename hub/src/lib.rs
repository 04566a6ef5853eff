//! The iothub reference hub: an embedded MQTT 3.1.1 + 5 broker (rmqtt), the thing registry,
//! shadows, direct methods, NTP, presence, OTA jobs, the REST API and storage, behind one entry
//! point.
//!
//! Data flows one way: connection (broker) → router → service → store → publish (bus).
//! [`run`] is the single entry point; `main.rs` only parses flags.
//!
//! One dependency is patched: rmqtt's `rmqtt-net` is built from `vendor/rmqtt-net`, whose only
//! change starts each connection's read and write buffers at 512 bytes instead of 8 KiB each (they
//! grow on demand). rmqtt has no setting for them and they were the largest part of the hub's
//! memory per connected thing; `vendor/README.md` says why and how to upgrade.

pub mod api;
pub mod auth;
pub mod broker;
pub mod bus;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod configurations;
pub mod console;
pub mod edge;
pub mod external;
pub mod guard;
pub mod jobs;
pub mod logging;
pub mod method;
pub mod metrics;
pub mod ntp;
pub mod ota;
pub mod presence;
pub mod provision;
pub mod query;
pub mod router;
pub mod routes;
pub mod shadow;
pub mod shard;
pub mod store;
pub mod sync;
pub mod things;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::task::JoinHandle;

pub use config::Config;

use broker::{BrokerConfig, EmbeddedBroker};

/// How often refused connections are summarized in the log.
const REFUSAL_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
use bus::Bus;

/// A hub that is serving; returned by [`start`].
pub struct RunningHub {
    /// Where MQTT listens.
    pub mqtt_addr: SocketAddr,
    /// Where HTTP listens.
    pub http_addr: SocketAddr,
    /// Where every MQTT listener listens (TLS and WebSocket ones when configured).
    pub mqtt_addrs: broker::BrokerAddrs,
    /// Whether `http_addr` serves HTTPS.
    pub https: bool,
    /// The admin bearer token in force.
    pub admin_token: String,
    broker: BrokerSide,
    http: JoinHandle<()>,
    http_stop: tokio::sync::oneshot::Sender<()>,
    router_stops: Vec<tokio::sync::oneshot::Sender<()>>,
    routers: Vec<JoinHandle<()>>,
    presence: JoinHandle<()>,
    /// Told when the hub stops, so closing every connection writes no presence per thing.
    live: presence::Presence,
    refusal_reporter: JoinHandle<()>,
    /// Reloads the TLS certificate on SIGHUP, when TLS is served.
    tls_reloader: Option<JoinHandle<()>>,
    ota: ota::OtaService,
    ota_task: ota::OtaTask,
    /// Stops the fleet engines (configurations, jobs).
    engines_stop: tokio::sync::watch::Sender<bool>,
    configurations_task: JoinHandle<()>,
    jobs_task: JoinHandle<()>,
    /// Registry sync (S-13), when configured.
    sync_task: Option<JoinHandle<()>>,
    /// This instance's partition leases, when it is one of several (D-73).
    member_stop: tokio::sync::oneshot::Sender<()>,
    member_task: Option<JoinHandle<()>>,
    multi_instance: bool,
    shadows: shadow::service::ShadowService,
    routes: routes::Routes,
    store: store::SharedStore,
}

/// The broker the hub runs on, made before the services (they need its bus) and started after.
enum Prepared {
    Embedded(broker::PreparedBroker),
    External(Box<external::Prepared>),
}

/// The broker the hub runs on: its own, or an external one it joined (D-60).
enum BrokerSide {
    Embedded(EmbeddedBroker),
    External(external::ExternalBroker),
}

impl BrokerSide {
    fn local_addr(&self) -> SocketAddr {
        match self {
            BrokerSide::Embedded(b) => b.local_addr(),
            BrokerSide::External(b) => b.local_addr(),
        }
    }

    /// Where every listener is bound; on an external broker the hub runs none of its own.
    fn addrs(&self) -> broker::BrokerAddrs {
        match self {
            BrokerSide::Embedded(b) => b.addrs(),
            BrokerSide::External(b) => broker::BrokerAddrs {
                mqtt: b.local_addr(),
                mqtts: None,
                ws: None,
                wss: None,
            },
        }
    }

    async fn stop(self) {
        match self {
            BrokerSide::Embedded(b) => b.stop().await,
            BrokerSide::External(b) => b.stop().await,
        }
    }
}

/// Serves until `shutdown` completes, then shuts down gracefully.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let hub = start(config).await?;
    shutdown.await;
    tracing::info!("shutting down");
    hub.shutdown().await;
    Ok(())
}

/// Starts every part of the hub and returns once both listeners accept connections.
pub async fn start(config: Config) -> anyhow::Result<RunningHub> {
    let limits = config.limits();
    // Before anything is opened: a TLS listener without usable files is a start-up error.
    let tls = config
        .tls_files()?
        .map(tls::HubTls::load)
        .transpose()
        .context("TLS")?;
    let url = config.database_url();
    let store = store::open(&url)
        .await
        .with_context(|| format!("cannot open the database {url}"))?;
    // Before any listener: from here on every registry change gets its sync task (S-13.4).
    sync::set_push_mode(&store, config.registry_sync.as_ref()).await?;
    let external_config = external::ExternalConfig::from_config(&config)?;
    // Several instances share a broker and a database by leasing partitions of the things
    // (D-73); with the embedded broker every device is this instance's own.
    let member = match &external_config {
        Some(external) => cluster::Member::join(store.clone(), external.instance.clone()).await?,
        None => None,
    };
    let ownership = member
        .as_ref()
        .map_or_else(cluster::Ownership::everything, cluster::Member::ownership);
    // Presence in the registry is reset by the first instance only: the others' things are
    // connected.
    if member.as_ref().is_none_or(cluster::Member::alone) {
        store
            .mark_all_disconnected(clock::now_ms())
            .await
            .context("cannot reset presence in the registry")?;
    }
    let metrics = metrics::Metrics::new();
    let committer = store::commit::GroupCommitter::spawn_with_metrics(
        store.clone(),
        config.commit_batch.max(1),
        8192,
        Some(metrics.clone()),
    );
    let (presence, presence_queue) = presence::Presence::new(metrics.clone());
    // Routes to other systems (S-14): their outboxes are in the store; delivery starts now.
    let routes = routes::Routes::start(
        store.clone(),
        metrics.clone(),
        &config.routes,
        ownership.clone(),
    )
    .await
    .context("routes")?;
    // Either the embedded broker or an external one (D-60); the services see only the bus.
    let (prepared, inner_bus): (Prepared, Arc<dyn Bus>) = match external_config {
        Some(external) => {
            anyhow::ensure!(
                config.mqtts_addr.is_none()
                    && config.ws_addr.is_none()
                    && config.wss_addr.is_none(),
                "--mqtts-addr, --ws-addr and --wss-addr are listeners of the embedded broker; \
                     with --broker, devices connect to that broker, so set its TLS and WebSocket \
                     listeners up there"
            );
            let prepared = external::Prepared::new(external)?;
            let bus = prepared.bus();
            (Prepared::External(Box::new(prepared)), bus)
        }
        None => {
            let prepared = EmbeddedBroker::prepare().await;
            let bus = Arc::new(prepared.bus(metrics.clone()));
            (Prepared::Embedded(prepared), bus)
        }
    };
    // The console sees what the hub publishes about things through a tee on the bus.
    let (bus, console_events) = console::TeeBus::wrap(inner_bus);
    // What the hub publishes about things (shadow documents, events) is offered to the routes.
    let bus: Arc<dyn Bus> = routes::RoutesBus::wrap(bus, routes.clone());
    let shards = config
        .dispatch_shards
        .map_or_else(shard::default_shards, usize::from)
        .max(1);
    tracing::info!(shards, "dispatching device requests");
    let shadows = shadow::service::ShadowService::spawn_for(
        shards,
        store.clone(),
        committer,
        bus.clone(),
        limits,
        if config.tio_compat {
            shadow::DeviceUpdates::Tio
        } else {
            shadow::DeviceUpdates::Spec
        },
        Some(metrics.clone()),
        ownership.clone(),
    );
    let methods = method::Methods::new(bus.clone());
    let (ota, ota_task) = ota::OtaService::spawn_led(store.clone(), bus.clone(), ownership.clone());
    let credentials = Arc::new(auth::CredentialCache::new(100_000));

    let (router_handle, router_queues) = router::channel(shards);
    let services = Arc::new(router::Services {
        shadows: shadows.clone(),
        methods: methods.clone(),
        ota: ota.clone(),
        bus: bus.clone(),
        metrics: metrics.clone(),
    });
    let (router_stops, routers) = router_queues
        .into_iter()
        .map(|queue| {
            let (stop, stop_rx) = tokio::sync::oneshot::channel();
            let task = tokio::spawn(router::run(queue, stop_rx, services.clone()));
            (stop, task)
        })
        .unzip();
    let presence_task = tokio::spawn(presence::run(presence_queue, bus.clone(), store.clone()));

    let authenticator = edge::authn::Authenticator::new(
        store.clone(),
        credentials.clone(),
        config.service_users.iter().cloned().collect(),
    );
    let fds = guard::fds::raise_nofile_limit();
    let budget = guard::fds::Budget::plan(&config, fds);
    let mqtt_refusals =
        guard::refusals::RefusalLog::counted("MQTT connections", "mqtt", metrics.clone());
    let http_refusals =
        guard::refusals::RefusalLog::counted("HTTP connections", "http", metrics.clone());
    let refusal_reporter = mqtt_refusals.clone().spawn_reporter(REFUSAL_LOG_EVERY);
    let provisioner = provision::Provisioner::new(
        store.clone(),
        bus.clone(),
        things::Things::new(
            store.clone(),
            bus.clone(),
            shadows.clone(),
            credentials.clone(),
            metrics.clone(),
        ),
        credentials.clone(),
        limits,
        metrics.clone(),
    );
    let events = Arc::new(
        edge::HubEvents::new(
            authenticator,
            presence.clone(),
            router_handle,
            ota.clone(),
            metrics.clone(),
            mqtt_refusals.clone(),
        )
        .with_provisioner(provisioner.clone())
        .with_routes(routes.clone(), matches!(prepared, Prepared::Embedded(_))),
    );
    // A broker's HTTP authenticator asks the same CONNECT decision the embedded one does (D-57).
    let broker_auth = config
        .broker_auth_token
        .clone()
        .map(|token| api::broker_auth::BrokerAuth::new(token, events.clone()));
    let broker = match prepared {
        Prepared::External(prepared) => {
            BrokerSide::External(prepared.start(events, store.clone(), ownership.clone()))
        }
        Prepared::Embedded(prepared) => BrokerSide::Embedded(
            prepared
                .start(
                    &BrokerConfig {
                        addr: config.mqtt_addr,
                        max_connections: budget.mqtt_connections,
                        max_packet_size: 1024 * 1024,
                        handshake_timeout: std::time::Duration::from_secs(config.handshake_timeout),
                        max_connect_size: config.max_connect_size,
                        max_pending: budget.mqtt_pending,
                        max_pending_per_addr: usize::try_from(config.max_pending_connects_per_addr)
                            .unwrap_or(usize::MAX),
                        max_subscriptions: limits.max_subscriptions as usize,
                        mqtts_addr: config.mqtts_addr,
                        ws_addr: config.ws_addr,
                        wss_addr: config.wss_addr,
                        tls: tls.as_ref().map(|t| t.mqtt.clone()),
                    },
                    events,
                    mqtt_refusals,
                    metrics.clone(),
                )
                .await?,
        ),
    };

    let admin_token = config
        .admin_token
        .clone()
        .unwrap_or_else(auth::generate_secret);
    let things = things::Things::new(
        store.clone(),
        bus.clone(),
        shadows.clone(),
        credentials.clone(),
        metrics.clone(),
    );
    let configurations = configurations::Configurations::new(store.clone(), things.changes());
    // The fleet engines run on the leader instance only (D-73), a new one per leadership.
    let (engines_stop, engines_stop_rx) = tokio::sync::watch::channel(false);
    let configurations_task = tokio::spawn({
        let (store, shadows, configurations, metrics) = (
            store.clone(),
            shadows.clone(),
            configurations.clone(),
            metrics.clone(),
        );
        let engine_config = configurations::engine::EngineConfig {
            rate: config.configuration_rate,
            sweep: std::time::Duration::from_millis(config.configuration_sweep_ms),
        };
        cluster::while_leader(ownership.clone(), engines_stop_rx.clone(), move |stop| {
            configurations::engine::Engine::new(
                store.clone(),
                shadows.clone(),
                configurations.clone(),
                metrics.clone(),
                engine_config,
            )
            .run(stop)
        })
    });
    let jobs = jobs::Jobs::new(store.clone());
    let jobs_task = tokio::spawn({
        let executor = jobs::exec::Executor {
            methods: methods.clone(),
            shadows: shadows.clone(),
            things: things.clone(),
            bus: bus.clone(),
        };
        let (store, jobs, metrics) = (store.clone(), jobs.clone(), metrics.clone());
        let engine_config = jobs::engine::EngineConfig {
            retention: std::time::Duration::from_secs(config.job_retention_hours * 3600),
        };
        cluster::while_leader(ownership.clone(), engines_stop_rx.clone(), move |stop| {
            jobs::engine::Engine::new(
                store.clone(),
                executor.clone(),
                jobs.clone(),
                metrics.clone(),
                engine_config,
            )
            .run(stop)
        })
    });
    // Registry sync (S-13) runs on the leader instance only (D-76), like the fleet engines.
    let registry_sync = sync::prepare(
        config.registry_sync.as_ref(),
        sync::Services {
            store: store.clone(),
            things: things.clone(),
            shadows: shadows.clone(),
            metrics: metrics.clone(),
        },
    )?;
    let sync_handle = registry_sync.as_ref().map(sync::Prepared::handle);
    let sync_task = registry_sync.map(|prepared| {
        tokio::spawn(cluster::while_leader(
            ownership.clone(),
            engines_stop_rx.clone(),
            move |stop| prepared.clone().run(stop),
        ))
    });
    let (member_stop, member_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let multi_instance = member.is_some();
    let member_task = member.map(|member| {
        tokio::spawn(member.run(async move {
            let _ = member_stop_rx.await;
        }))
    });
    let state = api::AppState::new(
        store.clone(),
        shadows.clone(),
        methods,
        things,
        limits,
        admin_token.clone(),
        metrics,
    )
    .with_ota(ota.clone())
    .with_provisioner(provisioner)
    .with_configurations(configurations)
    .with_jobs(jobs)
    .with_sync(sync_handle)
    .with_routes(routes.clone())
    .with_ownership(ownership.clone())
    .with_scoped_tokens(&config.api_tokens)
    .with_basic_auth(config.tio_compat)
    .with_console_events(console_events);
    let state = match broker_auth {
        Some(auth) => state.with_broker_auth(auth),
        None => state,
    };
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", config.http_addr))?;
    let http_addr = listener.local_addr()?;
    let (http_stop, http_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let app = api::router(state);
    let http_config = api::serve::HttpServerConfig {
        header_timeout: std::time::Duration::from_secs(config.http_header_timeout),
        read_timeout: std::time::Duration::from_secs(config.http_read_timeout),
        request_timeout: std::time::Duration::from_secs(config.http_request_timeout),
        max_connections: budget.http_connections,
        max_connections_per_addr: usize::try_from(config.max_http_connections_per_addr)
            .unwrap_or(usize::MAX),
    };
    let https = match (&tls, config.https) {
        (Some(tls), true) => Some(tokio_rustls::TlsAcceptor::from(tls.https.clone())),
        _ => None,
    };
    let serves_https = https.is_some();
    let tls_reloader = tls.map(|tls| tokio::spawn(tls_reload_on_sighup(tls)));
    let http = tokio::spawn(async move {
        api::serve::serve(
            listener,
            https,
            app,
            http_config,
            http_refusals,
            async move {
                let _ = http_stop_rx.await;
            },
        )
        .await;
    });

    Ok(RunningHub {
        mqtt_addr: broker.local_addr(),
        http_addr,
        mqtt_addrs: broker.addrs(),
        https: serves_https,
        admin_token,
        broker,
        http,
        http_stop,
        router_stops,
        routers,
        presence: presence_task,
        live: presence.clone(),
        refusal_reporter,
        tls_reloader,
        ota,
        ota_task,
        engines_stop,
        configurations_task,
        jobs_task,
        sync_task,
        member_stop,
        member_task,
        multi_instance,
        shadows,
        routes,
        store,
    })
}

impl RunningHub {
    /// The machine-readable line that says where every listener is (printed by `iothub` and by
    /// the simulator's embedded hub, parsed by `iothub-launch`).
    pub fn ready_line(&self) -> iothub_launch::ReadyLine {
        let mut ready = iothub_launch::ReadyLine::new(self.mqtt_addr, self.http_addr);
        ready.mqtts = self.mqtt_addrs.mqtts;
        ready.mqtt_ws = self.mqtt_addrs.ws;
        ready.mqtt_wss = self.mqtt_addrs.wss;
        ready.https = self.https;
        ready
    }

    /// Stops accepting, finishes in-flight updates, flushes storage, closes.
    pub async fn shutdown(self) {
        let _ = self.http_stop.send(());
        let _ = self.http.await;
        self.live.begin_shutdown();
        self.broker.stop().await;
        for stop in self.router_stops {
            let _ = stop.send(());
        }
        for router in self.routers {
            let _ = router.await;
        }
        self.ota.stop().await;
        self.ota_task.join().await;
        let _ = self.engines_stop.send(true);
        let _ = self.configurations_task.await;
        let _ = self.jobs_task.await;
        if let Some(task) = self.sync_task {
            let _ = task.await;
        }
        self.shadows.shutdown().await;
        // What is not delivered yet stays in the outboxes for the next start.
        self.routes.stop();
        self.refusal_reporter.abort();
        if let Some(reloader) = self.tls_reloader {
            reloader.abort();
        }
        self.presence.abort();
        let _ = self.presence.await;
        // The other instances take this one's partitions at their next round.
        let _ = self.member_stop.send(());
        if let Some(task) = self.member_task {
            let _ = task.await;
        }
        // Instead of one write per connection closed above (see `Presence::begin_shutdown`).
        // With several instances the things stay connected to the broker: nothing to record.
        if !self.multi_instance
            && let Err(e) = self.store.mark_all_disconnected(clock::now_ms()).await
        {
            tracing::warn!(error = %e, "cannot record the things as disconnected at shutdown");
        }
        self.store.close().await;
    }
}

/// Reads the TLS certificate and key again on each SIGHUP (D-68). New handshakes get the new
/// ones; connections already open keep theirs. A reload that fails keeps the old certificate.
async fn tls_reload_on_sighup(tls: tls::HubTls) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; TLS certificates will not be reloaded");
                return;
            }
        };
        while hangups.recv().await.is_some() {
            match tls.reload() {
                Ok(()) => tracing::info!(
                    "SIGHUP: TLS certificate and key reloaded (and the client CA, if set)"
                ),
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: TLS reload failed; the previous certificate stays in use");
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tls;
        std::future::pending::<()>().await;
    }
}
