//! Enrollments and provisioning (S-10, D-44, D-45): the same answers on every backend, and a
//! failed provisioning write leaves nothing behind.

use iothub_hub::store::StoreError;
use iothub_hub::store::enroll::{
    EnrollmentPatch, EnrollmentRecord, IdRule, ProvisionOutcome, Provisioning, ThingTemplate,
};

use crate::{Fixture, new_thing};

fn enrollment(id: &str, max_uses: Option<u64>) -> EnrollmentRecord {
    EnrollmentRecord {
        enrollment_id: id.to_owned(),
        template: ThingTemplate::default(),
        id_rule: IdRule::Prefix("p-".into()),
        max_uses,
        uses: 0,
        expires_at: Some(5_000),
        enabled: true,
        created_at: 10,
    }
}

fn provisioning<'a>(
    serial: &'a str,
    thing: &'a iothub_hub::store::NewThing,
    now: u64,
) -> Provisioning<'a> {
    Provisioning {
        enrollment_id: "e1",
        serial,
        thing,
        now,
        initial_shadow: None,
    }
}

/// A `default` shadow body as the hub writes it for a template's desired state.
const INITIAL_BODY: &str = r#"{"state":{"desired":{"interval":15}},"metadata":{"desired":{"interval":{"timestamp":100}}}}"#;

pub async fn provisioning_writes_the_initial_shadow(f: Fixture) {
    let store = f.store.enrollments().unwrap();
    store
        .create_enrollment(&enrollment("e1", None), "$hash")
        .await
        .unwrap();
    let thing = new_thing("p-s");
    let first = Provisioning {
        initial_shadow: Some(INITIAL_BODY),
        ..provisioning("ss", &thing, 100)
    };
    assert_eq!(
        store.provision(&first).await.unwrap(),
        ProvisionOutcome::Created("p-s".into())
    );
    let shadow = f.store.get_shadow("p-s", "default").await.unwrap().unwrap();
    assert_eq!((shadow.version, shadow.updated_at), (1, 100));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&shadow.body).unwrap(),
        serde_json::from_str::<serde_json::Value>(INITIAL_BODY).unwrap()
    );

    // Re-provisioning the serial keeps the shadow as the thing has made it since.
    let again = Provisioning {
        initial_shadow: Some(r#"{"state":{"desired":{"other":1}}}"#),
        ..provisioning("ss", &thing, 200)
    };
    assert_eq!(
        store.provision(&again).await.unwrap(),
        ProvisionOutcome::Rekeyed("p-s".into())
    );
    let kept = f.store.get_shadow("p-s", "default").await.unwrap().unwrap();
    assert_eq!((kept.version, kept.body), (1, shadow.body));
}

pub async fn enrollments_round_trip(f: Fixture) {
    let store = f
        .store
        .enrollments()
        .expect("every store keeps enrollments");
    store
        .create_enrollment(&enrollment("e1", Some(2)), "$hash")
        .await
        .unwrap();
    assert_eq!(
        store
            .create_enrollment(&enrollment("e1", None), "$other")
            .await,
        Err(StoreError::AlreadyExists)
    );
    store
        .create_enrollment(&enrollment("e0", None), "$h0")
        .await
        .unwrap();
    let (e, hash) = store.enrollment("e1").await.unwrap().unwrap();
    assert_eq!(e, enrollment("e1", Some(2)));
    assert_eq!(hash, "$hash");
    let (total, page) = store.list_enrollments(0, 1).await.unwrap();
    assert_eq!(total, 2);
    assert_eq!(page[0].enrollment_id, "e0");

    let patched = store
        .update_enrollment(
            "e1",
            &EnrollmentPatch {
                enabled: Some(false),
                max_uses: Some(None),
                expires_at: None,
            },
        )
        .await
        .unwrap();
    assert!(!patched.enabled);
    assert_eq!(patched.max_uses, None);
    assert_eq!(patched.expires_at, Some(5_000), "absent fields stay");
    assert_eq!(
        store
            .update_enrollment("zz", &EnrollmentPatch::default())
            .await,
        Err(StoreError::NotFound)
    );
    store.delete_enrollment("e0").await.unwrap();
    assert_eq!(
        store.delete_enrollment("e0").await,
        Err(StoreError::NotFound)
    );
    assert!(store.enrollment("e0").await.unwrap().is_none());
}

pub async fn provisioning_counts_uses_and_rekeys(f: Fixture) {
    let store = f.store.enrollments().unwrap();
    store
        .create_enrollment(&enrollment("e1", Some(2)), "$hash")
        .await
        .unwrap();
    let a = new_thing("p-a");
    assert_eq!(
        store.provision(&provisioning("sa", &a, 100)).await.unwrap(),
        ProvisionOutcome::Created("p-a".into())
    );
    assert_eq!(
        store.serial_thing("e1", "sa").await.unwrap().as_deref(),
        Some("p-a")
    );

    // The same serial: the same thing, a new hash, no use counted.
    let mut again = new_thing("p-ignored");
    again.password_hash = "$new".into();
    assert_eq!(
        store
            .provision(&provisioning("sa", &again, 101))
            .await
            .unwrap(),
        ProvisionOutcome::Rekeyed("p-a".into())
    );
    assert_eq!(
        f.store.password_hash("p-a").await.unwrap().unwrap().0,
        "$new"
    );
    assert!(f.store.get_thing("p-ignored").await.unwrap().is_none());

    // An id taken by another thing: nothing written.
    f.store.create_thing(&new_thing("p-x"), 1).await.unwrap();
    assert_eq!(
        store
            .provision(&provisioning("sx", &new_thing("p-x"), 102))
            .await
            .unwrap(),
        ProvisionOutcome::IdTaken
    );
    assert_eq!(store.serial_thing("e1", "sx").await.unwrap(), None);
    assert_eq!(store.enrollment("e1").await.unwrap().unwrap().0.uses, 1);

    let b = new_thing("p-b");
    assert!(matches!(
        store.provision(&provisioning("sb", &b, 103)).await.unwrap(),
        ProvisionOutcome::Created(_)
    ));
    // Out of uses; then expired; then disabled: refused, nothing written.
    assert_eq!(
        store
            .provision(&provisioning("sc", &new_thing("p-c"), 104))
            .await
            .unwrap(),
        ProvisionOutcome::Refused
    );
    let unlimited = EnrollmentPatch {
        max_uses: Some(None),
        ..Default::default()
    };
    store.update_enrollment("e1", &unlimited).await.unwrap();
    assert_eq!(
        store
            .provision(&provisioning("sc", &new_thing("p-c"), 5_000))
            .await
            .unwrap(),
        ProvisionOutcome::Refused
    );
    store
        .update_enrollment(
            "e1",
            &EnrollmentPatch {
                enabled: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .provision(&provisioning("sc", &new_thing("p-c"), 104))
            .await
            .unwrap(),
        ProvisionOutcome::Refused
    );
    assert!(f.store.get_thing("p-c").await.unwrap().is_none());

    // A serial whose thing was deleted is provisioned anew.
    store
        .update_enrollment(
            "e1",
            &EnrollmentPatch {
                enabled: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    f.store.delete_thing("p-a").await.unwrap();
    assert_eq!(
        store
            .provision(&provisioning("sa", &new_thing("p-a2"), 105))
            .await
            .unwrap(),
        ProvisionOutcome::Created("p-a2".into())
    );
    assert_eq!(
        store.serial_thing("e1", "sa").await.unwrap().as_deref(),
        Some("p-a2")
    );
}

pub async fn failed_provisioning_leaves_nothing(f: Fixture) {
    let store = f.store.enrollments().unwrap();
    store
        .create_enrollment(&enrollment("e1", None), "$hash")
        .await
        .unwrap();
    for rule in [
        "enrollments statement 2",
        "enrollments statement 3",
        "enrollments statement 4",
        "enrollments statement 5",
        "enrollments commit",
    ] {
        f.faults.set(rule);
        let thing = new_thing("p-1");
        let with_shadow = Provisioning {
            initial_shadow: Some(INITIAL_BODY),
            ..provisioning("s1", &thing, 100)
        };
        let result = store.provision(&with_shadow).await;
        assert!(
            matches!(result, Err(StoreError::Unavailable(_))),
            "{rule}: {result:?}"
        );
        f.faults.set("");
        assert!(f.store.get_thing("p-1").await.unwrap().is_none(), "{rule}");
        assert!(
            f.store
                .get_shadow("p-1", "default")
                .await
                .unwrap()
                .is_none(),
            "{rule}"
        );
        assert_eq!(
            store.serial_thing("e1", "s1").await.unwrap(),
            None,
            "{rule}"
        );
        assert_eq!(
            store.enrollment("e1").await.unwrap().unwrap().0.uses,
            0,
            "{rule}"
        );
    }
    f.faults.set("enrollments begin");
    assert!(
        store
            .create_enrollment(&enrollment("e2", None), "$h")
            .await
            .is_err()
    );
    f.faults.set("");
    assert!(store.enrollment("e2").await.unwrap().is_none());
    assert!(matches!(
        store
            .provision(&provisioning("s1", &new_thing("p-1"), 100))
            .await
            .unwrap(),
        ProvisionOutcome::Created(_)
    ));
}
