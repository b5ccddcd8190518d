//! Shared by the server's tests: a server on a loopback port with the shipped model, a plain
//! HTTP client, and digits drawn from strokes.
#![allow(dead_code)]

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ood_serve::model::{Model, ModelSource};
use ood_serve::ServeConfig;
use std::net::SocketAddr;

pub type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub struct TestServer {
    pub addr: SocketAddr,
    pub client: HttpClient,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub handle: Option<tokio::task::JoinHandle<ood_serve::Result<()>>>,
}

impl TestServer {
    /// The shipped model on 127.0.0.1 at a port the system picks.
    pub async fn start(config: ServeConfig) -> TestServer {
        let model = Model::load(
            &ModelSource::Shipped { calibration: None },
            &candle_core::Device::Cpu,
        )
        .unwrap();
        ood_serve::warm_up(&model).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(ood_serve::serve(listener, model, config, async move {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            client: Client::builder(TokioExecutor::new()).build_http(),
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn post(
        &self,
        content_type: Option<&str>,
        body: impl Into<Bytes>,
    ) -> (u16, serde_json::Value) {
        let mut req = hyper::Request::post(self.url("/v1/predict"));
        if let Some(t) = content_type {
            req = req.header("content-type", t);
        }
        let res = self
            .client
            .request(req.body(Full::new(body.into())).unwrap())
            .await
            .unwrap();
        let status = res.status().as_u16();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("status {status}: not JSON ({e}): {bytes:?}"));
        (status, json)
    }

    pub async fn get(&self, path: &str) -> (u16, String, Bytes) {
        let req = hyper::Request::get(self.url(path))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let res = self.client.request(req).await.unwrap();
        let status = res.status().as_u16();
        let content_type = res
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (
            status,
            content_type,
            res.into_body().collect().await.unwrap().to_bytes(),
        )
    }

    /// The sender that stops the server (as Ctrl-C would), for a test that stops it itself.
    pub fn take_stop(&mut self) -> tokio::sync::oneshot::Sender<()> {
        self.stop.take().unwrap()
    }

    /// Waits for a server that was told to stop to return.
    pub async fn join(mut self) -> ood_serve::Result<()> {
        self.handle.take().unwrap().await.unwrap()
    }

    /// Stops the server (as Ctrl-C would) and waits for it to return.
    pub async fn stop(mut self) -> ood_serve::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        self.handle.take().unwrap().await.unwrap()
    }
}

fn distance(p: (f32, f32), a: (f32, f32), b: (f32, f32)) -> f32 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 == 0.0 {
        0.0
    } else {
        (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0)
    };
    ((p.0 - a.0 - t * dx).powi(2) + (p.1 - a.1 - t * dy).powi(2)).sqrt()
}

/// A PNG of polylines (unit-square coordinates) in dark ink on white, `side` pixels square.
pub fn drawn_png(strokes: &[&[(f32, f32)]], side: u32) -> Vec<u8> {
    let s = side as f32;
    let thickness = s / 10.0;
    let image = image::GrayImage::from_fn(side, side, |x, y| {
        let p = (x as f32 + 0.5, y as f32 + 0.5);
        let d = strokes
            .iter()
            .flat_map(|l| l.windows(2))
            .map(|w| distance(p, (w[0].0 * s, w[0].1 * s), (w[1].0 * s, w[1].1 * s)))
            .fold(f32::INFINITY, f32::min);
        let ink = (thickness / 2.0 + 0.5 - d).clamp(0.0, 1.0);
        image::Luma([(255.0 * (1.0 - ink)).round() as u8])
    });
    let mut png = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    png
}

pub const ONE: &[&[(f32, f32)]] = &[&[(0.35, 0.25), (0.52, 0.1), (0.52, 0.9)]];
pub const SEVEN: &[&[(f32, f32)]] = &[&[(0.2, 0.12), (0.8, 0.12), (0.45, 0.9)]];
