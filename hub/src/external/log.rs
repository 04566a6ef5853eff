//! Connections and subscriptions read from Mosquitto's own log, which it publishes on
//! `$SYS/broker/log/{level}` with `log_dest topic` (D-63). Mosquitto 2.0 publishes no client
//! events, so these lines are the only live source; their wording is not an API, and a line this
//! parser does not know is ignored (and a connection it misses is corrected at its next connect or
//! disconnect line).

/// The log topics the hub subscribes to: notices (connects, disconnects) and subscriptions.
pub const LOG_FILTERS: [&str; 2] = ["$SYS/broker/log/N", "$SYS/broker/log/M/subscribe"];

/// What one log line says about a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEvent<'a> {
    /// `New client connected from ADDR as ID (p5, c1, k60, u'USER').`
    Connected {
        /// The client identifier.
        client_id: &'a str,
        /// The user name, empty when the CONNECT had none.
        username: &'a str,
        /// The peer address as logged (`127.0.0.1:40178`).
        addr: &'a str,
    },
    /// One of the lines that end a connection (clean DISCONNECT, closed socket, keep-alive
    /// timeout, administrative kick, protocol error).
    Disconnected {
        /// The client identifier.
        client_id: &'a str,
        /// What the line says, for the presence event's reason.
        reason: &'static str,
    },
    /// `ID QOS FILTER` on the subscribe log (`log_type subscribe`).
    Subscribed {
        /// The client identifier.
        client_id: &'a str,
        /// The filter it subscribed to.
        filter: &'a str,
    },
}

/// Ends of the lines that close a connection, with the reason each stands for. A client
/// Mosquitto never identified is logged as `<unknown>` and is never a thing's connection.
const DISCONNECT_SUFFIXES: [(&str, &str); 6] = [
    (" disconnected.", "client disconnected"),
    (" closed its connection.", "connection closed"),
    (
        " has exceeded timeout, disconnecting.",
        "keep-alive timeout",
    ),
    (
        " been disconnected by administrative action.",
        "disconnected by the hub",
    ),
    (" disconnected, not authorised.", "not authorised"),
    (" disconnected due to ", "protocol error"),
];

/// Parses one message of a [`LOG_FILTERS`] topic: `subscribe` says whether it came from the
/// subscribe log. `None` for every line that says nothing about a client's connection.
pub fn parse(line: &str, subscribe: bool) -> Option<LogEvent<'_>> {
    // Every line starts with the broker's time stamp: `1796540014: `.
    let (_, text) = line.split_once(": ")?;
    if subscribe {
        let (client_id, rest) = text.split_once(' ')?;
        let (qos, filter) = rest.split_once(' ')?;
        if qos.parse::<u8>().is_err() || filter.is_empty() {
            return None;
        }
        return Some(LogEvent::Subscribed { client_id, filter });
    }
    if let Some(rest) = text.strip_prefix("New client connected from ") {
        let (addr, rest) = rest.split_once(" as ")?;
        // The client identifier runs up to the last ` (p` (the protocol details).
        let open = rest.rfind(" (p")?;
        let client_id = &rest[..open];
        let details = &rest[open..];
        let username = details
            .split_once("u'")
            .and_then(|(_, u)| u.rsplit_once("')"))
            .map_or("", |(u, _)| u);
        return Some(LogEvent::Connected {
            client_id,
            username,
            addr,
        });
    }
    if let Some(rest) = text.strip_prefix("Socket error on client ") {
        let client_id = rest.strip_suffix(", disconnecting.")?;
        return known(client_id).map(|client_id| LogEvent::Disconnected {
            client_id,
            reason: "socket error",
        });
    }
    let rest = text.strip_prefix("Client ")?;
    DISCONNECT_SUFFIXES.iter().find_map(|(suffix, reason)| {
        let end = rest.find(suffix)?;
        known(&rest[..end]).map(|client_id| LogEvent::Disconnected { client_id, reason })
    })
}

fn known(client_id: &str) -> Option<&str> {
    (!client_id.is_empty() && client_id != "<unknown>").then_some(client_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines as Mosquitto 2.0.11 wrote them in the external_mosquitto test runs.
    #[test]
    fn connect_lines_give_id_user_and_address() {
        assert_eq!(
            parse(
                "1796540024: New client connected from 127.0.0.1:37848 as t1 (p5, c1, k60, u't1').",
                false
            ),
            Some(LogEvent::Connected {
                client_id: "t1",
                username: "t1",
                addr: "127.0.0.1:37848"
            })
        );
        assert_eq!(
            parse(
                "1: New client connected from [::1]:5 as a b (p2, c0, k10).",
                false
            ),
            Some(LogEvent::Connected {
                client_id: "a b",
                username: "",
                addr: "[::1]:5"
            })
        );
    }

    #[test]
    fn every_known_disconnect_line_ends_a_connection() {
        for (line, id) in [
            ("1: Client t1 disconnected.", "t1"),
            ("1: Client t1 closed its connection.", "t1"),
            ("1: Client t1 has exceeded timeout, disconnecting.", "t1"),
            (
                "1: Client t1 been disconnected by administrative action.",
                "t1",
            ),
            ("1: Client t1 disconnected due to malformed packet.", "t1"),
            ("1: Socket error on client t1, disconnecting.", "t1"),
        ] {
            match parse(line, false) {
                Some(LogEvent::Disconnected { client_id, .. }) => {
                    assert_eq!(client_id, id, "{line}")
                }
                other => panic!("{line}: {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_clients_and_other_lines_are_ignored() {
        for line in [
            "1: Client <unknown> disconnected, not authorised.",
            "1: New connection from 127.0.0.1:40178 on port 18830.",
            "1: dynsec: x/$hub | createClient | username=t2 | password=*****",
            "no time stamp",
            "",
        ] {
            assert_eq!(parse(line, false), None, "{line}");
        }
    }

    #[test]
    fn subscribe_lines_give_client_and_filter() {
        assert_eq!(
            parse("1796540024: t1 1 $iothub/things/t1/#", true),
            Some(LogEvent::Subscribed {
                client_id: "t1",
                filter: "$iothub/things/t1/#"
            })
        );
        assert_eq!(parse("1: t1 x $iothub/things/t1/#", true), None);
        assert_eq!(parse("1: t1 1", true), None);
    }
}
