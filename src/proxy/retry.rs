//! The retry policy: whether a failed attempt may go to another backend. Pure logic, tested
//! without sockets; the forwarding loops (`h1/attempt.rs`, `forward.rs`) ask it after each
//! failure, then take a token from the pool's retry budget.

use crate::config::RetryConfig;

/// How an attempt failed, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection could be opened: nothing reached the backend.
    Connect,
    /// The backend reset or closed the connection after the request went out.
    Reset,
    /// No response headers within the response-header timeout.
    Timeout,
    /// The backend answered with this status.
    Status(u16),
}

/// What the request has been through so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempts {
    /// Attempts made, the failed one included (1 after the first).
    pub made: usize,
    /// The request can be sent again whole: no body, or one held in memory.
    pub replayable: bool,
    /// Part of a streamed (not replayable) body already went to a backend.
    pub body_consumed: bool,
}

/// True when `policy` allows another attempt after `failure`. A request that cannot be
/// replayed is retried only when nothing was sent (a connect failure); every retry still
/// needs a token from the retry budget.
pub fn allows(policy: &RetryConfig, failure: Failure, attempts: Attempts) -> bool {
    if attempts.made > policy.attempts as usize || attempts.body_consumed && !attempts.replayable {
        return false;
    }
    match failure {
        Failure::Connect => policy.on_connect_failure,
        Failure::Reset => attempts.replayable && policy.on_reset,
        Failure::Timeout => attempts.replayable && policy.on_timeout,
        Failure::Status(status) => attempts.replayable && policy.on_status.contains(status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StatusSet;

    fn policy(attempts: u32) -> RetryConfig {
        RetryConfig {
            attempts,
            on_connect_failure: true,
            on_reset: true,
            on_timeout: true,
            on_status: StatusSet(vec![(502, 504)]),
            ..RetryConfig::default()
        }
    }

    const FAILURES: [Failure; 5] = [
        Failure::Connect,
        Failure::Reset,
        Failure::Timeout,
        Failure::Status(503),
        Failure::Status(500),
    ];

    #[test]
    fn a_replayable_request_is_retried_on_what_the_policy_names() {
        let p = policy(2);
        let first = Attempts {
            made: 1,
            replayable: true,
            body_consumed: false,
        };
        let got: Vec<bool> = FAILURES.iter().map(|&f| allows(&p, f, first)).collect();
        assert_eq!(got, [true, true, true, true, false]);
    }

    #[test]
    fn a_request_that_cannot_be_replayed_is_retried_only_when_nothing_was_sent() {
        let p = policy(2);
        let streamed = Attempts {
            made: 1,
            replayable: false,
            body_consumed: false,
        };
        let got: Vec<bool> = FAILURES.iter().map(|&f| allows(&p, f, streamed)).collect();
        assert_eq!(got, [true, false, false, false, false]);
        let consumed = Attempts {
            body_consumed: true,
            ..streamed
        };
        assert!(
            FAILURES.iter().all(|&f| !allows(&p, f, consumed)),
            "part of the body is gone: not even a connect failure is retried"
        );
    }

    #[test]
    fn attempts_stop_at_the_limit() {
        let p = policy(2);
        let at = |made| Attempts {
            made,
            replayable: true,
            body_consumed: false,
        };
        assert!(allows(&p, Failure::Connect, at(1)));
        assert!(allows(&p, Failure::Connect, at(2)));
        assert!(!allows(&p, Failure::Connect, at(3)), "1 attempt + 2 retries");
        assert!(!allows(&policy(0), Failure::Connect, at(1)), "attempts = 0: no retry");
    }

    #[test]
    fn each_trigger_can_be_turned_off() {
        let once = Attempts {
            made: 1,
            replayable: true,
            body_consumed: false,
        };
        let off = RetryConfig {
            attempts: 3,
            on_connect_failure: false,
            on_reset: false,
            on_timeout: false,
            on_status: StatusSet(Vec::new()),
            ..RetryConfig::default()
        };
        assert!(FAILURES.iter().all(|&f| !allows(&off, f, once)));
        assert!(
            allows(&RetryConfig::default(), Failure::Connect, once),
            "connect failures by default"
        );
        assert!(
            !allows(&RetryConfig::default(), Failure::Reset, once),
            "resets only when asked"
        );
    }
}
