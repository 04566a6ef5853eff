//! The test-only break proxy: a TCP proxy inside a shim, between its SDK and the hub, that
//! rewrites MQTT packets (decoded and re-encoded with rumqttc's codecs, [`crate::device::wire`])
//! to make the device misbehave in one chosen way ([`Break`]). It exists only so that the
//! suite's negative checks can prove that the device cases fail against a broken device; the
//! shims never start it unless `IOTHUB_SHIM_BREAK` is set.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use iothub_spec::ids::DEFAULT_SHADOW;
use iothub_spec::payload::field;
use iothub_spec::topic::{Filter, Topic};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

use super::Break;
use crate::device::wire::{self, Pkt, Pub};
use crate::mqtt::Proto;

/// Packet id of the SUBSCRIBE the `acl` break injects (its SUBACK is swallowed).
const INJECTED_PKID: u16 = 65001;

/// Starts the proxy on `127.0.0.1:0` in front of `upstream`; returns its address.
pub async fn start(upstream: &str, thing: &str, brk: Break) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (upstream, thing) = (upstream.to_owned(), thing.to_owned());
    tokio::spawn(async move {
        while let Ok((dev, _)) = listener.accept().await {
            let (upstream, thing) = (upstream.clone(), thing.clone());
            tokio::spawn(async move {
                if let Ok(hub) = TcpStream::connect(&upstream).await {
                    let _ = (dev.set_nodelay(true), hub.set_nodelay(true));
                    pipe(dev, hub, &thing, brk).await;
                }
            });
        }
    });
    Ok(addr)
}

async fn read_more(rd: &mut OwnedReadHalf, buf: &mut BytesMut) -> bool {
    matches!(rd.read_buf(buf).await, Ok(n) if n > 0)
}

/// Proxies one connection until either side closes.
async fn pipe(dev: TcpStream, hub: TcpStream, thing: &str, brk: Break) {
    let (mut drd, mut dwr) = dev.into_split();
    let (mut hrd, mut hwr) = hub.into_split();
    let mut buf = BytesMut::new();
    // The CONNECT tells the protocol version; it is forwarded as received.
    let (proto, connect) = loop {
        let mut probe = buf.clone();
        match wire::read_connect(&mut probe) {
            Ok(Some((proto, _))) => {
                let used = buf.len() - probe.len();
                break (proto, buf.split_to(used).freeze());
            }
            Ok(None) if read_more(&mut drd, &mut buf).await => {}
            _ => return,
        }
    };
    if hwr.write_all(&connect).await.is_err() {
        return;
    }
    if brk == Break::Acl && inject_acl(&mut hwr, thing, proto).await.is_err() {
        return;
    }
    let up = async move {
        loop {
            while let Ok(Some((p, raw))) = wire::read_raw(&mut buf, proto) {
                if hwr.write_all(&upward(&p, raw, proto, brk)).await.is_err() {
                    return;
                }
            }
            if !read_more(&mut drd, &mut buf).await {
                return;
            }
        }
    };
    let down = async move {
        let mut buf = BytesMut::new();
        let mut max_version: u64 = 0;
        loop {
            while let Ok(Some((p, raw))) = wire::read_raw(&mut buf, proto) {
                let Some(out) = downward(&p, raw, proto, brk, &mut max_version) else {
                    continue;
                };
                if dwr.write_all(&out).await.is_err() {
                    return;
                }
            }
            if !read_more(&mut hrd, &mut buf).await {
                return;
            }
        }
    };
    tokio::select! {
        _ = up => {},
        _ = down => {},
    }
}

/// Device → hub: `no-client-token` strips the token from updates and method responses,
/// `no-404` answers unknown methods 200, `ota-progress` makes OTA progress run backwards.
fn upward(p: &Pkt, raw: Bytes, proto: Proto, brk: Break) -> Bytes {
    let Pkt::Publish(publ) = p else { return raw };
    let Ok(topic) = Topic::parse(&publ.topic) else {
        return raw;
    };
    let Ok(Value::Object(mut body)) = serde_json::from_slice::<Value>(&publ.payload) else {
        return raw;
    };
    let changed = match (brk, topic) {
        (Break::NoClientToken, Topic::ShadowUpdate { .. } | Topic::MethodResponse { .. }) => {
            body.remove(field::CLIENT_TOKEN).is_some()
        }
        (Break::No404, Topic::MethodResponse { .. })
            if body.get(field::CODE).and_then(Value::as_u64) == Some(404) =>
        {
            body.insert(field::CODE.into(), Value::from(200));
            true
        }
        (Break::OtaProgress, Topic::OtaTaskResult { .. }) => {
            match body.get(field::PROGRESS).and_then(Value::as_u64) {
                Some(p) => {
                    body.insert(field::PROGRESS.into(), Value::from(100 - p.min(100)));
                    true
                }
                None => false,
            }
        }
        _ => false,
    };
    if !changed {
        return raw;
    }
    let changed = Pub {
        payload: Bytes::from(Value::Object(body).to_string()),
        ..publ.clone()
    };
    wire::encode(&Pkt::Publish(changed), proto).unwrap_or(raw)
}

/// Hub → device: `stale-delta` gives an old delta a fresh version; `acl` swallows the SUBACK
/// of the injected SUBSCRIBE. `None` drops the packet.
fn downward(p: &Pkt, raw: Bytes, proto: Proto, brk: Break, max: &mut u64) -> Option<Bytes> {
    match p {
        Pkt::SubAck { pkid, .. } if brk == Break::Acl && *pkid == INJECTED_PKID => None,
        Pkt::Publish(publ) if brk == Break::StaleDelta => {
            let t = Topic::parse(&publ.topic).ok();
            let is_delta = matches!(t, Some(Topic::ShadowUpdateDelta { .. }));
            let is_doc = matches!(t, Some(Topic::ShadowGetAccepted { .. }));
            let Ok(Value::Object(mut body)) = serde_json::from_slice::<Value>(&publ.payload) else {
                return Some(raw);
            };
            let v = body
                .get(field::VERSION)
                .and_then(Value::as_u64)
                .unwrap_or(0);
            if is_doc {
                *max = (*max).max(v);
            }
            if !is_delta {
                return Some(raw);
            }
            if v > *max {
                *max = v;
                return Some(raw);
            }
            *max += 1;
            body.insert(field::VERSION.into(), Value::from(*max));
            let changed = Pub {
                payload: Bytes::from(Value::Object(body).to_string()),
                ..publ.clone()
            };
            Some(wire::encode(&Pkt::Publish(changed), proto).unwrap_or(raw))
        }
        _ => Some(raw),
    }
}

/// `acl`: a SUBSCRIBE with a wildcard thing id and a PUBLISH on a hub → thing topic.
async fn inject_acl(w: &mut OwnedWriteHalf, thing: &str, proto: Proto) -> std::io::Result<()> {
    let sub = Pkt::Subscribe {
        pkid: INJECTED_PKID,
        // A wildcard in the thing id level (S-2.1 forbids it).
        filters: vec![
            Filter::ShadowUpdateReplies {
                thing: "+",
                shadow: DEFAULT_SHADOW,
            }
            .to_string(),
        ],
    };
    let publ = Pkt::Publish(Pub {
        topic: Topic::ShadowUpdateDelta {
            thing,
            shadow: DEFAULT_SHADOW,
        }
        .to_string(),
        payload: Bytes::from_static(b"{\"state\":{},\"version\":1}"),
        qos: 0,
        retain: false,
        pkid: 0,
        alias: None,
    });
    for p in [sub, publ] {
        if let Ok(b) = wire::encode(&p, proto) {
            w.write_all(&b).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(topic: &str, body: &str) -> Pkt {
        Pkt::Publish(Pub {
            topic: topic.into(),
            payload: Bytes::from(body.to_owned()),
            qos: 1,
            retain: false,
            pkid: 3,
            alias: None,
        })
    }

    fn body(raw: &Bytes, proto: Proto) -> Value {
        let mut b = BytesMut::from(&raw[..]);
        match wire::read(&mut b, proto) {
            Ok(Some(Pkt::Publish(p))) => serde_json::from_slice(&p.payload).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_client_token_strips_updates_and_method_responses_only() {
        for proto in Proto::BOTH {
            let up = publish(
                "$iothub/things/t/shadows/name/default/update",
                r#"{"state":{"reported":{"a":1}},"clientToken":"k"}"#,
            );
            let raw = wire::encode(&up, proto).unwrap();
            let out = upward(&up, raw.clone(), proto, Break::NoClientToken);
            assert!(body(&out, proto).get("clientToken").is_none());
            assert_eq!(upward(&up, raw.clone(), proto, Break::Acl), raw);
            let get = publish(
                "$iothub/things/t/shadows/name/default/get",
                r#"{"clientToken":"k"}"#,
            );
            let raw = wire::encode(&get, proto).unwrap();
            assert_eq!(upward(&get, raw.clone(), proto, Break::NoClientToken), raw);
        }
    }

    #[test]
    fn no_404_and_ota_progress_rewrites() {
        let proto = Proto::V311;
        let resp = publish(
            "$iothub/things/t/methods/nope/resp",
            r#"{"clientToken":"k","code":404}"#,
        );
        let out = upward(
            &resp,
            wire::encode(&resp, proto).unwrap(),
            proto,
            Break::No404,
        );
        assert_eq!(body(&out, proto)["code"], 200);
        let res = publish(
            "$iothub/things/t/ota/task/result",
            r#"{"clientToken":"k","taskId":"i","status":"ongoing","progress":25,"timestamp":1}"#,
        );
        let out = upward(
            &res,
            wire::encode(&res, proto).unwrap(),
            proto,
            Break::OtaProgress,
        );
        assert_eq!(body(&out, proto)["progress"], 75);
    }

    #[test]
    fn stale_delta_gets_a_fresh_version() {
        let proto = Proto::V5;
        let mut max = 0;
        let topic = "$iothub/things/t/shadows/name/default/update/delta";
        let mut pass = |v: u64| {
            let p = publish(topic, &format!(r#"{{"state":{{"a":{v}}},"version":{v}}}"#));
            let raw = wire::encode(&p, proto).unwrap();
            let out = downward(&p, raw, proto, Break::StaleDelta, &mut max).unwrap();
            body(&out, proto)["version"].as_u64().unwrap()
        };
        assert_eq!(pass(5), 5);
        assert_eq!(pass(4), 6, "older than 5: rewritten above it");
        let suback = Pkt::SubAck {
            pkid: INJECTED_PKID,
            codes: vec![0x87],
        };
        let raw = wire::encode(&suback, proto).unwrap();
        assert!(downward(&suback, raw.clone(), proto, Break::Acl, &mut max).is_none());
        assert!(downward(&suback, raw, proto, Break::StaleDelta, &mut max).is_some());
    }
}
