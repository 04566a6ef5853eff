//! The hub's command channel to Mosquitto's dynamic-security plugin (D-61): numbered command
//! documents on `$CONTROL/dynamic-security/v1` and their answers, and the start-up
//! reconciliation of the broker's accounts with the registry (D-62).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::QoS;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, oneshot, watch};

use super::{DEADLINE, RECONCILE_BATCH, RECONCILE_PAUSE, dynsec};
use crate::bus::BusError;
use crate::store::SharedStore;

/// The connection to dynamic-security: numbered command documents and their answers.
pub(super) struct Control {
    pub(super) client: AsyncClient,
    /// Whether the hub's subscriptions (the answers' topic among them) are in place.
    pub(super) ready: watch::Receiver<bool>,
    pub(super) waiting: Mutex<HashMap<String, oneshot::Sender<Value>>>,
    /// Prefix of this instance's correlation data: every hub on the broker sees every answer.
    pub(super) prefix: String,
    pub(super) next: AtomicU64,
    pub(super) slots: Semaphore,
}

impl Control {
    /// Sends `commands` as one document and returns one answer per command, in order.
    pub(super) async fn call(&self, mut commands: Vec<Value>) -> Result<Vec<Value>, BusError> {
        let timeout = |what: &str| BusError::Unavailable(format!("no {what} within {DEADLINE:?}"));
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| BusError::Unavailable("stopped".into()))?;
        let mut ready = self.ready.clone();
        tokio::time::timeout(DEADLINE, ready.wait_for(|r| *r))
            .await
            .map_err(|_| timeout("connection to the broker"))?
            .map_err(|_| BusError::Unavailable("stopped".into()))?;
        let id = format!(
            "{}-{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        for command in &mut commands {
            if let Some(map) = command.as_object_mut() {
                map.insert("correlationData".into(), Value::from(id.as_str()));
            }
        }
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id.clone(), tx);
        let body = json!({ "commands": commands }).to_string();
        let sent = tokio::time::timeout(
            DEADLINE,
            self.client
                .publish(dynsec::CONTROL_TOPIC, QoS::AtLeastOnce, false, body),
        )
        .await;
        let answer = match sent {
            Ok(Ok(())) => tokio::time::timeout(DEADLINE, rx)
                .await
                .ok()
                .and_then(Result::ok),
            _ => None,
        };
        self.lock().remove(&id);
        let answer = answer.ok_or_else(|| timeout("dynamic-security answer"))?;
        let responses = answer
            .get("responses")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if responses.len() != commands.len() {
            return Err(BusError::Refused(format!(
                "{} answers to {} commands",
                responses.len(),
                commands.len()
            )));
        }
        Ok(responses)
    }

    /// Like [`Control::call`], failing unless every command [`dynsec::succeeded`].
    pub(super) async fn apply(&self, commands: Vec<Value>) -> Result<(), BusError> {
        let answers = self.call(commands.clone()).await?;
        for (command, answer) in commands.iter().zip(&answers) {
            if !dynsec::succeeded(command, answer) {
                return Err(BusError::Refused(format!(
                    "{}: {}",
                    command["command"].as_str().unwrap_or("?"),
                    answer["error"].as_str().unwrap_or("?")
                )));
            }
        }
        Ok(())
    }

    /// An answer document arrived: hand it to the call that waits for it.
    pub(super) fn deliver(&self, payload: &[u8]) {
        let Ok(answer) = serde_json::from_slice::<Value>(payload) else {
            tracing::warn!("unreadable dynamic-security answer");
            return;
        };
        let id = answer
            .pointer("/responses/0/correlationData")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if let Some(tx) = self.lock().remove(id) {
            let _ = tx.send(answer);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Value>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Makes the broker's accounts follow the registry (D-62): reads the broker, then the registry,
/// plans with [`dynsec::plan`], sends the commands in paced documents.
pub(super) async fn reconcile(control: &Control, store: &SharedStore) -> anyhow::Result<()> {
    let mut clients = Vec::new();
    let mut roles = HashSet::new();
    loop {
        let offset = clients.len();
        let answers = control
            .call(vec![
                json!({"command": "listClients", "verbose": true, "count": 1000, "offset": offset}),
            ])
            .await?;
        let (total, page) = answers
            .first()
            .and_then(dynsec::parse_clients)
            .context("unreadable listClients answer")?;
        let done = page.is_empty();
        clients.extend(page);
        if done || clients.len() as u64 >= total {
            break;
        }
    }
    loop {
        let offset = roles.len();
        let answers = control
            .call(vec![
                json!({"command": "listRoles", "verbose": false, "count": 1000, "offset": offset}),
            ])
            .await?;
        let (total, page) = answers
            .first()
            .and_then(dynsec::parse_roles)
            .context("unreadable listRoles answer")?;
        let done = page.is_empty();
        roles.extend(page);
        if done || roles.len() as u64 >= total {
            break;
        }
    }
    // The registry is read after the broker: a thing created meanwhile then looks missing on
    // the broker (its re-creation fails harmlessly, the account exists), never like a deleted
    // thing whose account and role are removed under a live connection.
    let mut registry = HashMap::new();
    for page in 0.. {
        let (total, things) = store
            .list_things(page, 1000, None)
            .await
            .context("cannot read the registry")?;
        let last = things.is_empty() || (page + 1) * 1000 >= total;
        registry.extend(things.into_iter().map(|t| (t.thing_id, t.enabled)));
        if last {
            break;
        }
    }
    let plan = dynsec::plan(&registry, &clients, &roles);
    if !plan.foreign.is_empty() {
        tracing::warn!(things = ?plan.foreign, "broker accounts named like things but not the hub's; left alone");
    }
    if !plan.without_secret.is_empty() {
        tracing::warn!(count = plan.without_secret.len(), first = ?plan.without_secret.first(), "things had no broker account; created without a secret, they cannot connect until they get a new one");
    }
    for command in &plan.commands {
        tracing::debug!(command = %command["command"], name = %command.get("username").or(command.get("rolename")).unwrap_or(&serde_json::Value::Null), "reconciling");
    }
    let mut failed = 0usize;
    for batch in plan.commands.chunks(RECONCILE_BATCH) {
        let answers = control.call(batch.to_vec()).await?;
        failed += batch
            .iter()
            .zip(&answers)
            .filter(|(c, a)| !dynsec::succeeded(c, a))
            .count();
        tokio::time::sleep(RECONCILE_PAUSE).await;
    }
    tracing::info!(
        things = registry.len(),
        accounts = clients.len(),
        commands = plan.commands.len(),
        failed,
        "broker accounts reconciled with the registry"
    );
    Ok(())
}
