//! Passive health (outlier detection): backends that fail real requests are ejected for a
//! while, longer each time, without ever ejecting more than a set share of the pool. Active
//! probes live beside it in [`super::active`].

use std::time::Duration;

use crate::config::PassiveConfig;
use crate::upstream::backend::{clock_nanos, Backend};
use crate::upstream::Pool;

/// Records a failure of member `index` of `pool`; ejects it once it has failed
/// `consecutive_failures` times in a row, unless that would eject more than
/// `max_ejection_percent` of the pool.
pub fn record_failure(pool: &Pool, index: usize) {
    let Some(member) = pool.members().get(index) else {
        return;
    };
    let all = pool.members().iter().map(|m| &*m.backend);
    let Some((failures, length)) = count_failure(&member.backend, all, &pool.config().passive, clock_nanos) else {
        return;
    };
    if pool.config().health_check.is_some() {
        // With active checks on, it comes back by passing them (possibly before the
        // ejection time is over), never merely because the time ran out.
        member.backend.set_probed_down(true);
    }
    tracing::warn!(
        pool = pool.name(),
        backend = %member.backend.address(),
        failures,
        "backend ejected for {length:?} after {failures} failures in a row"
    );
    crate::events::record_backend(
        crate::events::Kind::Ejection,
        crate::events::Level::Warn,
        pool.name(),
        member.backend.address(),
        format!(
            "{} in {} ejected for {length:?} after {failures} failures in a row",
            member.backend.address(),
            pool.name()
        ),
    );
    pool.request_rebuild();
}

/// The decision behind [`record_failure`], shared with the simulator: counts a failure of
/// `backend`, one of `all` (its pool's backends), and ejects it once it has failed
/// `consecutive_failures` times in a row, unless it is ejected already or that would eject
/// more than `max_ejection_percent` of `all`. `now` is read only when an ejection is
/// considered. Returns the failures in a row and the ejection's length when it ejected.
pub fn count_failure<'a, I>(
    backend: &Backend,
    all: I,
    passive: &PassiveConfig,
    now: impl FnOnce() -> u64,
) -> Option<(u32, Duration)>
where
    I: IntoIterator<Item = &'a Backend>,
    I::IntoIter: ExactSizeIterator,
{
    let failures = backend.record_failure();
    if passive.consecutive_failures == 0 || failures < passive.consecutive_failures {
        return None;
    }
    let now = now();
    if backend.is_ejected(now) {
        return None;
    }
    let all = all.into_iter();
    let members = all.len();
    let ejected = all.filter(|b| b.is_ejected(now)).count();
    if (ejected + 1) * 100 > passive.max_ejection_percent as usize * members {
        return None;
    }
    let length = backend.eject(
        now,
        passive.base_ejection_time,
        crate::config::resilience::MAX_EJECTION_MULTIPLIER,
    );
    Some((failures, length))
}
