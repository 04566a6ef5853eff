//! Configurations and their records (S-11): the same round trip on every backend, and a failed
//! write reported to the caller with nothing stored.

use iothub_hub::store::StoreError;
use iothub_hub::store::configurations::{Configuration, ConfigurationRecord, RecordStatus};
use serde_json::json;

use crate::{Fixture, new_thing, tags};

fn config(name: &str, priority: i64) -> Configuration {
    Configuration {
        name: name.to_owned(),
        target: "tags.site = 'b1'".into(),
        priority,
        desired: tags(json!({"interval": 15, "mode": {"eco": true}})),
        success: Some("state.reported.interval = 15".into()),
        remove_on_unmatch: priority > 0,
        created_at: 10,
        updated_at: 10,
    }
}

fn record(configuration: &str, thing: &str, status: RecordStatus) -> ConfigurationRecord {
    ConfigurationRecord {
        configuration: configuration.to_owned(),
        thing_id: thing.to_owned(),
        status,
        patch: tags(json!({"interval": 15})),
        error: (status == RecordStatus::Failed).then(|| "too large".to_owned()),
        updated_at: 20,
    }
}

pub async fn configurations_and_records_round_trip(f: Fixture) {
    for id in ["a", "b"] {
        f.store.create_thing(&new_thing(id), 1).await.unwrap();
    }
    let db = f
        .store
        .configurations()
        .expect("every store keeps configurations");
    db.create_configuration(&config("zeta", 0)).await.unwrap();
    db.create_configuration(&config("alpha", 5)).await.unwrap();
    assert_eq!(
        db.create_configuration(&config("alpha", 1)).await,
        Err(StoreError::AlreadyExists)
    );
    let all = db.configurations().await.unwrap();
    assert_eq!(all, vec![config("alpha", 5), config("zeta", 0)]);

    let mut changed = config("alpha", 7);
    changed.target = "tags.site = 'b2'".into();
    changed.success = None;
    changed.updated_at = 30;
    db.update_configuration(&changed).await.unwrap();
    assert_eq!(db.configuration("alpha").await.unwrap(), Some(changed));
    assert_eq!(
        db.update_configuration(&config("nope", 0)).await,
        Err(StoreError::NotFound)
    );

    // Records: upsert, skip the ones whose thing or configuration is gone, delete.
    db.write_configuration_records(
        &[
            record("alpha", "a", RecordStatus::Applied),
            record("zeta", "a", RecordStatus::Failed),
            record("zeta", "b", RecordStatus::Applied),
            record("zeta", "gone", RecordStatus::Applied),
            record("nope", "a", RecordStatus::Applied),
        ],
        &[],
    )
    .await
    .unwrap();
    assert_eq!(db.configuration_records().await.unwrap().len(), 3);
    let mut again = record("zeta", "a", RecordStatus::Applied);
    again.patch = tags(json!({}));
    db.write_configuration_records(&[again.clone()], &[("zeta".into(), "b".into())])
        .await
        .unwrap();
    assert_eq!(
        db.thing_configuration_records("a").await.unwrap(),
        vec![record("alpha", "a", RecordStatus::Applied), again]
    );
    assert!(
        db.thing_configuration_records("b")
            .await
            .unwrap()
            .is_empty()
    );

    // Deleting a configuration or a thing deletes their records; the data survives reopening.
    db.delete_configuration("alpha").await.unwrap();
    assert_eq!(
        db.delete_configuration("alpha").await,
        Err(StoreError::NotFound)
    );
    let reopened = f.open_again().await;
    let db2 = reopened.configurations().unwrap();
    assert_eq!(db2.configurations().await.unwrap(), vec![config("zeta", 0)]);
    f.store.delete_thing("a").await.unwrap();
    assert!(db2.configuration_records().await.unwrap().is_empty());
}

pub async fn failed_configuration_writes_store_nothing(f: Fixture) {
    f.store.create_thing(&new_thing("a"), 1).await.unwrap();
    let db = f.store.configurations().unwrap();
    f.faults.set("configurations commit");
    assert!(matches!(
        db.create_configuration(&config("c", 0)).await,
        Err(StoreError::Unavailable(_))
    ));
    f.faults.set("");
    assert!(db.configurations().await.unwrap().is_empty());
    db.create_configuration(&config("c", 0)).await.unwrap();
    f.faults.set("configurations statement 2");
    let put = [
        record("c", "a", RecordStatus::Applied),
        record("c", "a", RecordStatus::Failed),
    ];
    assert!(matches!(
        db.write_configuration_records(&put, &[]).await,
        Err(StoreError::Unavailable(_))
    ));
    f.faults.set("");
    assert!(db.configuration_records().await.unwrap().is_empty());
}
