//! The webhook sink: one POST per batch, `Content-Type: application/json`, the body
//! [`super::wire::Batch`], signed with `X-Iothub-Signature: sha256=<hex HMAC-SHA256 of the
//! body>` when the route has a secret. Any 2xx answer confirms the whole batch; anything else,
//! a timeout or a connection error is a failed attempt.

use hmac::{Hmac, Mac};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use sha2::Sha256;

use super::config::{RouteSpec, Sink};
use super::wire::{Batch, MessageView};
use crate::store::routes::StoredMessage;

/// The signature header.
pub const SIGNATURE: &str = "x-iothub-signature";
/// Longest piece of an error answer kept for the route's status.
const ERROR_BODY: usize = 200;

pub(super) struct Webhook {
    client: reqwest::Client,
    url: reqwest::Url,
    secret: Option<Vec<u8>>,
    headers: HeaderMap,
}

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

impl Webhook {
    pub(super) fn new(spec: &RouteSpec) -> Result<Webhook, String> {
        let Sink::Webhook {
            url,
            secret,
            headers,
            timeout_ms,
        } = &spec.sink
        else {
            return Err("not a webhook route".into());
        };
        let url = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
        let timeout = std::time::Duration::from_millis(*timeout_ms);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            // Validated with the route; skip rather than fail if not.
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                map.insert(n, v);
            }
        }
        map.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Ok(Webhook {
            client,
            url,
            secret: secret.as_ref().map(|s| s.as_bytes().to_vec()),
            headers: map,
        })
    }

    pub(super) async fn deliver(&self, route: &str, batch: &[StoredMessage]) -> Result<(), String> {
        let body = serde_json::to_vec(&Batch {
            route,
            messages: batch
                .iter()
                .map(|m| MessageView::of(Some(route), m))
                .collect(),
        })
        .map_err(|e| e.to_string())?;
        let mut request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone());
        if let Some(secret) = &self.secret {
            request = request.header(SIGNATURE, signature(secret, &body));
        }
        let response = request.body(body).send().await.map_err(|e| {
            if e.is_timeout() {
                "webhook timed out".to_owned()
            } else {
                format!("webhook unreachable: {e}")
            }
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        // Only the first chunk: the receiver's error page may be of any size.
        let mut response = response;
        let first = response.chunk().await.ok().flatten().unwrap_or_default();
        let text = String::from_utf8_lossy(&first[..first.len().min(ERROR_BODY)]).into_owned();
        let snippet = text.trim();
        Err(format!("webhook answered {status}: {snippet}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_rfc_4231_case_2() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
