//! What a fleet of Steelyards shares, kept in engines such fleets already run: rate limits
//! (counted here or in Redis) and backends discovered in DNS or registered in etcd.

pub mod discovery;
pub mod discovery_status;
pub mod etcd;
pub mod etcd_backends;
pub mod gcra_table;
pub mod rate_limit;
pub mod redis_limit;
