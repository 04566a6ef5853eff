//! One behavioural suite for every [`Store`] implementation (SQLite and PostgreSQL): each case is
//! written once, against `SharedStore`, and runs once per backend (`sqlite::<case>`,
//! `postgres::<case>`). A backend is correct when it passes all of them; a new backend adds one
//! line to [`suite!`].
//!
//! PostgreSQL is real: one server per test binary (`iothub_launch::postgres`), a fresh database per
//! test. SQLite gets a fresh file per test.
#![allow(clippy::unwrap_used, dead_code, missing_docs)]

use std::sync::Arc;

use iothub_hub::store::fault::Faults;
use iothub_hub::store::postgres::PgStore;
use iothub_hub::store::sqlite::SqliteStore;
use iothub_hub::store::{NewThing, ShadowWrite, SharedStore};
use serde_json::{Map, Value};

use iothub_launch::postgres as postgres_server;

mod certs;
mod configurations;
mod enroll;
mod health;
mod jobs;
mod leases;
mod ota;
mod query;
mod race;
mod routes;
mod shadows;
mod sync;
mod things;

/// The store implementations under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

/// A fresh, empty store of one kind, with programmable write faults.
pub struct Fixture {
    pub kind: Kind,
    pub url: String,
    pub faults: Arc<Faults>,
    pub store: SharedStore,
    _dir: Option<tempfile::TempDir>,
}

impl Fixture {
    pub async fn new(kind: Kind) -> Fixture {
        let (url, dir) = match kind {
            Kind::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}/hub.db", dir.path().display());
                (url, Some(dir))
            }
            Kind::Postgres => (postgres_server::shared().fresh_database(), None),
        };
        let faults = Faults::programmed();
        let store = open(kind, &url, Some(Arc::clone(&faults))).await;
        Fixture {
            kind,
            url,
            faults,
            store,
            _dir: dir,
        }
    }

    /// Another handle on the same database, as a second hub instance (or a restarted one) has.
    pub async fn open_again(&self) -> SharedStore {
        open(self.kind, &self.url, None).await
    }
}

pub async fn open(kind: Kind, url: &str, faults: Option<Arc<Faults>>) -> SharedStore {
    let faults = faults.unwrap_or_else(Faults::programmed);
    match kind {
        Kind::Sqlite => Arc::new(SqliteStore::open_with_faults(url, faults).await.unwrap()),
        Kind::Postgres => Arc::new(PgStore::open_with_faults(url, faults).await.unwrap()),
    }
}

pub fn tags(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

pub fn new_thing(id: &str) -> NewThing {
    NewThing {
        thing_id: id.to_owned(),
        password_hash: format!("$argon2id$fake${id}"),
        tags: tags(serde_json::json!({"site": "b1"})),
        enabled: true,
    }
}

/// A write of `thing`/`name` from `expected` to `expected + 1`.
pub fn write(thing: &str, name: &str, expected: u64) -> ShadowWrite {
    ShadowWrite {
        thing_id: thing.to_owned(),
        name: name.to_owned(),
        expected_version: expected,
        new_version: expected + 1,
        body: format!(r#"{{"state":{{"reported":{{"v":{}}}}}}}"#, expected + 1),
        updated_at: 1000 + expected,
        expected_body: None,
    }
}

/// `mod $backend { <one test per case> }` for every backend.
macro_rules! suite {
    ($($module:ident :: $case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    crate::$module::$case(crate::Fixture::new(crate::Kind::Sqlite).await).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    crate::$module::$case(crate::Fixture::new(crate::Kind::Postgres).await).await
                }
            )*
        }
    };
}

suite!(
    things::create_get_and_duplicate,
    things::batch_create_with_duplicates,
    things::password_hash_and_enabled_flag,
    things::list_pages_filters_and_caps,
    things::byte_order_of_ids,
    things::replace_tags_is_compare_and_swap,
    things::presence_and_restart_reset,
    things::data_survives_close_and_reopen,
    shadows::cas_get_names_and_delete,
    shadows::batch_fails_only_bad_writes,
    shadows::delete_thing_cascades,
    shadows::group_commit_keeps_fifo_and_batches,
    query::filters_pages_and_counts,
    query::comparisons_follow_d32,
    query::order_by_follows_d32,
    ota::jobs_tasks_and_transitions_round_trip,
    health::failed_writes_are_reported_and_health_recovers,
    health::closed_store_is_unavailable,
    race::two_handles_never_accept_one_version_twice,
    race::two_handles_race_tag_replacements,
    race::a_write_built_on_a_lost_one_does_not_land,
    race::rewrite_reads_and_writes_in_one_transaction,
    enroll::enrollments_round_trip,
    enroll::provisioning_counts_uses_and_rekeys,
    enroll::failed_provisioning_leaves_nothing,
    enroll::provisioning_writes_the_initial_shadow,
    configurations::configurations_and_records_round_trip,
    configurations::failed_configuration_writes_store_nothing,
    jobs::jobs_and_things_round_trip,
    jobs::failed_job_writes_store_nothing,
    leases::partitions_are_leased_to_one_instance_at_a_time,
    sync::tasks_follow_registry_changes,
    sync::retries_and_outcomes_are_durable,
    sync::failed_writes_leave_no_task,
    sync::events_filter_and_prune,
    sync::batch_removals_write_their_tasks,
    routes::outbox_dead_letters_and_history_round_trip,
    routes::failed_outbox_writes_store_nothing,
    certs::register_look_up_revoke_and_cascade,
    routes::dead_letters_are_trimmed_by_age_and_count,
    routes::concurrent_enqueues_are_never_removed_unread,
);
