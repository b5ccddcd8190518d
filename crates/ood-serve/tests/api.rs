//! The HTTP API on a real loopback socket, with the shipped model.

mod common;

use base64::Engine as _;
use common::{drawn_png, TestServer, ONE, SEVEN};
use ood_serve::ServeConfig;

fn png_pixels(b64: &serde_json::Value) -> Vec<u8> {
    let png = base64::engine::general_purpose::STANDARD
        .decode(b64.as_str().unwrap())
        .unwrap();
    let image = image::load_from_memory(&png).unwrap().to_luma8();
    assert_eq!(image.dimensions(), (28, 28));
    image.into_raw()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drawn_one_is_a_one_with_everything_the_page_shows() {
    let server = TestServer::start(ServeConfig::default()).await;
    let (status, a) = server.post(Some("image/png"), drawn_png(ONE, 120)).await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["class"], 1, "{a}");
    assert_eq!(a["decision"], "digit");
    assert_eq!(a["best_guess"], 1);
    let probs = a["probabilities"].as_array().unwrap();
    assert_eq!(probs.len(), 9);
    let classes: Vec<u64> = probs.iter().map(|p| p["class"].as_u64().unwrap()).collect();
    assert_eq!(classes, (1..=9).collect::<Vec<_>>());
    let sum: f64 = probs
        .iter()
        .map(|p| p["probability"].as_f64().unwrap())
        .sum();
    assert!((sum - 1.0).abs() < 1e-9, "{sum}");
    assert_eq!(probs[0]["probability"], a["max_softmax"]);
    // The rule's score with its threshold first, then its members with their p-values.
    let scores = a["scores"].as_array().unwrap();
    let (value, threshold) = (
        scores[0]["value"].as_f64().unwrap(),
        scores[0]["threshold"].as_f64().unwrap(),
    );
    assert!(value < threshold, "{a}");
    assert!(scores[1..].iter().all(|s| s["p_value"].is_f64()), "{a}");
    // Each member's own p-value limit: the input is unknown when a p-value falls below its
    // member's limit, so a digit that is accepted is above every one.
    assert!(
        scores[1..]
            .iter()
            .all(|s| s["p_value"].as_f64() > s["p_limit"].as_f64() && s["p_limit"].is_f64()),
        "{a}"
    );
    assert!(a["rule"].as_str().unwrap().contains("OOD when"));
    // The image the model saw is MNIST-like: white ink centred on black.
    let input = png_pixels(&a["input_png"]);
    assert_eq!(input[0], 0);
    assert!(input[14 * 28 + 14] > 200, "{:?}", &input[14 * 28..15 * 28]);
    let recon = png_pixels(&a["reconstruction_png"]);
    assert!(recon.iter().any(|&v| v > 100));
    assert!(a["reconstruction_error"].as_f64().unwrap() > 0.0);

    // The prepared pixels sent back as JSON get the same answer: the JSON path feeds pixels as
    // they are, and an image's answer does not depend on how it arrived.
    let pixels: Vec<f64> = input.iter().map(|&v| v as f64 / 255.0).collect();
    let body = serde_json::json!({ "pixels": pixels }).to_string();
    let (status, b) = server.post(Some("application/json"), body).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["class"], 1);
    assert_eq!(b["scores"][0]["value"], a["scores"][0]["value"]);
    assert_eq!(b["reconstruction_error"], a["reconstruction_error"]);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_a_4xx_with_a_json_error_and_the_server_stays_up() {
    let server = TestServer::start(ServeConfig {
        max_body_bytes: 50_000,
        max_image_side: 2000,
        ..Default::default()
    })
    .await;
    let png = drawn_png(SEVEN, 64);
    let wide = {
        let mut out = Vec::new();
        image::GrayImage::from_pixel(10_000, 1, image::Luma([255]))
            .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    };
    let pixels = |n: usize, v: f64| serde_json::json!({ "pixels": vec![v; n] }).to_string();
    // (what, content type, body, status wanted, what the error says)
    type Case<'a> = (&'a str, Option<&'a str>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "text",
            Some("text/plain"),
            b"seven".to_vec(),
            415,
            "not supported",
        ),
        ("no type", None, png.clone(), 415, "no Content-Type"),
        (
            "truncated",
            Some("image/png"),
            png[..png.len() / 2].to_vec(),
            400,
            "cannot decode the PNG",
        ),
        (
            "not an image",
            Some("image/png"),
            b"hello".to_vec(),
            400,
            "not an image",
        ),
        (
            "too large",
            Some("image/png"),
            vec![0; 60_000],
            413,
            "over the limit of 50000 bytes",
        ),
        // Far over. The server reads such a body away before answering, so that the client
        // sees the 413 rather than a connection reset; the reset is a race (it hit once in
        // three load tests before), so this case alone does not catch its return.
        (
            "far too large",
            Some("image/png"),
            vec![0; 10 << 20],
            413,
            "over the limit",
        ),
        (
            "10000x1",
            Some("image/png"),
            wide,
            400,
            "at most 2000 pixels a side",
        ),
        (
            "blank",
            Some("image/png"),
            drawn_png(&[], 64),
            400,
            "no ink found",
        ),
        ("empty", Some("image/png"), vec![], 400, "empty"),
        (
            "bad JSON",
            Some("application/json"),
            b"{\"pixels\": [1,".to_vec(),
            400,
            "not the JSON expected",
        ),
        (
            "other JSON",
            Some("application/json"),
            b"{\"image\": []}".to_vec(),
            400,
            "unknown field",
        ),
        (
            "783",
            Some("application/json"),
            pixels(783, 0.5).into_bytes(),
            400,
            "783 pixels",
        ),
        (
            "0..255",
            Some("application/json"),
            pixels(784, 255.0).into_bytes(),
            400,
            "pixels are in 0..1",
        ),
    ];
    for (what, content_type, body, want, says) in cases {
        let (status, e) = server.post(content_type, body).await;
        assert_eq!(status, want, "{what}: {e}");
        let message = e["error"].as_str().unwrap_or_else(|| panic!("{what}: {e}"));
        assert!(message.contains(says), "{what}: {message}");
    }
    let (status, _, body) = server.get("/no/such/page").await;
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("\"error\""));
    let (status, _, body) = server.get("/healthz").await;
    assert_eq!(status, 200);
    let h: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(h["status"], "ok");
    // None of them reached the model.
    assert_eq!(h["predictions"], 0);
    let (status, _) = server.post(Some("image/png"), png).await;
    assert_eq!(status, 200);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_batched_and_get_the_answers_they_get_alone() {
    let server = TestServer::start(ServeConfig {
        batching: ood_serve::BatchPolicy {
            // Long enough that concurrent requests surely meet in one batch on a busy machine.
            wait: std::time::Duration::from_millis(50),
            // Batches side by side, whatever the cores, so answers are compared across lanes.
            lanes: 3,
            threads_per_batch: 1,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let one = drawn_png(ONE, 100);
    let seven = drawn_png(SEVEN, 100);
    let (_, alone_one) = server.post(Some("image/png"), one.clone()).await;
    let (_, alone_seven) = server.post(Some("image/png"), seven.clone()).await;
    let server = std::sync::Arc::new(server);
    let mut tasks = Vec::new();
    for i in 0..24 {
        let s = server.clone();
        let png = if i % 2 == 0 {
            one.clone()
        } else {
            seven.clone()
        };
        tasks.push(tokio::spawn(async move {
            (i, s.post(Some("image/png"), png).await)
        }));
    }
    for t in tasks {
        let (i, (status, a)) = t.await.unwrap();
        assert_eq!(status, 200, "{a}");
        let alone = if i % 2 == 0 { &alone_one } else { &alone_seven };
        assert_eq!(a["class"], alone["class"]);
        assert_eq!(
            a["reconstruction_error"], alone["reconstruction_error"],
            "request {i}"
        );
        let (x, y) = (
            a["scores"][0]["value"].as_f64().unwrap(),
            alone["scores"][0]["value"].as_f64().unwrap(),
        );
        assert!((x - y).abs() < 1e-4, "request {i}: {x} batched, {y} alone");
    }
    let (_, _, body) = server.get("/healthz").await;
    let h: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(h["predictions"], 26);
    assert!(h["largest_batch"].as_u64().unwrap() > 1, "{h}");
    assert!(h["batches"].as_u64().unwrap() < 26, "{h}");
    let server = std::sync::Arc::into_inner(server).unwrap();
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_and_shutdown_is_graceful() {
    let mut server = TestServer::start(ServeConfig {
        batching: ood_serve::BatchPolicy {
            // A request waits this long in the batcher: time to start the shutdown meanwhile.
            wait: std::time::Duration::from_millis(400),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let (status, content_type, body) = server.get("/").await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/html"));
    let html = String::from_utf8(body.to_vec()).unwrap();
    assert!(html.contains("<canvas id=\"pad\"") && html.contains("/app.js"));
    // Nothing from another host: the page works offline.
    assert!(!html.contains("http://") && !html.contains("https://"));
    let (status, content_type, js) = server.get("/app.js").await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/javascript"));
    assert!(String::from_utf8_lossy(&js).contains("/v1/predict"));
    let (status, _, _) = server.get("/style.css").await;
    assert_eq!(status, 200);

    // A request under way when the shutdown starts is still answered; then the server ends.
    let stop = server.take_stop();
    let server = std::sync::Arc::new(server);
    let s2 = server.clone();
    let pending = tokio::spawn(async move { s2.post(Some("image/png"), drawn_png(ONE, 80)).await });
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    stop.send(()).unwrap();
    let (status, a) = pending.await.unwrap();
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["class"], 1);
    let server = std::sync::Arc::into_inner(server).unwrap();
    let addr = server.addr;
    tokio::time::timeout(std::time::Duration::from_secs(10), server.join())
        .await
        .expect("the server did not stop")
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still listening"
    );
}

#[test]
fn the_shipped_model_loads_and_refuses_a_calibration_made_for_another_checkpoint() {
    use ood_serve::model::{Model, ModelSource};
    let cpu = candle_core::Device::Cpu;
    let model = Model::load(&ModelSource::Shipped { calibration: None }, &cpu).unwrap();
    assert_eq!(model.known_classes(), &[1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert_eq!(
        model.checkpoint_sha256(),
        ood_model::checkpoint::sha256_hex(ood_serve::shipped::CHECKPOINT)
    );
    // The shipped calibration names the shipped checkpoint and carries its hash.
    let cal: serde_json::Value = serde_json::from_str(ood_serve::shipped::CALIBRATION).unwrap();
    assert_eq!(cal["checkpoint_sha256"], model.checkpoint_sha256());
    assert_eq!(cal["checkpoint_file"], ood_serve::shipped::CHECKPOINT_PATH);
    // Its provenance says where it came from.
    let p: serde_json::Value = serde_json::from_str(ood_serve::shipped::PROVENANCE).unwrap();
    assert_eq!(p["checkpoint_sha256"], model.checkpoint_sha256());
    assert!(p["seed"].is_u64() && p["preset"].is_string() && p["git_commit"].is_string());
    // Its headline numbers were measured on these weights under this calibration's rule.
    let headline = &p["headline"]["evaluation"];
    assert_eq!(
        headline["evaluated_checkpoint_sha256"],
        model.checkpoint_sha256()
    );
    assert_eq!(headline["decision"].as_str(), Some(model.rule().as_str()));
    assert!(headline["known_accepted_and_right"].is_f64() && headline["drawn_refused"].is_f64());
    // A calibration with another hash is refused, naming the file.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.json");
    let mut cal2 = cal.clone();
    cal2["checkpoint_sha256"] = "00".repeat(32).into();
    std::fs::write(&other, cal2.to_string()).unwrap();
    let err = Model::load(
        &ModelSource::Shipped {
            calibration: Some(other.clone()),
        },
        &cpu,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("another checkpoint") && err.contains("other.json"),
        "{err}"
    );
    // The same calibration given as a file is accepted.
    let same = dir.path().join("same.json");
    std::fs::write(&same, ood_serve::shipped::CALIBRATION).unwrap();
    Model::load(
        &ModelSource::Shipped {
            calibration: Some(same),
        },
        &cpu,
    )
    .unwrap();
}
