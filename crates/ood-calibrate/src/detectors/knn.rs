//! The deep nearest-neighbour detector: the feature bank and its exact blocked, tiled,
//! multi-threaded k-th-neighbour search.

use super::{fitted, Detector, Samples};
use crate::{CalibrateError, Result};
use serde::{Deserialize, Serialize};

/// Deep nearest neighbours (Sun et al. 2022): score = Euclidean distance from the
/// L2-normalised feature to its **k-th nearest** L2-normalised training feature.
///
/// `fit` stores the normalised training features (labels are ignored), optionally subsampled
/// to at most `max_bank` rows by a deterministic stride: with `n` rows and `m = max_bank < n`,
/// row `(seed + ⌊i n / m⌋) mod n` for `i = 0..m`. A zero feature vector stays zero.
///
/// `score` is an exact brute-force search: candidate neighbours are ranked by
/// `‖b‖² - 2 q·b` with `f32` dot products in cache-sized blocks (a 4-query register tile
/// against each bank row, a running top-k per query), then the k candidates' distances are
/// recomputed in `f64` as `sqrt(Σ (qᵢ - bᵢ)²)` and the largest is returned. Queries are split
/// over `threads` worker threads (`0`: all available cores); results do not depend on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Knn {
    /// Which neighbour's distance is the score (`>= 1`, at most the bank size).
    pub k: usize,
    /// Keep at most this many training rows (`None`: all).
    pub max_bank: Option<usize>,
    /// Offset of the subsampling stride.
    pub seed: u64,
    /// Worker threads for `score` (`0`: `std::thread::available_parallelism`).
    pub threads: usize,
    bank: Option<KnnBank>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct KnnBank {
    dim: usize,
    /// Row stride: `dim` rounded up to a multiple of [`LANES`] (zero padded).
    stride: usize,
    rows: usize,
    /// Normalised rows, `rows × stride`. Stored as the base64 of their little-endian bytes:
    /// exact, and 5.3 characters a value where JSON numbers take 10-12 (a bank of 10,000
    /// rows of 112 features is 6 MB instead of 13); a list of numbers is read too.
    #[serde(with = "packed_f32")]
    data: Vec<f32>,
    /// Squared norm of each stored row (1, or 0 for a zero feature).
    sq_norms: Vec<f32>,
}

const LANES: usize = 8;
/// Queries per register tile.
const TILE: usize = 4;
/// Bank rows per cache block.
const BANK_BLOCK: usize = 256;
/// Queries per outer block (the bank block is reused across them).
const QUERY_BLOCK: usize = 512;

impl Knn {
    /// Unfitted, keeping the whole training set, all cores.
    pub fn new(k: usize) -> Self {
        Knn {
            k,
            max_bank: None,
            seed: 0,
            threads: 0,
            bank: None,
        }
    }

    /// Keeps at most `max_bank` training rows (deterministic stride with offset `seed`).
    pub fn with_max_bank(mut self, max_bank: usize, seed: u64) -> Self {
        self.max_bank = Some(max_bank);
        self.seed = seed;
        self
    }

    /// Sets the number of worker threads of `score` (`0`: all available cores).
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// Whether `fit` has succeeded.
    pub fn is_fitted(&self) -> bool {
        self.bank.is_some()
    }

    /// Number of stored training rows (0 before `fit`).
    pub fn bank_len(&self) -> usize {
        self.bank.as_ref().map_or(0, |b| b.rows)
    }
}

/// Writes `row / ‖row‖` (computed in f64) into `out[..row.len()]`, zeros after; returns the
/// squared norm of what was written.
fn normalise_into(row: &[f32], out: &mut [f32]) -> f32 {
    let norm = row
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    let inv = if norm > 0.0 { 1.0 / norm } else { 0.0 };
    for (o, &x) in out.iter_mut().zip(row) {
        *o = (f64::from(x) * inv) as f32;
    }
    out[row.len()..].iter_mut().for_each(|o| *o = 0.0);
    out.iter().map(|&x| x * x).sum()
}

/// Dot products of the `TILE` query rows `q` (each `stride` long) with one bank row `b`.
#[inline]
fn dot_tile(q: &[&[f32]; TILE], b: &[f32]) -> [f32; TILE] {
    let mut acc = [[0.0f32; LANES]; TILE];
    for (c, b8) in b.chunks_exact(LANES).enumerate() {
        let o = c * LANES;
        for (a, qr) in acc.iter_mut().zip(q) {
            let q8 = &qr[o..o + LANES];
            for l in 0..LANES {
                a[l] += q8[l] * b8[l];
            }
        }
    }
    acc.map(|a| a.iter().sum())
}

/// Running k smallest keys with their bank indices.
struct TopK {
    keys: Vec<f32>,
    idx: Vec<u32>,
    worst: usize,
}

impl TopK {
    fn new(k: usize) -> Self {
        TopK {
            keys: vec![f32::INFINITY; k],
            idx: vec![u32::MAX; k],
            worst: 0,
        }
    }

    #[inline]
    fn bound(&self) -> f32 {
        self.keys[self.worst]
    }

    fn insert(&mut self, key: f32, j: u32) {
        self.keys[self.worst] = key;
        self.idx[self.worst] = j;
        let mut w = 0;
        for (i, &k) in self.keys.iter().enumerate() {
            if k > self.keys[w] {
                w = i;
            }
        }
        self.worst = w;
    }
}

impl KnnBank {
    fn row(&self, j: usize) -> &[f32] {
        &self.data[j * self.stride..(j + 1) * self.stride]
    }

    /// k-th neighbour distances of `queries` (normalised, `stride` per row).
    fn kth_distances(&self, queries: &[f32], k: usize) -> Vec<f64> {
        let stride = self.stride;
        let nq = queries.len() / stride;
        let zero = vec![0.0f32; stride];
        let mut out = Vec::with_capacity(nq);
        for q0 in (0..nq).step_by(QUERY_BLOCK) {
            let q1 = (q0 + QUERY_BLOCK).min(nq);
            let mut tops: Vec<TopK> = (q0..q1).map(|_| TopK::new(k)).collect();
            for b0 in (0..self.rows).step_by(BANK_BLOCK) {
                let b1 = (b0 + BANK_BLOCK).min(self.rows);
                for t0 in (q0..q1).step_by(TILE) {
                    let tile: [&[f32]; TILE] = std::array::from_fn(|r| {
                        let qi = t0 + r;
                        if qi < q1 {
                            &queries[qi * stride..(qi + 1) * stride]
                        } else {
                            &zero[..]
                        }
                    });
                    let live = (q1 - t0).min(TILE);
                    for j in b0..b1 {
                        let dots = dot_tile(&tile, self.row(j));
                        let nb = self.sq_norms[j];
                        for r in 0..live {
                            let key = nb - 2.0 * dots[r];
                            let top = &mut tops[t0 + r - q0];
                            if key < top.bound() {
                                top.insert(key, j as u32);
                            }
                        }
                    }
                }
            }
            for (qi, top) in (q0..q1).zip(&tops) {
                let q = &queries[qi * stride..(qi + 1) * stride];
                let kth = top
                    .idx
                    .iter()
                    .map(|&j| {
                        self.row(j as usize)
                            .iter()
                            .zip(q)
                            .map(|(&b, &a)| {
                                let diff = f64::from(a) - f64::from(b);
                                diff * diff
                            })
                            .sum::<f64>()
                            .sqrt()
                    })
                    .fold(0.0f64, f64::max);
                out.push(kth);
            }
        }
        out
    }
}

impl Detector for Knn {
    fn name(&self) -> String {
        format!("KNN(k={})", self.k)
    }

    /// Stores the normalised training features; `labels` are ignored (any length).
    fn fit(&mut self, id_train: &Samples<'_>, _labels: &[usize]) -> Result<()> {
        id_train.need_features()?;
        let n = id_train.len();
        if n == 0 {
            return Err(CalibrateError::Empty { what: "id_train" });
        }
        let rows = match self.max_bank {
            Some(0) => {
                return Err(CalibrateError::InvalidParameter {
                    name: "max_bank",
                    value: 0.0,
                    expected: ">= 1",
                })
            }
            Some(m) => m.min(n),
            None => n,
        };
        if self.k == 0 || self.k > rows {
            return Err(CalibrateError::InvalidParameter {
                name: "k",
                value: self.k as f64,
                expected: "between 1 and the number of stored training rows",
            });
        }
        if rows > u32::MAX as usize {
            return Err(CalibrateError::InvalidParameter {
                name: "max_bank",
                value: rows as f64,
                expected: "at most u32::MAX rows",
            });
        }
        let dim = id_train.feature_dim;
        let stride = dim.div_ceil(LANES) * LANES;
        let mut data = vec![0.0f32; rows * stride];
        let mut sq_norms = Vec::with_capacity(rows);
        let start = (self.seed % n as u64) as usize;
        for (i, out) in data.chunks_exact_mut(stride).enumerate() {
            let src = if rows == n {
                i
            } else {
                (start + (i as u128 * n as u128 / rows as u128) as usize) % n
            };
            sq_norms.push(normalise_into(id_train.feature_row(src), out));
        }
        self.bank = Some(KnnBank {
            dim,
            stride,
            rows,
            data,
            sq_norms,
        });
        Ok(())
    }

    fn score(&self, samples: &Samples<'_>) -> Result<Vec<f64>> {
        let bank = fitted(&self.bank, self)?;
        samples.need_features()?;
        let nq = samples.len();
        if nq == 0 {
            return Ok(Vec::new());
        }
        if samples.feature_dim != bank.dim {
            return Err(CalibrateError::DimensionMismatch {
                what: "feature_dim",
                expected: bank.dim,
                found: samples.feature_dim,
            });
        }
        let k = self.k;
        if k == 0 || k > bank.rows {
            return Err(CalibrateError::InvalidParameter {
                name: "k",
                value: k as f64,
                expected: "between 1 and the number of stored training rows",
            });
        }
        let stride = bank.stride;
        let mut queries = vec![0.0f32; nq * stride];
        for (i, out) in queries.chunks_exact_mut(stride).enumerate() {
            normalise_into(samples.feature_row(i), out);
        }
        let threads = if self.threads == 0 {
            std::thread::available_parallelism().map_or(1, |t| t.get())
        } else {
            self.threads
        };
        // Enough queries per thread to amortise streaming the bank.
        let threads = threads.min(nq.div_ceil(64)).max(1);
        if threads == 1 {
            return Ok(bank.kth_distances(&queries, k));
        }
        let per = nq.div_ceil(threads) * stride;
        let parts: Vec<Vec<f64>> = std::thread::scope(|s| {
            let handles: Vec<_> = queries
                .chunks(per)
                .map(|chunk| s.spawn(move || bank.kth_distances(chunk, k)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("KNN worker thread panicked"))
                .collect()
        });
        Ok(parts.concat())
    }
}

/// `Vec<f32>` as the base64 (RFC 4648, standard alphabet, padded) of its little-endian bytes,
/// or read from a list of numbers (the form of earlier files). A bank of 10,000 rows is 6
/// million characters, decoded each time `ood predict` or `ood serve` starts.
mod packed_f32 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn encode(values: &[f32]) -> String {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        STANDARD.encode(bytes)
    }

    pub fn decode(text: &str) -> Result<Vec<f32>, String> {
        let bytes = STANDARD
            .decode(text)
            .map_err(|e| format!("bank data is not base64: {e}"))?;
        if !bytes.len().is_multiple_of(4) {
            return Err(format!("{} bytes, not whole f32 values", bytes.len()));
        }
        Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    pub fn serialize<S: Serializer>(values: &[f32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(values))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f32>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Packed(String),
            Numbers(Vec<f32>),
        }
        match Form::deserialize(d)? {
            Form::Packed(text) => decode(&text).map_err(serde::de::Error::custom),
            Form::Numbers(values) => Ok(values),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detectors::test_support::{close, Rng};
    use crate::detectors::Mahalanobis;

    #[test]
    fn bank_values_pack_to_base64_exactly() {
        // 1.0f32 is 00 00 80 3F: "AACAPw==" by hand; -2.5 is 00 00 20 C0.
        assert_eq!(packed_f32::encode(&[1.0]), "AACAPw==");
        assert_eq!(packed_f32::encode(&[1.0, -2.5]), "AACAPwAAIMA=");
        assert_eq!(packed_f32::decode("AACAPwAAIMA=").unwrap(), vec![1.0, -2.5]);
        assert_eq!(packed_f32::encode(&[]), "");
        let odd = [f32::MIN_POSITIVE, -0.0, 1e-38, 3.4e38, 0.1];
        let back = packed_f32::decode(&packed_f32::encode(&odd)).unwrap();
        assert_eq!(
            back.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            odd.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        // Every character of the standard alphabet's tail (`+`, `/`) and no padding: a file
        // written by the earlier hand-written coder (and Python's `base64.b64encode`).
        let known = "////v+axYX8AAAC8";
        let bits = [0xbfff_ffff_u32, 0x7f61_b1e6, 0xbc00_0000];
        let values: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
        assert_eq!(
            packed_f32::decode(known)
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>(),
            bits
        );
        assert_eq!(packed_f32::encode(&values), known);
        for bad in ["AAC", "AA=A", "AACAPw=*", "AAAA", "AACAPw", "AACA-w=="] {
            assert!(packed_f32::decode(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn a_stored_bank_scores_as_the_fitted_one() {
        let mut rng = Rng(5);
        let (d, n) = (7, 40);
        let bank: Vec<f32> = (0..n * d).map(|_| rng.gauss() as f32).collect();
        let queries: Vec<f32> = (0..9 * d).map(|_| rng.gauss() as f32).collect();
        let mut knn = Knn::new(3).with_max_bank(25, 2);
        knn.fit(&Samples::new(&[], &bank, &[], 0, d).unwrap(), &[])
            .unwrap();
        let json = serde_json::to_string(&knn).unwrap();
        assert!(
            !json.contains("[0."),
            "the bank is stored as numbers: {json}"
        );
        let back: Knn = serde_json::from_str(&json).unwrap();
        assert_eq!(back, knn);
        // The earlier form, a list of numbers, still reads.
        let mut value = serde_json::to_value(&knn).unwrap();
        let data = &mut value["bank"]["data"];
        let numbers = packed_f32::decode(data.as_str().unwrap()).unwrap();
        *data = serde_json::json!(numbers);
        assert_eq!(serde_json::from_value::<Knn>(value).unwrap(), knn);
        let qs = Samples::new(&[], &queries, &[], 0, d).unwrap();
        assert_eq!(back.score(&qs).unwrap(), knn.score(&qs).unwrap());
    }

    #[test]
    fn knn_exact_hand_case_and_scale() {
        // Unit vectors at 0°, 90°, 180°, 270° (given with various lengths).
        let bank = [2.0f32, 0.0, 0.0, 0.5, -3.0, 0.0, 0.0, -1.0];
        let train = Samples::new(&[], &bank, &[], 0, 2).unwrap();
        let q = [1.0f32, 0.0, 1.0, 1.0];
        let qs = Samples::new(&[], &q, &[], 0, 2).unwrap();
        let expect = |k: usize| -> Vec<f64> {
            // Query (1, 0): distances 0, √2, √2, 2. Query 45°: 2·sin(22.5°) ×2, 2·sin(67.5°) ×2.
            let a = 2.0 * (std::f64::consts::PI / 8.0).sin();
            let b = 2.0 * (3.0 * std::f64::consts::PI / 8.0).sin();
            let first = [0.0, 2f64.sqrt(), 2f64.sqrt(), 2.0];
            let second = [a, a, b, b];
            vec![first[k - 1], second[k - 1]]
        };
        for k in 1..=4 {
            let mut knn = Knn::new(k);
            knn.fit(&train, &[]).unwrap();
            let s = knn.score(&qs).unwrap();
            let e = expect(k);
            assert!(
                close(s[0], e[0], 1e-6) && close(s[1], e[1], 1e-6),
                "k={k}: {s:?} vs {e:?}"
            );
        }
        // Scale is irrelevant, for the bank and the queries.
        let mut knn = Knn::new(2);
        knn.fit(&train, &[]).unwrap();
        let scaled: Vec<f32> = bank.iter().map(|x| x * 0.01).collect();
        let mut knn_scaled = Knn::new(2);
        knn_scaled
            .fit(&Samples::new(&[], &scaled, &[], 0, 2).unwrap(), &[])
            .unwrap();
        let q_scaled: Vec<f32> = q.iter().map(|x| x * 123.0).collect();
        let a = knn.score(&qs).unwrap();
        let b = knn_scaled
            .score(&Samples::new(&[], &q_scaled, &[], 0, 2).unwrap())
            .unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert!(close(*x, *y, 1e-6), "{a:?} vs {b:?}");
        }
    }

    /// f64 brute force: k-th smallest distance between normalised vectors.
    fn brute_knn(bank: &[f32], q: &[f32], d: usize, k: usize) -> Vec<f64> {
        let norm = |r: &[f32]| -> Vec<f64> {
            let n = r.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
            r.iter()
                .map(|&x| if n > 0.0 { f64::from(x) / n } else { 0.0 })
                .collect()
        };
        let b: Vec<Vec<f64>> = bank.chunks(d).map(norm).collect();
        q.chunks(d)
            .map(|qr| {
                let qn = norm(qr);
                let mut dist: Vec<f64> = b
                    .iter()
                    .map(|br| {
                        br.iter()
                            .zip(&qn)
                            .map(|(x, y)| (x - y).powi(2))
                            .sum::<f64>()
                            .sqrt()
                    })
                    .collect();
                dist.sort_by(f64::total_cmp);
                dist[k - 1]
            })
            .collect()
    }

    #[test]
    fn knn_matches_brute_force_blocks_tiles_threads() {
        let mut rng = Rng(11);
        // Sizes not multiples of the tile, lane, or block sizes.
        let (d, n_bank, n_q) = (13, 601, 203);
        let bank: Vec<f32> = (0..n_bank * d).map(|_| rng.gauss() as f32).collect();
        let mut q: Vec<f32> = (0..n_q * d).map(|_| rng.gauss() as f32).collect();
        q[..d].iter_mut().for_each(|x| *x = 0.0); // a zero query
        let train = Samples::new(&[], &bank, &[], 0, d).unwrap();
        let qs = Samples::new(&[], &q, &[], 0, d).unwrap();
        for (k, threads) in [(1, 1), (7, 3), (50, 0)] {
            let mut knn = Knn::new(k).with_threads(threads);
            knn.fit(&train, &[]).unwrap();
            let got = knn.score(&qs).unwrap();
            let want = brute_knn(&bank, &q, d, k);
            assert_eq!(got.len(), n_q);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(close(*g, *w, 1e-5), "k={k} q{i}: {g} vs {w}");
            }
            assert!(close(got[0], 1.0, 1e-6)); // zero query: distance 1 to every unit vector
        }
    }

    #[test]
    fn knn_bank_subsampling_and_errors() {
        let d = 3;
        let bank: Vec<f32> = (0..10 * d).map(|i| (i as f32 * 0.37).sin()).collect();
        let train = Samples::new(&[], &bank, &[], 0, d).unwrap();
        let mut knn = Knn::new(2).with_max_bank(4, 3);
        knn.fit(&train, &[]).unwrap();
        assert_eq!(knn.bank_len(), 4);
        // Rows 3, 5, 8, 0 (stride 10/4 from offset 3): their scores equal a fit on them alone.
        let picked: Vec<f32> = [3usize, 5, 8, 0]
            .iter()
            .flat_map(|&r| bank[r * d..(r + 1) * d].iter().copied())
            .collect();
        let mut direct = Knn::new(2);
        direct
            .fit(&Samples::new(&[], &picked, &[], 0, d).unwrap(), &[])
            .unwrap();
        assert_eq!(knn.score(&train).unwrap(), direct.score(&train).unwrap());
        let mut all = Knn::new(2).with_max_bank(100, 0);
        all.fit(&train, &[]).unwrap();
        assert_eq!(all.bank_len(), 10);

        assert!(matches!(
            Knn::new(3).score(&train),
            Err(CalibrateError::NotFitted { .. })
        ));
        for mut bad in [Knn::new(0), Knn::new(11), Knn::new(5).with_max_bank(4, 0)] {
            assert!(matches!(
                bad.fit(&train, &[]),
                Err(CalibrateError::InvalidParameter { name: "k", .. })
            ));
        }
        assert!(Knn::new(1).with_max_bank(0, 0).fit(&train, &[]).is_err());
        assert!(matches!(
            all.score(&Samples::new(&[], &[1.0, 2.0], &[], 0, 2).unwrap()),
            Err(CalibrateError::DimensionMismatch { .. })
        ));
        assert!(matches!(
            all.score(&Samples::new(&[], &[1.0, f32::NAN, 0.0], &[], 0, 3).unwrap()),
            Err(CalibrateError::NaN { .. })
        ));
        assert_eq!(Knn::new(50).name(), "KNN(k=50)");
    }

    /// Timing of the KNN search at benchmark scale (run with `--ignored --nocapture`).
    #[test]
    #[ignore]
    fn knn_timing() {
        let mut rng = Rng(5);
        let d = 256;
        let (n_bank, n_q) = (20_000, 2_000);
        let bank: Vec<f32> = (0..n_bank * d).map(|_| rng.gauss() as f32).collect();
        let q: Vec<f32> = (0..n_q * d).map(|_| rng.gauss() as f32).collect();
        let mut knn = Knn::new(50);
        knn.fit(&Samples::new(&[], &bank, &[], 0, d).unwrap(), &[])
            .unwrap();
        let t = std::time::Instant::now();
        let s = knn
            .score(&Samples::new(&[], &q, &[], 0, d).unwrap())
            .unwrap();
        let el = t.elapsed().as_secs_f64();
        eprintln!(
            "KNN {n_q} x {n_bank} x {d}: {el:.2} s, {:.2} GFLOP/s",
            2.0 * (n_q * n_bank * d) as f64 / el / 1e9
        );
        assert_eq!(s.len(), n_q);
        let mut m = Mahalanobis::new();
        let t = std::time::Instant::now();
        m.fit(
            &Samples::new(&[], &bank, &[], 0, d).unwrap(),
            &(0..n_bank).map(|i| i % 9).collect::<Vec<_>>(),
        )
        .unwrap();
        let fit = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        m.score(&Samples::new(&[], &q, &[], 0, d).unwrap()).unwrap();
        eprintln!(
            "Mahalanobis fit {n_bank} x {d}: {fit:.2} s, score {n_q}: {:.2} s",
            t.elapsed().as_secs_f64()
        );
    }
}
