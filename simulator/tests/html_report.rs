//! `--report-html` rendered by a real browser: a short run against the embedded hub writes the
//! page, headless Chromium loads it from the file (offline: the page has nothing to fetch),
//! its DOM holds the four charts with their lines, and its screenshot is not blank. Chromium
//! comes from the `chromium` Debian package (scripts/test installs it when missing); the test
//! fails without it rather than passing unchecked.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return p.into();
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!("no chromium on PATH (Debian: apt-get install chromium; scripts/test installs it)");
}

/// Runs headless Chromium on `page` with `args`; its stdout. Killed after a minute.
fn headless(page: &Path, profile: &Path, args: &[&str]) -> String {
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let mut out = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within a minute");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    reader.join().expect("reader")
}

#[test]
fn headless_chromium_renders_the_charts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let page = dir.path().join("report.html");
    let (report, _stdout) = support::run_report([
        "run",
        "--things",
        "20",
        "--duration",
        "3s",
        "--rate",
        "100",
        "--threshold",
        "errors==0",
        "--report-html",
        page.to_str().expect("utf-8 path"),
    ]);
    assert!(support::count(&report, "/accepted") > 0, "{report}");
    let html = std::fs::read_to_string(&page).expect("page written");
    // Self-contained: no script, stylesheet, font or image from elsewhere.
    for outside in ["<script", "<link", "src=", "@import", "url("] {
        assert!(!html.contains(outside), "the page has {outside}");
    }

    let profile = dir.path().join("profile");
    let dom = headless(&page, &profile, &["--dump-dom"]);
    // The browser parsed the page into four SVG charts, each with its lines.
    assert_eq!(dom.matches("<svg class=\"chart\"").count(), 4, "{dom}");
    for id in ["throughput", "latency", "distribution", "connects"] {
        let at = dom
            .find(&format!("id=\"{id}\""))
            .unwrap_or_else(|| panic!("chart {id} missing"));
        let chart = &dom[at..at + dom[at..].find("</svg>").expect("closed")];
        assert!(
            chart.contains("<polyline class=\"series\""),
            "chart {id} has no line: {chart}"
        );
    }
    assert!(dom.contains("errors==0"), "thresholds listed");

    let shot = dir.path().join("shot.png");
    headless(
        &page,
        &profile,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1000,1400",
        ],
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&shot).expect("screenshot written"),
    ));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("a frame");
    let bytes = &buf[..info.buffer_size()];
    let channels = info.color_type.samples();
    // Not blank: a share of the pixels is neither white nor background, and the chart colours
    // (the blue of the first line) appear.
    let pixels: Vec<&[u8]> = bytes.chunks(channels).collect();
    let inked = pixels.iter().filter(|p| p[..3] != [255, 255, 255]).count();
    assert!(
        inked * 100 > pixels.len(),
        "{inked} of {} pixels drawn",
        pixels.len()
    );
    let blue = pixels
        .iter()
        .filter(|p| p[2] > 150 && p[0] < 80 && p[1] > 90 && p[1] < 150)
        .count();
    assert!(blue > 100, "the lines' blue: {blue} pixels");
}
