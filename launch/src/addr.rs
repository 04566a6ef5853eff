//! The hub's addresses as every tool accepts them (the simulator, the conformance suite): the
//! MQTT address as `HOST:PORT` or `mqtt://HOST:PORT` (also `tcp://`), the REST API as
//! `HOST:PORT` or `http(s)://HOST:PORT[/prefix]`. One parser, so the tools cannot drift apart.

/// Why an address is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// A URL scheme that does not fit (e.g. `http://` for MQTT).
    #[error(
        "{0:?}: unsupported scheme (MQTT: HOST:PORT or mqtt://HOST:PORT; API: HOST:PORT or http(s)://HOST:PORT)"
    )]
    Scheme(String),
    /// No host, or a port that is not a number.
    #[error("{0:?}: expected HOST:PORT")]
    HostPort(String),
}

/// Default MQTT port when a URL leaves it out.
const MQTT_PORT: u16 = 1883;

/// Checks `HOST:PORT` (IPv6 hosts in brackets); `default_port` when the port is left out.
fn host_port(s: &str, original: &str, default_port: Option<u16>) -> Result<String, AddrError> {
    let bad = || AddrError::HostPort(original.to_owned());
    let s = s.trim_end_matches('/');
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && (!h.contains(':') || h.ends_with(']')) => {
            (h, p.parse::<u16>().map_err(|_| bad())?)
        }
        _ => (s, default_port.ok_or_else(bad)?),
    };
    if host.is_empty() || host.contains('/') || host.contains(' ') {
        return Err(bad());
    }
    Ok(format!("{host}:{port}"))
}

/// The MQTT address `HOST:PORT` of `s` (`HOST:PORT`, `mqtt://HOST[:PORT]` or `tcp://…`).
pub fn mqtt(s: &str) -> Result<String, AddrError> {
    let t = s.trim();
    match t.split_once("://") {
        Some(("mqtt" | "tcp", rest)) => host_port(rest, s, Some(MQTT_PORT)),
        Some(_) => Err(AddrError::Scheme(s.to_owned())),
        None => host_port(t, s, None),
    }
}

/// The REST API's base URL of `s` (`HOST:PORT` becomes `http://HOST:PORT`), without a trailing
/// slash.
pub fn http_base(s: &str) -> Result<String, AddrError> {
    let t = s.trim().trim_end_matches('/');
    match t.split_once("://") {
        Some(("http" | "https", rest)) => {
            let authority = rest.split('/').next().unwrap_or_default();
            if authority.is_empty() {
                return Err(AddrError::HostPort(s.to_owned()));
            }
            Ok(t.to_owned())
        }
        Some(_) => Err(AddrError::Scheme(s.to_owned())),
        None => Ok(format!("http://{}", host_port(t, s, None)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_accepts_both_forms() {
        assert_eq!(mqtt("127.0.0.1:1883"), Ok("127.0.0.1:1883".into()));
        assert_eq!(mqtt("mqtt://hub.local:8883"), Ok("hub.local:8883".into()));
        assert_eq!(mqtt("tcp://hub.local"), Ok("hub.local:1883".into()));
        assert_eq!(mqtt("mqtt://[::1]:1884/"), Ok("[::1]:1884".into()));
        assert_eq!(mqtt("[::1]:1884"), Ok("[::1]:1884".into()));
        assert_eq!(
            mqtt("http://x:1"),
            Err(AddrError::Scheme("http://x:1".into()))
        );
        assert_eq!(
            mqtt("hub.local"),
            Err(AddrError::HostPort("hub.local".into()))
        );
        assert_eq!(mqtt("x:port"), Err(AddrError::HostPort("x:port".into())));
        assert_eq!(mqtt(":1883"), Err(AddrError::HostPort(":1883".into())));
    }

    #[test]
    fn api_accepts_both_forms() {
        assert_eq!(
            http_base("127.0.0.1:9000"),
            Ok("http://127.0.0.1:9000".into())
        );
        assert_eq!(http_base("http://h:9000/"), Ok("http://h:9000".into()));
        assert_eq!(http_base("https://h/hub"), Ok("https://h/hub".into()));
        assert_eq!(
            http_base("mqtt://h:1"),
            Err(AddrError::Scheme("mqtt://h:1".into()))
        );
        assert_eq!(http_base("h"), Err(AddrError::HostPort("h".into())));
        assert_eq!(
            http_base("http://"),
            Err(AddrError::HostPort("http://".into()))
        );
    }
}
