//! The simulator's output: a text table and an SVG chart of latency per algorithm.

use std::fmt::Write as _;
use std::time::Duration;

use super::{Outcome, Profile};

/// A latency for people: "4.87 ms", "152 ms", "12.3 s".
fn human(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 100.0 {
        format!("{ms:.1} ms")
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else if ms < 10_000.0 {
        format!("{:.2} s", ms / 1e3)
    } else {
        format!("{:.1} s", ms / 1e3)
    }
}

/// `n` with thousands separators.
fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Each backend's share of the answered requests, in percent: every one for up to eight
/// backends, else the smallest and largest.
fn spread(o: &Outcome) -> String {
    let total: u64 = o.served.iter().sum();
    let pct = |n: u64| {
        if total == 0 {
            0.0
        } else {
            n as f64 * 100.0 / total as f64
        }
    };
    if o.served.len() <= 8 {
        o.served
            .iter()
            .map(|&n| format!("{:.1}", pct(n)))
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        let min = o.served.iter().copied().min().unwrap_or(0);
        let max = o.served.iter().copied().max().unwrap_or(0);
        format!("{:.1} to {:.1}", pct(min), pct(max))
    }
}

/// The results as a Markdown table, under a line that describes the workload.
pub fn table(profile: &Profile, outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    let requests = outcomes.first().map_or(0, |o| o.requests);
    let _ = writeln!(out, "Profile {}: {}", profile.name, profile.description);
    let _ = writeln!(
        out,
        "{} backends, {} s simulated, {} requests (seed {}). Latency runs from arrival to \
         response, queueing and retries included.\n",
        outcomes.first().map_or(0, |o| o.served.len()),
        profile.duration.as_secs_f64(),
        count(requests),
        profile.seed,
    );
    let _ = writeln!(
        out,
        "| algorithm | p50 | p99 | p99.9 | errors | retries | ejections | requests per backend (%) |"
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    for o in outcomes {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            o.algorithm.name(),
            human(o.quantile(0.5)),
            human(o.quantile(0.99)),
            human(o.quantile(0.999)),
            count(o.errors),
            count(o.retries),
            o.ejections,
            spread(o),
        );
    }
    out
}

/// Bar colours of p50, p99 and p99.9.
const SERIES: [(&str, f64, &str); 3] = [
    ("p50", 0.5, "#4c78a8"),
    ("p99", 0.99, "#f58518"),
    ("p99.9", 0.999, "#e45756"),
];

/// Escapes text for SVG.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A horizontal bar chart of p50, p99 and p99.9 per algorithm, on a logarithmic axis: one
/// self-contained SVG file.
pub fn svg(profile: &Profile, outcomes: &[Outcome]) -> String {
    const WIDTH: f64 = 820.0;
    const LEFT: f64 = 140.0;
    const RIGHT: f64 = 30.0;
    const TOP: f64 = 70.0;
    const BAR: f64 = 9.0;
    const ROW: f64 = 3.0 * BAR + 14.0;
    let values: Vec<f64> = outcomes
        .iter()
        .flat_map(|o| SERIES.iter().map(move |&(_, q, _)| o.quantile(q).as_secs_f64() * 1e3))
        .filter(|v| *v > 0.0)
        .collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min).max(1e-3);
    let hi = values.iter().copied().fold(0.0, f64::max).max(lo * 10.0);
    // Decades that cover every value.
    let (lo_exp, hi_exp) = (lo.log10().floor(), hi.log10().ceil());
    let plot = WIDTH - LEFT - RIGHT;
    let x = |ms: f64| LEFT + (ms.max(10f64.powf(lo_exp)).log10() - lo_exp) / (hi_exp - lo_exp) * plot;
    let height = TOP + ROW * outcomes.len() as f64 + 40.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="22" font-size="15" font-weight="bold">steelyard simulate: {}</text>"#,
        escape(&profile.name)
    );
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="40" fill="#555555">{}</text>"##,
        escape(&profile.description)
    );
    // Legend.
    for (i, (name, _, colour)) in SERIES.iter().enumerate() {
        let lx = LEFT + i as f64 * 80.0;
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="50" width="12" height="10" fill="{colour}"/><text x="{}" y="59">{name}</text>"#,
            lx + 16.0
        );
    }
    // Grid: 1, 2 and 5 of every decade.
    let bottom = TOP + ROW * outcomes.len() as f64;
    let mut e = lo_exp;
    while e <= hi_exp {
        for m in [1.0, 2.0, 5.0] {
            let v = m * 10f64.powf(e);
            if v > 10f64.powf(hi_exp) * 1.0001 {
                break;
            }
            let gx = x(v);
            let (stroke, label) = if m == 1.0 {
                ("#bbbbbb", true)
            } else {
                ("#e5e5e5", m == 5.0 && hi_exp - lo_exp <= 3.0)
            };
            let _ = writeln!(
                s,
                r#"<line x1="{gx:.1}" y1="{TOP}" x2="{gx:.1}" y2="{bottom}" stroke="{stroke}"/>"#
            );
            if label {
                let text = if v >= 1000.0 {
                    format!("{} s", v / 1000.0)
                } else {
                    format!("{v} ms")
                };
                let _ = writeln!(
                    s,
                    r##"<text x="{gx:.1}" y="{}" text-anchor="middle" fill="#555555">{text}</text>"##,
                    bottom + 16.0
                );
            }
        }
        e += 1.0;
    }
    for (row, o) in outcomes.iter().enumerate() {
        let y = TOP + row as f64 * ROW + 4.0;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            LEFT - 8.0,
            y + 1.5 * BAR + 4.0,
            o.algorithm.name()
        );
        for (i, (name, q, colour)) in SERIES.iter().enumerate() {
            let v = o.quantile(*q);
            let by = y + i as f64 * BAR;
            let w = (x(v.as_secs_f64() * 1e3) - LEFT).max(1.0);
            let _ = writeln!(
                s,
                r#"<rect x="{LEFT}" y="{by:.1}" width="{w:.1}" height="{}" fill="{colour}"><title>{} {name}: {}</title></rect>"#,
                BAR - 1.0,
                o.algorithm.name(),
                human(v)
            );
        }
        if o.errors > 0 {
            let _ = writeln!(
                s,
                r##"<text x="{}" y="{}" text-anchor="end" fill="#b00020">{} errors</text>"##,
                WIDTH - RIGHT,
                y + 1.5 * BAR + 4.0,
                count(o.errors)
            );
        }
    }
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="{}" fill="#555555">latency, logarithmic scale</text>"##,
        bottom + 34.0
    );
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(human(Duration::from_micros(4870)), "4.87 ms");
        assert_eq!(human(Duration::from_micros(15_250)), "15.2 ms");
        assert_eq!(human(Duration::from_millis(152)), "152 ms");
        assert_eq!(human(Duration::from_millis(8_123)), "8.12 s");
        assert_eq!(human(Duration::from_millis(12_345)), "12.3 s");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(999), "999");
    }
}
