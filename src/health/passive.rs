//! Passive health (outlier detection): backends that fail real requests are ejected for a
//! while, longer each time, without ever ejecting more than a set share of the pool. Active
//! probes live beside it in [`super::active`].

use crate::upstream::backend::clock_nanos;
use crate::upstream::Pool;

/// Records a failure of member `index` of `pool`; ejects it once it has failed
/// `consecutive_failures` times in a row, unless that would eject more than
/// `max_ejection_percent` of the pool.
pub fn record_failure(pool: &Pool, index: usize) {
    let Some(member) = pool.members().get(index) else {
        return;
    };
    let failures = member.backend.record_failure();
    let passive = &pool.config().passive;
    if passive.consecutive_failures == 0 || failures < passive.consecutive_failures {
        return;
    }
    let now = clock_nanos();
    if member.backend.is_ejected(now) {
        return;
    }
    let ejected = pool.members().iter().filter(|m| m.backend.is_ejected(now)).count();
    if (ejected + 1) * 100 > passive.max_ejection_percent as usize * pool.members().len() {
        return;
    }
    let length = member.backend.eject(
        now,
        passive.base_ejection_time,
        crate::config::resilience::MAX_EJECTION_MULTIPLIER,
    );
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
