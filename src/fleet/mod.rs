//! What a fleet of Steelyards shares, kept in engines such fleets already run: rate limits
//! (counted here or in Redis) and backends discovered in DNS.

pub mod discovery;
pub mod gcra_table;
pub mod rate_limit;
pub mod redis_limit;
