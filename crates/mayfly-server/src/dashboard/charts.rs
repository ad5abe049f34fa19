//! Server-rendered SVG charts: no script, nothing fetched. Every mark carries its numbers as
//! `data-*` attributes and a `<title>` (the tooltip), so a test (or a screen reader) reads the
//! same values the picture shows.

use maud::{html, Markup};

use crate::usage::{DayRow, JobLine};

const W: f64 = 720.0;
const H: f64 = 180.0;
const LEFT: f64 = 44.0;
const BOTTOM: f64 = 22.0;

/// Colours for series, in order (colour-blind safe: Okabe–Ito).
const PALETTE: [&str; 8] = [
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000",
];

fn colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// A conclusion's colour: green for success, red for failure, grey otherwise.
fn conclusion_colour(c: &str) -> &'static str {
    match c {
        "success" => "#009E73",
        "failure" | "timed_out" => "#D55E00",
        "cancelled" => "#999999",
        "pending" => "#56B4E9",
        _ => "#E69F00",
    }
}

fn nice_max(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let magnitude = 10_f64.powf(max.log10().floor());
    for step in [1.0, 2.0, 5.0, 10.0] {
        if max <= step * magnitude {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

fn axis(max: f64, unit: &str, days: &[DayRow]) -> Markup {
    let plot_h = H - BOTTOM;
    let band = (W - LEFT) / days.len().max(1) as f64;
    let every = (days.len() / 8).max(1);
    html! {
        line x1=(LEFT) y1="0" x2=(LEFT) y2=(plot_h) class="axis" {}
        line x1=(LEFT) y1=(plot_h) x2=(W) y2=(plot_h) class="axis" {}
        text x=(LEFT - 4.0) y="10" class="tick" text-anchor="end" { (fmt(max)) }
        text x=(LEFT - 4.0) y=(plot_h) class="tick" text-anchor="end" { "0" }
        text x="2" y=(plot_h / 2.0) class="tick" { (unit) }
        @for (i, d) in days.iter().enumerate() {
            @if i % every == 0 {
                text x=(LEFT + band * (i as f64 + 0.5)) y=(H - 6.0) class="tick" text-anchor="middle" {
                    (d.day.format("%m-%d"))
                }
            }
        }
    }
}

fn fmt(x: f64) -> String {
    if x >= 100.0 || x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

/// What a chart is called and measures.
struct Chart {
    id: &'static str,
    label: &'static str,
    unit: &'static str,
    /// `data-kind` of its marks.
    kind: &'static str,
}

/// A series of the queue chart: its name and its value on a day.
type Series = (&'static str, fn(&DayRow) -> Option<f64>);

/// Stacked bars per day: one series per key.
fn stacked(
    chart: Chart,
    days: &[DayRow],
    keys: &[String],
    value: impl Fn(&DayRow, &str) -> f64,
    key_colour: impl Fn(usize, &str) -> &'static str,
) -> Markup {
    let Chart {
        id,
        label,
        unit,
        kind: attr,
    } = chart;
    let totals: Vec<f64> = days
        .iter()
        .map(|d| keys.iter().map(|k| value(d, k)).sum())
        .collect();
    let max = nice_max(totals.iter().copied().fold(0.0, f64::max));
    let plot_h = H - BOTTOM;
    let band = (W - LEFT) / days.len().max(1) as f64;
    html! {
        figure {
            figcaption { (label) }
            svg id=(id) class="chart" viewBox=(format!("0 0 {W} {H}")) role="img" aria-label=(label) {
                (axis(max, unit, days))
                @for (i, d) in days.iter().enumerate() {
                    @let x = LEFT + band * i as f64 + band * 0.15;
                    @let mut y = plot_h;
                    @for (k, key) in keys.iter().enumerate() {
                        @let v = value(d, key);
                        @if v > 0.0 {
                            @let h = v / max * plot_h;
                            @let top = { y -= h; y };
                            rect class="bar" x=(x) y=(top) width=(band * 0.7) height=(h)
                                fill=(key_colour(k, key)) data-day=(d.day.to_string())
                                data-series=(key) data-value=(v) data-kind=(attr) {
                                title { (d.day) " · " (key) ": " (fmt(v)) " " (unit) }
                            }
                        }
                    }
                }
            }
            (legend(keys, &key_colour))
        }
    }
}

fn legend(keys: &[String], key_colour: &impl Fn(usize, &str) -> &'static str) -> Markup {
    html! {
        ul class="legend" {
            @for (k, key) in keys.iter().enumerate() {
                li {
                    svg class="swatch" width="10" height="10" viewBox="0 0 10 10" { rect width="10" height="10" fill=(key_colour(k, key)) {} }
                    " " (key)
                }
            }
        }
    }
}

/// Billed minutes per day, stacked by machine type.
pub fn minutes(days: &[DayRow]) -> Markup {
    minutes_by(
        Chart {
            id: "chart-minutes",
            label: "Billed minutes per day, by machine type",
            unit: "min",
            kind: "minutes",
        },
        days,
        |d| &d.minutes_by_machine_type,
    )
}

/// Billed minutes per day, stacked by repository.
pub fn minutes_by_repo(days: &[DayRow]) -> Markup {
    minutes_by(
        Chart {
            id: "chart-minutes-repo",
            label: "Billed minutes per day, by repository",
            unit: "min",
            kind: "minutes",
        },
        days,
        |d| &d.minutes_by_repo,
    )
}

fn minutes_by(
    chart: Chart,
    days: &[DayRow],
    series: impl Fn(&DayRow) -> &std::collections::BTreeMap<String, f64>,
) -> Markup {
    let keys: Vec<String> = days
        .iter()
        .flat_map(|d| series(d).keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    stacked(
        chart,
        days,
        &keys,
        |d, k| series(d).get(k).copied().unwrap_or(0.0),
        |i, _| colour(i),
    )
}

/// Jobs per day, stacked by conclusion.
pub fn jobs(days: &[DayRow]) -> Markup {
    let keys: Vec<String> = days
        .iter()
        .flat_map(|d| d.numbers.conclusions.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    stacked(
        Chart {
            id: "chart-jobs",
            label: "Jobs per day, by conclusion",
            unit: "jobs",
            kind: "jobs",
        },
        days,
        &keys,
        |d, k| d.numbers.conclusions.get(k).copied().unwrap_or(0) as f64,
        |_, k| conclusion_colour(k),
    )
}

/// Queue time p50/p90/p99 per day, as points joined by lines.
pub fn queue(days: &[DayRow]) -> Markup {
    let series: [Series; 3] = [
        ("p50", |d| d.numbers.queue_p50),
        ("p90", |d| d.numbers.queue_p90),
        ("p99", |d| d.numbers.queue_p99),
    ];
    let max = nice_max(
        days.iter()
            .filter_map(|d| d.numbers.queue_p99)
            .fold(0.0, f64::max),
    );
    let plot_h = H - BOTTOM;
    let band = (W - LEFT) / days.len().max(1) as f64;
    let keys: Vec<String> = series.iter().map(|(n, _)| (*n).to_owned()).collect();
    html! {
        figure {
            figcaption { "Queue time per day (queued at GitHub → runner started)" }
            svg id="chart-queue" class="chart" viewBox=(format!("0 0 {W} {H}")) role="img"
                aria-label="Queue time per day" {
                (axis(max, "s", days))
                @for (s, (name, get)) in series.iter().enumerate() {
                    @let points: Vec<(f64, f64, &DayRow, f64)> = days.iter().enumerate()
                        .filter_map(|(i, d)| get(d).map(|v| (LEFT + band * (i as f64 + 0.5), plot_h - v / max * plot_h, d, v)))
                        .collect();
                    polyline class="line" fill="none" stroke=(colour(s))
                        points=(points.iter().map(|(x, y, _, _)| format!("{x:.1},{y:.1}")).collect::<Vec<_>>().join(" ")) {}
                    @for (x, y, d, v) in &points {
                        circle class="point" cx=(x) cy=(y) r="3" fill=(colour(s)) data-day=(d.day.to_string())
                            data-series=(name) data-value=(v) data-kind="queue" {
                            title { (d.day) " · queue " (name) ": " (fmt(*v)) " s" }
                        }
                    }
                }
            }
            (legend(&keys, &|i, _| colour(i)))
        }
    }
}

/// One job's phases as a horizontal waterfall.
pub fn waterfall(job: &JobLine) -> Markup {
    const WW: f64 = 260.0;
    const WH: f64 = 14.0;
    let total = job
        .phases
        .iter()
        .map(|p| p.offset_seconds + p.seconds)
        .fold(0.0, f64::max)
        .max(0.001);
    html! {
        svg class="waterfall" viewBox=(format!("0 0 {WW} {WH}")) width=(WW) height=(WH) role="img"
            aria-label=(format!("phases of job {}", job.job_id)) {
            @for (i, p) in job.phases.iter().enumerate() {
                rect x=(p.offset_seconds / total * WW) y="1" width=((p.seconds / total * WW).max(0.5))
                    height=(WH - 2.0) fill=(colour(i)) data-phase=(p.phase) data-seconds=(p.seconds) {
                    title { (p.phase) ": " (format!("{:.2}", p.seconds)) " s" }
                }
            }
        }
    }
}
