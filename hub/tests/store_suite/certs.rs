//! Client certificates registered on things (D-82), the same on every backend: a fingerprint
//! belongs to one thing, the CONNECT look-up sees the thing's enabled flag, revoking removes
//! it, and deleting the thing deletes its certificates.

use iothub_hub::store::StoreError;
use iothub_hub::store::certs::CertificateRecord;

use crate::{Fixture, new_thing};

fn cert(thing: &str, n: u8) -> CertificateRecord {
    CertificateRecord {
        fingerprint: format!("{n:02x}").repeat(32),
        thing_id: thing.into(),
        pem: format!("-----BEGIN CERTIFICATE-----\n{n}\n-----END CERTIFICATE-----\n"),
        common_name: n.is_multiple_of(2).then(|| thing.to_owned()),
        not_after: 4_000_000_000_000,
        created_at: 1_000 + u64::from(n),
    }
}

pub async fn register_look_up_revoke_and_cascade(f: Fixture) {
    let cs = f.store.certificates().expect("certificate store");
    f.store.create_thing(&new_thing("c1"), 1).await.unwrap();
    f.store.create_thing(&new_thing("c2"), 1).await.unwrap();

    // Unknown thing: NotFound, nothing stored.
    assert!(matches!(
        cs.add_certificate(&cert("nobody", 9)).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        cs.certificate_thing(&cert("nobody", 9).fingerprint)
            .await
            .unwrap(),
        None
    );

    cs.add_certificate(&cert("c1", 2)).await.unwrap();
    cs.add_certificate(&cert("c1", 1)).await.unwrap();
    // A fingerprint is one thing's, whichever thing asks again.
    for thing in ["c1", "c2"] {
        let mut again = cert(thing, 2);
        again.thing_id = thing.into();
        assert!(
            matches!(
                cs.add_certificate(&again).await,
                Err(StoreError::AlreadyExists)
            ),
            "{thing}"
        );
    }
    // Oldest first, every field as written.
    assert_eq!(
        cs.certificates("c1").await.unwrap(),
        vec![cert("c1", 1), cert("c1", 2)]
    );
    assert!(cs.certificates("c2").await.unwrap().is_empty());
    assert!(cs.certificates("nobody").await.unwrap().is_empty());

    // CONNECT's look-up follows the thing's enabled flag.
    let fp = cert("c1", 1).fingerprint;
    assert_eq!(
        cs.certificate_thing(&fp).await.unwrap(),
        Some(("c1".into(), true))
    );
    f.store.set_enabled("c1", false).await.unwrap();
    assert_eq!(
        cs.certificate_thing(&fp).await.unwrap(),
        Some(("c1".into(), false))
    );

    // Revoking: only on its own thing.
    assert!(matches!(
        cs.delete_certificate("c2", &fp).await,
        Err(StoreError::NotFound)
    ));
    cs.delete_certificate("c1", &fp).await.unwrap();
    assert_eq!(cs.certificate_thing(&fp).await.unwrap(), None);
    assert!(matches!(
        cs.delete_certificate("c1", &fp).await,
        Err(StoreError::NotFound)
    ));
    // Another handle on the same database (another instance) sees the same.
    let other = f.open_again().await;
    let other = other.certificates().expect("certificate store");
    assert_eq!(other.certificates("c1").await.unwrap(), vec![cert("c1", 2)]);

    // Deleting the thing deletes its certificates; the fingerprint is free again.
    f.store.delete_thing("c1").await.unwrap();
    let fp2 = cert("c1", 2).fingerprint;
    assert_eq!(cs.certificate_thing(&fp2).await.unwrap(), None);
    let mut moved = cert("c2", 2);
    moved.thing_id = "c2".into();
    cs.add_certificate(&moved).await.unwrap();
    assert_eq!(
        cs.certificate_thing(&fp2).await.unwrap(),
        Some(("c2".into(), true))
    );
}
