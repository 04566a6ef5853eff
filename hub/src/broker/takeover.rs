//! Session takeover (S-1.4, MQTT 5 §3.1.4): a CONNECT with the client identifier of a live or
//! ending session is never refused because that session is still going away.
//!
//! rmqtt takes over a session by sending its task a kick and awaiting the answer; a task that is
//! already ending (it has read the client's DISCONNECT or end of stream) drops the kick
//! unanswered, and rmqtt then refuses the new CONNECT with "server unavailable" (3 / 0x88). A
//! client that reconnects at once hits exactly that window. So before rmqtt's own kick, the hub
//! makes sure the old session's task is either gone, or parked in rmqtt's offline loop (which
//! always answers), or finished with its entry left for rmqtt to collect.

use std::time::Duration;

use rmqtt::context::ServerContext;
use rmqtt::session::Session;
use rmqtt::types::{ConnectInfo, Message};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Longest time spent settling a previous connection of the same client.
const SETTLE_LIMIT: Duration = Duration::from_millis(500);

/// Pause between two looks at a session that is still ending.
const SETTLE_POLL: Duration = Duration::from_millis(5);

/// Settles a previous connection of this client before rmqtt takes it over.
///
/// A session the new CONNECT will not resume keeps no state worth handing over: the hub kicks
/// and removes it here (rmqtt then finds none). A session the CONNECT resumes (Clean Start 0
/// and a persistent old session, see [`is_persistent`]) must reach rmqtt with its state: the
/// hub ends its connection with a kick that removes nothing and waits until its task has
/// finished, so rmqtt's kick collects it from the registry instead of asking a task that may be
/// gone. Bounded by [`SETTLE_LIMIT`]; after that rmqtt decides as before.
pub(super) async fn settle_previous_session(scx: &ServerContext, info: &ConnectInfo) {
    let id = info.id();
    let resume = !info.clean_start();
    let deadline = Instant::now() + SETTLE_LIMIT;
    while Instant::now() < deadline {
        let entry = scx.extends.shared().await.entry(id.clone());
        let Some(old) = entry.session() else { return };
        let Some(tx) = entry.tx().filter(|tx| !tx.is_closed()) else {
            // The old task has finished: rmqtt's kick removes the entry without asking it.
            return;
        };
        if resume && is_persistent(&old).await {
            // Ask the old task to end without cleaning its session; it answers from its online
            // or offline loop, or drops the question while it is ending anyway.
            let (answer_tx, answer_rx) = oneshot::channel();
            if tx
                .unbounded_send(Message::Kick(answer_tx, id.clone(), false, false))
                .is_ok()
            {
                let _ = tokio::time::timeout_at(deadline, answer_rx).await;
            }
            wait_until_closed(&tx, deadline).await;
            continue;
        }
        let kicked = match entry.try_lock().await {
            Ok(mut locked) => locked.kick(true, true, false).await.is_ok(),
            Err(_) => false,
        };
        if kicked {
            return;
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

/// Waits (bounded) until the session task behind `tx` has dropped its receiver.
async fn wait_until_closed(tx: &rmqtt::types::Tx, deadline: Instant) {
    while !tx.is_closed() && Instant::now() < deadline {
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

/// Whether a session outlives its connection: MQTT 3.1.1 by Clean Session 0 (§3.1.2.4); MQTT 5
/// by a Session Expiry Interval above 0, whatever its Clean Start (§3.1.2.11.2: Clean Start
/// only says whether to discard an existing session at connect time), the DISCONNECT's
/// interval replacing the CONNECT's (§3.14.2.2.2).
async fn is_persistent(session: &Session) -> bool {
    let Ok(info) = session.connect_info().await else {
        return false;
    };
    match info.as_ref() {
        ConnectInfo::V3(_, connect) => !connect.clean_session,
        ConnectInfo::V5(..) => {
            let disconnect = session.disconnect().await.ok().flatten();
            !session
                .fitter
                .session_expiry_interval(disconnect.as_ref())
                .is_zero()
        }
    }
}
