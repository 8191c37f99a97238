//! `steelyard simulate` through the real binary: the table, the SVG, a config's pool, bad
//! profiles.

mod support;

use std::process::{Command, Output};

use support::BIN;

fn simulate(args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .arg("simulate")
        .args(args)
        .env_remove("STEELYARD_CONFIG")
        .output()
        .expect("run steelyard simulate");
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The table rows: algorithm name to its cells.
fn rows(text: &str) -> Vec<(String, Vec<String>)> {
    text.lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| algorithm") && !l.starts_with("| ---"))
        .map(|l| {
            let cells: Vec<String> = l.trim_matches('|').split('|').map(|c| c.trim().to_owned()).collect();
            (cells[0].clone(), cells[1..].to_vec())
        })
        .collect()
}

/// "4.87 ms" or "12.3 s" in milliseconds.
fn ms(cell: &str) -> f64 {
    let (n, unit) = cell.split_once(' ').expect("value and unit");
    let n: f64 = n.parse().expect("number");
    if unit == "s" {
        n * 1000.0
    } else {
        n
    }
}

const ALGORITHMS: [&str; 7] = [
    "round_robin",
    "least_connections",
    "least_request",
    "peak_ewma",
    "random",
    "maglev",
    "ring_hash",
];

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("simulate-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

#[test]
fn one_slow_backend_shows_which_algorithms_avoid_it() {
    let dir = temp_dir("one-slow");
    let svg = dir.join("one-slow.svg");
    let out = simulate(&[
        "--profile",
        "one-slow",
        "--duration",
        "20s",
        "--svg",
        svg.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("Profile one-slow: four backends"), "{text}");
    let rows = rows(&text);
    let names: Vec<&str> = rows.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ALGORITHMS);
    let cell = |name: &str, i: usize| {
        rows.iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c[i].clone())
            .expect(name)
    };
    // p99: peak_ewma and least_request keep clear of the slow backend; round robin sends it
    // a fifth of the requests, so more than 1% of them are slow.
    assert!(ms(&cell("peak_ewma", 1)) * 3.0 < ms(&cell("round_robin", 1)), "{text}");
    assert!(ms(&cell("least_request", 1)) < ms(&cell("round_robin", 1)), "{text}");
    // Round robin's spread is exactly even; nothing failed.
    assert_eq!(cell("round_robin", 6), "20.0 20.0 20.0 20.0 20.0");
    for (name, cells) in &rows {
        assert_eq!(cells[3], "0", "{name} errors");
    }
    let picture = std::fs::read_to_string(&svg).expect("svg written");
    assert!(picture.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(picture.trim_end().ends_with("</svg>"));
    for name in ALGORITHMS {
        assert_eq!(picture.matches(&format!("<title>{name} p")).count(), 3, "{name}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_config_pool_sets_the_backends_and_weights() {
    let dir = temp_dir("config");
    let config = dir.join("steelyard.toml");
    std::fs::write(
        &config,
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\nroutes = [{ pool = \"web\" }]\n\n\
         [pools.api]\nbackends = [\"127.0.0.1:1\"]\n\n\
         [pools.web]\nbackends = [\"127.0.0.1:2\", \"127.0.0.1:3\", { address = \"127.0.0.1:4\", weight = 2 }]\n",
    )
    .expect("config");
    let path = config.to_str().expect("utf-8");
    let out = simulate(&[
        "--config",
        path,
        "--pool",
        "web",
        "--profile",
        "uniform",
        "--duration",
        "5s",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("\n3 backends, 5 s simulated"), "{text}");
    let rr = rows(&text)
        .into_iter()
        .find(|(n, _)| n == "round_robin")
        .expect("round_robin");
    assert_eq!(rr.1[6], "25.0 25.0 50.0", "{text}");

    let out = simulate(&["--config", path, "--pool", "nope", "--profile", "uniform"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("has no pool \"nope\" (pools: api, web)"),
        "{}",
        stderr(&out)
    );
    let out = simulate(&["--pool", "web", "--profile", "uniform"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("give the file too"), "{}", stderr(&out));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_built_in_profile_runs_and_draws() {
    let dir = temp_dir("all");
    let out = simulate(&["--duration", "3s", "--svg", dir.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for name in ["uniform", "one-slow", "bimodal", "outage"] {
        assert!(text.contains(&format!("Profile {name}: ")), "{name}: {text}");
        assert!(dir.join(format!("{name}.svg")).exists(), "{name}.svg");
    }
    assert_eq!(rows(&text).len(), 4 * ALGORITHMS.len());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_profile_names_the_file_line_and_key() {
    let dir = temp_dir("bad");
    let file = dir.join("mine.toml");
    std::fs::write(
        &file,
        "duration = \"10s\"\nrate = 100\n\n[[backends]]\nlatency = { median = \"5ms\", p99 = \"20ms\" }\nconcurency = 4\n",
    )
    .expect("profile");
    let out = simulate(&["--profile", file.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(
        e.contains("mine.toml") && e.contains("line 6") && e.contains("concurency"),
        "{e}"
    );
    let out = simulate(&["--profile", "no-such-profile"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("built-in: uniform, one-slow, bimodal, outage"),
        "{}",
        stderr(&out)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
