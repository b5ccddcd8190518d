//! The drawing page in a real browser: headless Chromium driven through chromedriver
//! (WebDriver), against the server started in this process with the shipped model. A stroke
//! drawn with the mouse must come out as a 1; a scribble's answer is recorded, not asserted
//! (what the model says about it is not a property of the page).
//!
//! The screenshot in README.md, `assets/screenshots/serve-page.png`, is this test's own: the
//! page after the stroke, rewritten by every run whose pixels differ from the committed file.
//! Beside it, `assets/screenshots/serve-page.json` records what the page showed (the verdict
//! and the rule in force, read from its DOM); the test fails when the page now shows something
//! else than the committed record says, so that a new model or rule cannot leave README with a
//! stale picture: commit the regenerated pair. The scribble's screenshot goes to
//! `target/browser/page-scribble.png`.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian's `chromium` and
//! `chromium-driver`; `.ci/run` installs them), or `OOD_CHROMIUM` and `OOD_CHROMEDRIVER`. When
//! they are absent the test says so and is skipped.

mod common;

use common::TestServer;
use fantoccini::actions::{InputSource, MouseActions, PointerAction, MOUSE_BUTTON_LEFT};
use fantoccini::{Client, ClientBuilder, Locator};
use ood_serve::ServeConfig;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn program(env: &str, default: &str) -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os(env).unwrap_or_else(|| default.into()));
    p.is_file().then_some(p)
}

/// chromedriver, killed when dropped (it is this test's own child).
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn connect(chromium: &std::path::Path, port: u16) -> Client {
    let profile = tempfile::tempdir().unwrap();
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1100,980",
        &format!("--user-data-dir={}", profile.path().display()),
    ];
    let caps = serde_json::json!({
        "goog:chromeOptions": { "binary": chromium, "args": args }
    });
    let caps = caps.as_object().unwrap().clone();
    // The profile folder must outlive the browser: leak it into the test's lifetime.
    std::mem::forget(profile);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => return c,
            // chromedriver may not be listening yet.
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for chromedriver: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("cannot start a browser session through chromedriver: {e}"),
        }
    }
}

/// Waits until the page has shown `n` answers; returns what the verdict says.
async fn answer(c: &Client, n: usize) -> (String, String, String) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = c
            .execute("return Number(document.body.dataset.answers)", vec![])
            .await
            .unwrap();
        if got.as_u64() == Some(n as u64) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no answer {n} on the page (saw {got})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let error = c
        .execute("return document.body.dataset.error || ''", vec![])
        .await
        .unwrap();
    assert_eq!(error, "", "the page shows an error");
    let verdict = c.find(Locator::Id("verdict")).await.unwrap();
    let text = verdict.text().await.unwrap();
    let decision = verdict
        .attr("data-decision")
        .await
        .unwrap()
        .unwrap_or_default();
    let guess = c
        .find(Locator::Id("guess"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    (text, decision, guess)
}

/// Presses the mouse at `points[0]` (pixels from the canvas centre), moves through the others
/// and releases: a real pointer stroke, as the browser gets it from a mouse.
async fn stroke(c: &Client, pad: &fantoccini::elements::Element, points: &[(i64, i64)]) {
    let mut actions = MouseActions::new("mouse".to_string()).then(PointerAction::MoveToElement {
        element: pad.clone(),
        duration: None,
        x: points[0].0 as _,
        y: points[0].1 as _,
    });
    actions = actions.then(PointerAction::Down {
        button: MOUSE_BUTTON_LEFT,
    });
    for w in points.windows(2) {
        actions = actions.then(PointerAction::MoveBy {
            duration: Some(Duration::from_millis(15)),
            x: (w[1].0 - w[0].0) as _,
            y: (w[1].1 - w[0].1) as _,
        });
    }
    actions = actions.then(PointerAction::Up {
        button: MOUSE_BUTTON_LEFT,
    });
    c.perform_actions(actions).await.unwrap();
    c.release_actions().await.unwrap();
}

/// The checkout (two folders above this crate).
fn workspace_root() -> PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.ancestors().nth(2).unwrap().to_path_buf()
}

/// Saves a screenshot of the page as `target/browser/NAME`.
async fn save_screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    let dir = workspace_root().join("target/browser");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, &png).unwrap();
    eprintln!("screenshot: {} ({} bytes)", path.display(), png.len());
}

/// README's screenshot and the record of what it shows.
const README_SCREENSHOT: &str = "assets/screenshots/serve-page.png";
const README_SCREENSHOT_RECORD: &str = "assets/screenshots/serve-page.json";

/// What the page shows that the screenshot's reader would go by: the verdict, the line under
/// it and the rule in force (its threshold changes with every model or calibration).
async fn shown(c: &Client) -> serde_json::Value {
    let text = |id: &'static str| async move {
        c.execute(
            "return document.getElementById(arguments[0]).textContent",
            vec![serde_json::json!(id)],
        )
        .await
        .unwrap()
    };
    serde_json::json!({
        "verdict": text("verdict").await,
        "guess": text("guess").await,
        "rule": text("rule").await,
    })
}

/// Writes README's screenshot (when its pixels differ from the file's, so that an unchanged
/// page leaves the committed file alone) and the record of what the page shows; returns the
/// record as it was before, if there was one.
async fn save_readme_screenshot(
    c: &Client,
    record: &serde_json::Value,
) -> Option<serde_json::Value> {
    let root = workspace_root();
    let (png_path, record_path) = (
        root.join(README_SCREENSHOT),
        root.join(README_SCREENSHOT_RECORD),
    );
    let before = std::fs::read_to_string(&record_path)
        .ok()
        .map(|t| serde_json::from_str(&t).unwrap_or(serde_json::Value::Null));
    let png = c.screenshot().await.unwrap();
    let pixels = |bytes: &[u8]| image::load_from_memory(bytes).ok().map(|i| i.to_rgba8());
    let new = pixels(&png).expect("the browser's screenshot is a PNG");
    let old = std::fs::read(&png_path).ok().and_then(|b| pixels(&b));
    if old.as_ref() != Some(&new) {
        std::fs::create_dir_all(png_path.parent().unwrap()).unwrap();
        std::fs::write(&png_path, &png).unwrap();
        eprintln!(
            "screenshot: {} rewritten ({} bytes)",
            png_path.display(),
            png.len()
        );
    } else {
        eprintln!("screenshot: {} unchanged", png_path.display());
    }
    let text = serde_json::to_string_pretty(record).unwrap() + "\n";
    if std::fs::read_to_string(&record_path).ok().as_deref() != Some(text.as_str()) {
        std::fs::write(&record_path, text).unwrap();
    }
    before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_classifies_what_is_drawn_with_the_mouse() {
    let (Some(chromium), Some(chromedriver)) = (
        program("OOD_CHROMIUM", "/usr/bin/chromium"),
        program("OOD_CHROMEDRIVER", "/usr/bin/chromedriver"),
    ) else {
        eprintln!(
            "SKIPPED: no /usr/bin/chromium and /usr/bin/chromedriver (apt-get install chromium \
             chromium-driver, or set OOD_CHROMIUM and OOD_CHROMEDRIVER)"
        );
        return;
    };
    let started = Instant::now();
    let server = TestServer::start(ServeConfig::default()).await;
    let port = free_port();
    let _driver = Driver(
        Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display())),
    );
    let c = connect(&chromium, port).await;
    let result = tokio::time::timeout(Duration::from_secs(60), async {
        c.goto(&server.url("/")).await.unwrap();
        let pad = c.find(Locator::Id("pad")).await.unwrap();

        // A 1: one vertical stroke down the middle of the pad (280 px high).
        let one: Vec<(i64, i64)> = (0..=12).map(|i| (0, -100 + i * 16)).collect();
        stroke(&c, &pad, &one).await;
        let (text, decision, guess) = answer(&c, 1).await;
        eprintln!("vertical stroke: {text:?} ({decision}; {guess})");
        assert_eq!(
            (text.as_str(), decision.as_str()),
            ("1", "digit"),
            "{guess}"
        );
        let bars = c.find_all(Locator::Css("#bars .row")).await.unwrap();
        assert_eq!(bars.len(), 9);
        let gauges = c.find_all(Locator::Css("#scores .gauge")).await.unwrap();
        assert!(!gauges.is_empty(), "no score against its threshold shown");
        let recon = c.find(Locator::Id("recon")).await.unwrap();
        let src = recon.attr("src").await.unwrap().unwrap_or_default();
        assert!(src.starts_with("data:image/png;base64,"), "{src}");

        let record = shown(&c).await;
        eprintln!("the page shows {record}");
        assert_eq!(record["verdict"], "1", "{record}");
        assert!(
            record["rule"]
                .as_str()
                .is_some_and(|r| r.starts_with("Rule: OOD when")),
            "no rule on the page: {record}"
        );
        let committed = save_readme_screenshot(&c, &record).await;
        assert!(
            committed.as_ref() == Some(&record),
            "README's screenshot was taken of a page that showed\n  {}\nbut the page now shows\n  \
             {record}\nThis run wrote {README_SCREENSHOT_RECORD} (and {README_SCREENSHOT}, where its \
             pixels differed): commit them both.",
            committed.map_or("nothing (no record)".to_string(), |c| c.to_string()),
        );

        // Clear, then a scribble: a zigzag across the pad.
        c.find(Locator::Id("clear"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let verdict = c
            .find(Locator::Id("verdict"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(verdict, "–", "the pad was not cleared");
        let scribble: Vec<(i64, i64)> = (0..=8)
            .map(|i| (if i % 2 == 0 { -100 } else { 100 }, -100 + i * 25))
            .collect();
        stroke(&c, &pad, &scribble).await;
        let (text, decision, guess) = answer(&c, 2).await;
        eprintln!("scribble: {text:?} ({decision}; {guess})");
        assert!(decision == "digit" || decision == "unknown", "{decision}");

        save_screenshot(&c, "page-scribble.png").await;
        eprintln!("{:.1} s in all", started.elapsed().as_secs_f64());
    })
    .await;
    let _ = c.close().await;
    result.expect("the browser test took over 60 s");
    server.stop().await.unwrap();
}
