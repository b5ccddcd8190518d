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
        let listener = ood_serve::connections::bind("127.0.0.1:0").await.unwrap();
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

/// The load test's stroke renderer, shared rather than copied: one place draws the digits that
/// both the load test and these tests post.
#[path = "../../../../xtask/src/digits.rs"]
#[allow(dead_code)]
mod digits;

/// A PNG of polylines (unit-square coordinates) in dark ink on white, `side` pixels square.
pub fn drawn_png(strokes: &[&[(f32, f32)]], side: u32) -> Vec<u8> {
    digits::png(
        digits::render(strokes, side, side as f32 / 10.0),
        side,
        side,
    )
}

pub const ONE: &[&[(f32, f32)]] = &[&[(0.35, 0.25), (0.52, 0.1), (0.52, 0.9)]];
pub const SEVEN: &[&[(f32, f32)]] = &[&[(0.2, 0.12), (0.8, 0.12), (0.45, 0.9)]];
