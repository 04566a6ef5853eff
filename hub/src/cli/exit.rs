//! The admin CLI's exit codes: one list, used by the code and printed by `--help`.

use std::process::ExitCode;

/// How an admin command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It did what was asked.
    Ok,
    /// The hub answered something the CLI could not read.
    Failure,
    /// Bad arguments (also clap's own code for a bad command line).
    Usage,
    /// HTTP 404: no such thing, shadow, job or route.
    NotFound,
    /// HTTP 409: the thing exists already, a version did not match, the thing is offline.
    Conflict,
    /// Another HTTP 4xx: the hub refused the request as invalid or too large or too frequent.
    Refused,
    /// HTTP 401 or 403: `IOTHUB_TOKEN` is missing or wrong.
    Unauthorized,
    /// HTTP 504, or no answer in time: the device or the hub did not answer.
    Timeout,
    /// The hub cannot be reached, or answered 5xx.
    Unavailable,
    /// A direct method reached the device, which answered with a code of 400 or more.
    DeviceError,
}

/// Every outcome with its code and meaning, in code order (for `--help`).
pub const ALL: [(Outcome, &str); 10] = [
    (Outcome::Ok, "success"),
    (Outcome::Failure, "unexpected answer from the hub"),
    (
        Outcome::Usage,
        "bad command line or argument (e.g. --payload is not JSON)",
    ),
    (Outcome::NotFound, "not found (HTTP 404)"),
    (
        Outcome::Conflict,
        "conflict (HTTP 409: exists already, version mismatch, thing offline)",
    ),
    (Outcome::Refused, "request refused (another HTTP 4xx)"),
    (
        Outcome::Unauthorized,
        "IOTHUB_TOKEN missing or wrong (HTTP 401/403)",
    ),
    (
        Outcome::Timeout,
        "timed out (HTTP 504 or no answer in time)",
    ),
    (
        Outcome::Unavailable,
        "hub unreachable or failing (HTTP 5xx)",
    ),
    (
        Outcome::DeviceError,
        "the device answered a method with code >= 400",
    ),
];

impl Outcome {
    /// The process exit code.
    pub const fn code(self) -> u8 {
        match self {
            Outcome::Ok => 0,
            Outcome::Failure => 1,
            Outcome::Usage => 2,
            Outcome::NotFound => 3,
            Outcome::Conflict => 4,
            Outcome::Refused => 5,
            Outcome::Unauthorized => 6,
            Outcome::Timeout => 7,
            Outcome::Unavailable => 8,
            Outcome::DeviceError => 9,
        }
    }

    /// The outcome of an HTTP error status.
    pub fn of_status(status: u16) -> Outcome {
        match status {
            404 => Outcome::NotFound,
            409 => Outcome::Conflict,
            401 | 403 => Outcome::Unauthorized,
            408 | 504 => Outcome::Timeout,
            400..=499 => Outcome::Refused,
            500..=599 => Outcome::Unavailable,
            _ => Outcome::Failure,
        }
    }
}

impl From<Outcome> for ExitCode {
    fn from(o: Outcome) -> ExitCode {
        ExitCode::from(o.code())
    }
}

/// The "Exit codes" section of the admin commands' `--help`.
pub fn help() -> String {
    let mut text = String::from("Exit codes:\n");
    for (outcome, meaning) in ALL {
        text.push_str(&format!("  {:>2}  {meaning}\n", outcome.code()));
    }
    text.push_str("\nThe admin token is read from the IOTHUB_TOKEN environment variable.");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_in_order() {
        for (i, (outcome, _)) in ALL.iter().enumerate() {
            assert_eq!(usize::from(outcome.code()), i);
        }
        assert_eq!(Outcome::of_status(404), Outcome::NotFound);
        assert_eq!(Outcome::of_status(413), Outcome::Refused);
        assert_eq!(Outcome::of_status(503), Outcome::Unavailable);
    }
}
