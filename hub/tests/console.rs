//! The web console end to end in a real browser: headless Chromium driven through chromedriver
//! (WebDriver), against the real hub binary and a real device built on `iothub-sdk`.
//!
//! Sign in, create a thing, connect the device with the secret the page showed and watch the
//! list turn it connected without a reload, set desired state in the page and see the device's
//! reported value appear, call a method and see the answer, then an unknown method and its error
//! code. Screenshots of each page go to `$CARGO_TARGET_TMPDIR/console-screenshots/`
//! (examples are committed in `docs/console/`). Needs `chromium` and `chromedriver` (Debian
//! packages `chromium` and `chromium-driver`; `scripts/test` installs them when missing).

mod support;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use support::{ADMIN_TOKEN, Hub, STEP, eventually, unique};

/// chromedriver, killed when the test ends however it ends.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

async fn start_browser() -> (Driver, Client) {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver must be installed (Debian package chromium-driver; scripts/test installs it)");
    let driver = Driver(child);
    let url = format!("http://127.0.0.1:{port}");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({ "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000"] }),
    );
    let client = eventually(STEP, || {
        let caps = caps.clone();
        let url = url.clone();
        async move {
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps)
                .connect(&url)
                .await
                .ok()
        }
    })
    .await
    .expect("chromedriver starts a browser session");
    (driver, client)
}

fn shots_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(shots_dir().join(format!("{name}.png")), png).expect("write screenshot");
}

async fn text(c: &Client, css: &str) -> Option<String> {
    c.find(Locator::Css(css)).await.ok()?.text().await.ok()
}

/// Waits until the element's text satisfies `ok`; fails with the last text seen.
async fn wait_text(c: &Client, css: &str, ok: impl Fn(&str) -> bool) -> String {
    let found = eventually(STEP, || async { text(c, css).await.filter(|t| ok(t)) }).await;
    match found {
        Some(t) => t,
        None => panic!(
            "{css}: never as expected; last text {:?}",
            text(c, css).await
        ),
    }
}

/// How many samples the metrics page has taken (0 before the first or on an error).
async fn samples(c: &Client) -> u64 {
    c.execute(
        "return Number(document.getElementById('charts').dataset.samples || 0)",
        vec![],
    )
    .await
    .ok()
    .and_then(|v| v.as_u64())
    .unwrap_or(0)
}

async fn fill(c: &Client, css: &str, value: &str) {
    let el = c.find(Locator::Css(css)).await.expect(css);
    el.clear().await.expect("clear");
    el.send_keys(value).await.expect("type");
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .expect(css)
        .click()
        .await
        .expect("click");
}

async fn wait_streaming(c: &Client) {
    eventually(STEP, || async {
        let v = c
            .execute("return document.body.dataset.streaming || null", vec![])
            .await
            .ok()?;
        (v == Value::String("1".into())).then_some(())
    })
    .await
    .expect("the page's event stream opens");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_drives_a_real_device() {
    let hub = Hub::start();
    let base = hub.base_url();
    let (_driver, c) = start_browser().await;

    // Signed out, every page leads to the sign-in form; a wrong token is refused.
    c.goto(&format!("{base}/")).await.expect("open console");
    c.wait()
        .for_element(Locator::Css("#token"))
        .await
        .expect("sign-in form");
    shot(&c, "01-sign-in").await;
    fill(&c, "#token", "wrong").await;
    click(&c, "#sign-in").await;
    wait_text(&c, "#notice", |t| t.contains("Wrong token")).await;
    fill(&c, "#token", ADMIN_TOKEN).await;
    click(&c, "#sign-in").await;
    c.wait()
        .for_element(Locator::Css("#things"))
        .await
        .expect("things list");

    // Create: the secret is shown once.
    let id = unique("console");
    fill(&c, "#new-thing-id", &id).await;
    click(&c, "#create-thing").await;
    let secret = wait_text(&c, "#secret", |t| !t.is_empty()).await;
    let badge = format!("[data-conn=\"{id}\"]");
    assert_eq!(text(&c, &badge).await.as_deref(), Some("disconnected"));
    wait_streaming(&c).await;
    // A marker that a reload would wipe out.
    c.execute("window.__sameDocument = 1", vec![])
        .await
        .expect("marker");
    shot(&c, "02-things-created").await;

    // A real SDK device with the shown secret: the badge turns without a reload.
    let options = iothub_sdk::ThingOptions::with_addr(&id, &secret, &hub.mqtt.to_string())
        .expect("options")
        .on_method("reboot", |req| async move {
            Ok(json!({ "rebooting": true, "asked": req.data }))
        })
        .expect("method handler")
        // Installs whatever it is sent: half-way, then done.
        .on_ota_task(|task| async move {
            let _ = task.progress(50).await;
            let _ = task.done().await;
        });
    let device = iothub_sdk::Thing::connect(options)
        .await
        .expect("device connects");
    wait_text(&c, &badge, |t| t == "connected").await;
    let same = c
        .execute("return window.__sameDocument || null", vec![])
        .await
        .expect("marker read");
    assert_eq!(same, json!(1), "the list updated without a reload");
    shot(&c, "03-things-connected").await;

    // The device reports whatever desired state it is sent.
    let shadow = device.shadow("default");
    let mut deltas = shadow.deltas().expect("deltas");
    let reporter = tokio::spawn(async move {
        use iothub_sdk::StreamExt as _;
        while let Some(delta) = deltas.next().await {
            if shadow.report(&delta.state).await.is_err() {
                break;
            }
        }
    });

    // Desired state set in the page; the device's reported value appears in it.
    c.goto(&format!("{base}/console/things/{id}"))
        .await
        .expect("thing page");
    c.wait()
        .for_element(Locator::Css("#desired-form"))
        .await
        .expect("thing page");
    fill(&c, "#desired", r#"{"led":"on","period":5}"#).await;
    click(&c, "#set-desired").await;
    wait_text(&c, "#notice", |t| t.contains("accepted")).await;
    wait_text(&c, "#shadow-default [data-part=reported] pre", |t| {
        t.contains("\"led\": \"on\"") && t.contains("\"period\": 5")
    })
    .await;
    wait_text(&c, "#shadow-default [data-part=desired] pre", |t| {
        t.contains("\"led\": \"on\"")
    })
    .await;
    shot(&c, "04-thing-shadow").await;

    // A method call and its answer; an unknown method and its error code.
    fill(&c, "#method", "reboot").await;
    fill(&c, "#payload", r#"{"delay":2}"#).await;
    click(&c, "#invoke").await;
    wait_text(&c, "#method-code", |t| t == "200").await;
    let data = wait_text(&c, "#method-data", |t| t.contains("rebooting")).await;
    assert!(
        data.contains("\"delay\": 2"),
        "the payload reached the device: {data}"
    );
    shot(&c, "05-thing-method").await;
    fill(&c, "#method", "no-such-method").await;
    fill(&c, "#timeout", "5").await;
    click(&c, "#invoke").await;
    wait_text(&c, "#method-code", |t| t == "404").await;

    // The metrics page draws its charts from live samples: one thing connected, and the
    // shadow updates above went through the hub.
    c.goto(&format!("{base}/console/metrics"))
        .await
        .expect("metrics page");
    eventually(STEP, || async { (samples(&c).await >= 3).then_some(()) })
        .await
        .expect("the metrics page takes samples");
    wait_text(&c, "#last-connected", |t| t == "now: 1").await;
    // Shadow updates and method calls while the page samples: its percentiles become numbers.
    let traffic = async {
        for n in 0u64.. {
            let (status, _) = hub
                .put(
                    &format!("/things/{id}/shadows/default/state/desired"),
                    json!({"state": {"desired": {"n": n}}}),
                )
                .await;
            assert_eq!(status, 200, "desired write for the charts");
            let (status, _) = hub
                .post(
                    &format!("/things/{id}/methods/reboot"),
                    json!({"data": {"n": n}}),
                )
                .await;
            assert_eq!(status, 200, "method call for the charts");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let charted = async {
        for id in ["#last-update-latency", "#last-method-latency"] {
            wait_text(&c, id, |t| {
                t.strip_prefix("now: ")
                    .and_then(|v| v.split(" / ").next())
                    .is_some_and(|p50| p50.parse::<f64>().is_ok())
            })
            .await;
        }
        // One more interval under traffic, so the percentile charts hold a line, not a dot.
        let seen = samples(&c).await;
        eventually(STEP, || async { (samples(&c).await > seen).then_some(()) })
            .await
            .expect("one more sample");
    };
    tokio::select! {
        () = traffic => unreachable!("the traffic loop runs until the charts show it"),
        () = charted => {}
    }
    let points = c
        .find(Locator::Css("#chart-connected polyline"))
        .await
        .expect("the connected-things chart has a line")
        .attr("points")
        .await
        .expect("points")
        .unwrap_or_default();
    assert!(
        points.split(' ').count() >= 2,
        "a line of samples: {points:?}"
    );
    for id in ["rate", "update-latency", "method-latency"] {
        c.find(Locator::Css(&format!("#chart-{id} polyline")))
            .await
            .unwrap_or_else(|_| panic!("chart {id} is drawn"));
    }
    shot(&c, "06-metrics").await;
    // An OTA job created in the page: the device installs it and the page shows the progress.
    c.goto(&format!("{base}/console/ota"))
        .await
        .expect("ota page");
    fill(&c, "#targets", &id).await;
    fill(&c, "#version", "1.2.3").await;
    fill(&c, "#file_url", "http://127.0.0.1:9/firmware-1.2.3.bin").await;
    shot(&c, "07-ota-new-job").await;
    click(&c, "#create-job").await;
    wait_text(&c, "#count-done", |t| t == "1").await;
    wait_text(&c, "#job-status", |t| t == "completed").await;
    let job_id = wait_text(&c, "#job-id", |t| t.len() == 16).await;
    wait_text(&c, &format!("[data-task=\"{id}\"] .state"), |t| t == "done").await;
    shot(&c, "08-ota-job-done").await;
    let (status, job) = hub.get(&format!("/ota/jobs/{job_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(job["data"]["status"], json!("completed"), "{job}");

    // A job for a thing that is not connected waits, and the page cancels it.
    let idle = unique("console-idle");
    hub.create_thing(&idle).await;
    c.goto(&format!("{base}/console/ota"))
        .await
        .expect("ota page");
    fill(&c, "#targets", &idle).await;
    fill(&c, "#version", "1.2.4").await;
    fill(&c, "#file_url", "http://127.0.0.1:9/firmware-1.2.4.bin").await;
    click(&c, "#create-job").await;
    wait_text(&c, "#count-queued", |t| t == "1").await;
    c.goto(&format!("{base}/console/ota"))
        .await
        .expect("ota list");
    wait_text(&c, "#jobs", |t| t.contains("1.2.4")).await;
    shot(&c, "09-ota-running").await;
    click(&c, "#jobs a").await;
    click(&c, "#cancel").await;
    wait_text(&c, "#job-status", |t| t == "canceled").await;
    wait_text(&c, "#count-canceled", |t| t == "1").await;
    shot(&c, "10-ota-job-canceled").await;

    c.goto(&format!("{base}/console/things/{id}"))
        .await
        .expect("thing page again");
    c.wait()
        .for_element(Locator::Css("#desired-form"))
        .await
        .expect("thing page");

    // The same answers through the REST API: the page showed the hub's real state.
    let (status, doc) = hub.rest_shadow(&id, "default").await;
    assert_eq!(status, 200);
    assert_eq!(doc["state"]["reported"]["led"], json!("on"));

    // Disabling from the thing page closes the device's connection (S-1.3).
    c.find(Locator::XPath(
        "//form[contains(@action,'/enabled')]//button",
    ))
    .await
    .expect("disable button")
    .click()
    .await
    .expect("disable");
    wait_text(&c, "#thing-id + [data-conn]", |t| t == "disconnected").await;
    assert!(
        text(&c, "main")
            .await
            .unwrap_or_default()
            .contains("Disabled")
    );
    let (_, thing) = hub.rest_thing(&id).await;
    assert_eq!(thing["enabled"], json!(false));

    reporter.abort();
    device.close().await;
    c.close().await.expect("close browser");
}

/// A plain HTTP client that shows redirects instead of following them.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client")
}

/// Signs in with the admin token; returns the `name=value` cookie pair of the session.
async fn sign_in(base: &str) -> String {
    let resp = http()
        .post(format!("{base}/console/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={ADMIN_TOKEN}"))
        .send()
        .await
        .expect("sign in");
    assert_eq!(resp.status(), 303, "signed in and sent to the list");
    let set = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a session cookie");
    set.split(';').next().expect("name=value").to_owned()
}

/// A form POST with the session cookie; returns the status, the `Location` and the body.
async fn post_form(base: &str, path: &str, cookie: &str, body: &str) -> (u16, String, String) {
    let resp = http()
        .post(format!("{base}{path}"))
        .header("cookie", cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_owned())
        .send()
        .await
        .expect(path);
    let status = resp.status().as_u16();
    let location = location(&resp);
    (status, location, resp.text().await.unwrap_or_default())
}

fn location(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// The CSRF token a page puts into its forms.
async fn csrf_of(base: &str, cookie: &str) -> String {
    let page = http()
        .get(format!("{base}/"))
        .header("cookie", cookie)
        .send()
        .await
        .expect("list page")
        .text()
        .await
        .expect("list page text");
    let at = page
        .find(r#"name="csrf" value=""#)
        .expect("a CSRF field on the page");
    let rest = &page[at + r#"name="csrf" value=""#.len()..];
    rest[..rest.find('"').expect("end of value")].to_owned()
}

#[tokio::test]
async fn pages_without_a_live_session_lead_to_sign_in() {
    let hub = Hub::start();
    let base = hub.base_url();
    let get = |cookie: Option<String>, path: &'static str| {
        let base = base.clone();
        async move {
            let mut req = http().get(format!("{base}{path}"));
            if let Some(c) = cookie {
                req = req.header("cookie", c);
            }
            let resp = req.send().await.expect(path);
            (resp.status().as_u16(), location(&resp))
        }
    };
    let to_sign_in = (303, "/console/login".to_owned());
    assert_eq!(get(None, "/").await, to_sign_in, "no cookie");
    let unknown = Some("iothub_console=not-a-session".to_owned());
    assert_eq!(get(unknown.clone(), "/").await, to_sign_in, "unknown id");
    assert_eq!(
        get(unknown, "/console/events").await,
        to_sign_in,
        "no event stream either"
    );

    // A live session sees the list; once it has ended, its cookie leads to sign-in again.
    let cookie = sign_in(&base).await;
    assert_eq!(get(Some(cookie.clone()), "/").await.0, 200);
    let csrf = csrf_of(&base, &cookie).await;
    let (status, to, _) =
        post_form(&base, "/console/logout", &cookie, &format!("csrf={csrf}")).await;
    assert_eq!((status, to.as_str()), (303, "/console/login"));
    assert_eq!(get(Some(cookie), "/").await, to_sign_in, "ended session");
}

#[tokio::test]
async fn writes_without_the_csrf_token_are_refused() {
    let hub = Hub::start();
    let base = hub.base_url();
    let cookie = sign_in(&base).await;
    let id = unique("csrf");
    for body in [
        format!("thing_id={id}"),
        format!("thing_id={id}&csrf=forged"),
    ] {
        let (status, _, page) = post_form(&base, "/console/things", &cookie, &body).await;
        assert_eq!(status, 403, "{body}");
        assert!(page.contains("CSRF"), "the page says why: {page}");
        assert_eq!(hub.rest_thing(&id).await.0, 404, "nothing was created");
    }
    let csrf = csrf_of(&base, &cookie).await;
    let (status, _, page) = post_form(
        &base,
        "/console/things",
        &cookie,
        &format!("thing_id={id}&csrf={csrf}"),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(hub.rest_thing(&id).await.0, 200, "created with the token");
    let (status, _, _) = post_form(
        &base,
        &format!("/console/things/{id}/delete"),
        &cookie,
        "csrf=",
    )
    .await;
    assert_eq!(status, 403, "an empty token is no token");
    assert_eq!(hub.rest_thing(&id).await.0, 200, "still there");
}

#[tokio::test]
async fn the_thirty_third_event_stream_is_refused() {
    let hub = Hub::start();
    let base = hub.base_url();
    let cookie = sign_in(&base).await;
    let client = http();
    let open = || async {
        client
            .get(format!("{base}/console/events"))
            .header("cookie", &cookie)
            .send()
            .await
            .expect("event stream")
    };
    // Held open (their bodies unread) until the end of the test.
    let mut streams = Vec::new();
    for _ in 0..32 {
        let resp = open().await;
        assert_eq!(resp.status(), 200);
        assert!(
            resp.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.starts_with("text/event-stream"))
        );
        streams.push(resp);
    }
    let refused = open().await;
    assert_eq!(refused.status(), 503);
    let text = refused.text().await.expect("refusal page");
    assert!(
        text.contains("too many console event streams open"),
        "it says so: {text}"
    );
    drop(streams);
}
