//! Scores made comparable: each detector's score turned into an empirical p-value against the
//! scores of held-out in-distribution samples, and the p-values combined into one score.
//!
//! Detectors disagree about what they catch: energy (logits) catches unknown digits, the
//! Mahalanobis distance (features) catches clothing and noise. Their raw scores live on
//! unrelated scales, so a sum means nothing; their p-values do not. For a detector with
//! held-out scores `r_1..r_n` (in-distribution samples never trained on), the p-value of a
//! score `s` is
//!
//! ```text
//! p(s) = (1 + #{i : r_i >= s}) / (n + 1)
//! ```
//!
//! the conformal p-value: for a new in-distribution sample it is (super-)uniform, whatever the
//! detector. [`Combine::MinP`] takes the smallest p-value of the members (a sample is as
//! unusual as its most unusual view), [`Combine::Fisher`] sums `-2 ln p`. Both are reported
//! as OOD scores (larger = more OOD): `-ln(min p)` and `-2 Σ ln p`.
//!
//! Nothing here is fitted on OOD data: the members are fitted on in-distribution training data
//! ([`Detector::fit`]) and the references are held-out in-distribution samples
//! ([`PValueCombination::fit_reference`]); a threshold is then set on the held-out samples alone
//! with [`threshold_at_id_acceptance`](crate::threshold_at_id_acceptance).

use crate::detectors::{
    Detector, Energy, Knn, Mahalanobis, MaxLogit, Msp, Reconstruction, Samples,
};
use crate::{check_finite, CalibrateError, Result};
use serde::{Deserialize, Serialize};

/// How a score between two held-out scores, or beyond the last, gets its p-value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PValues {
    /// The conformal p-value as defined above: a step at each held-out score, so every score
    /// between two neighbours shares one p-value, and every score beyond the last held-out
    /// one shares the floor `1 / (n + 1)`. Calibrations made before the choice read as this.
    #[default]
    Step,
    /// The count `#{r_i >= s}` interpolated linearly between neighbouring held-out scores,
    /// and beyond the last one continued by an exponential tail fitted to the top of the
    /// held-out scores ([`Reference::smoothed`]). Equal to the step at every held-out score
    /// and never below it (so still a valid p-value), but strictly falling with the score:
    /// a ranking by it breaks no ties, where the step ties every sample beyond the last
    /// held-out digit, unknown digit and known digit alike.
    Smooth,
}

impl PValues {
    /// Every choice, by its name on the command line.
    pub const ALL: [PValues; 2] = [PValues::Step, PValues::Smooth];

    /// The name `--p-values` takes.
    pub fn name(self) -> &'static str {
        match self {
            PValues::Step => "step",
            PValues::Smooth => "smooth",
        }
    }

    fn is_step(&self) -> bool {
        *self == PValues::Step
    }
}

impl std::str::FromStr for PValues {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown p-values {s:?}: use step or smooth"))
    }
}

/// The held-out in-distribution scores of one detector, sorted increasingly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    sorted: Vec<f64>,
    /// [`PValues::Smooth`]'s tail: the mean excess of the top held-out scores (`None`: the
    /// step, as in calibrations made before the choice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tail_scale: Option<f64>,
}

impl Reference {
    /// From held-out in-distribution scores (non-empty, finite), with [`PValues::Step`].
    pub fn new(scores: &[f64]) -> Result<Self> {
        if scores.is_empty() {
            return Err(CalibrateError::Empty { what: "reference" });
        }
        check_finite("reference", scores)?;
        let mut sorted = scores.to_vec();
        sorted.sort_by(f64::total_cmp);
        Ok(Self {
            sorted,
            tail_scale: None,
        })
    }

    /// The same scores with [`PValues::Smooth`]. Beyond the largest held-out score `r_max`
    /// the count `#{r_i >= s}` continues as `exp(-(s - r_max) / b)`, an exponential tail
    /// whose scale `b` is the mean excess of the top 1% of held-out scores (at least 10 of
    /// them) over the next one: the peaks-over-threshold estimate, fitted on held-out
    /// in-distribution scores alone.
    pub fn smoothed(mut self) -> Self {
        let n = self.sorted.len();
        let top = (n / 100).max(10).min(n - 1);
        let scale = if top == 0 {
            0.0
        } else {
            let base = self.sorted[n - 1 - top];
            self.sorted[n - top..].iter().map(|r| r - base).sum::<f64>() / top as f64
        };
        // All top scores equal (or one score): any positive scale keeps the order.
        self.tail_scale = Some(if scale > 0.0 && scale.is_finite() {
            scale
        } else {
            1.0
        });
        self
    }

    /// The scores with `p_values`' p-value.
    pub fn with_p_values(self, p_values: PValues) -> Self {
        match p_values {
            PValues::Step => Self {
                tail_scale: None,
                ..self
            },
            PValues::Smooth => self.smoothed(),
        }
    }

    /// The number of held-out scores.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Never true: a reference has at least one score.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// `(1 + #{r >= score}) / (n + 1)`, in `[1 / (n + 1), 1]`; under [`PValues::Smooth`]
    /// the count is interpolated (see there), in `(1 / (n + 1), 1]`.
    pub fn p_value(&self, score: f64) -> f64 {
        let n = self.sorted.len();
        let below = self.sorted.partition_point(|&r| r < score);
        let mut at_or_above = (n - below) as f64;
        if let Some(scale) = self.tail_scale {
            at_or_above += self.share_of_next(below, score, scale);
        }
        (1.0 + at_or_above) / (n + 1) as f64
    }

    /// How much of the held-out score just below `score` (at `below - 1`) still counts as at
    /// or above it: 1 at that score, falling linearly to 0 at the next one, and beyond the
    /// last one, the exponential tail. 0 at a held-out score and below the first.
    fn share_of_next(&self, below: usize, score: f64, scale: f64) -> f64 {
        let n = self.sorted.len();
        if below == 0 || self.sorted.get(below) == Some(&score) {
            return 0.0;
        }
        let last_below = self.sorted[below - 1];
        match self.sorted.get(below) {
            Some(&next) => (next - score) / (next - last_below),
            None => (-(score - self.sorted[n - 1]) / scale).exp(),
        }
    }
}

/// How the members' p-values become one score.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Combine {
    /// `-ln(min p)`: flags a sample that any member finds unusual.
    #[default]
    MinP,
    /// Fisher's method, `-2 Σ ln p`: rewards samples unusual to several members at once, and
    /// suffers when one member is blind to a kind of OOD.
    Fisher,
}

impl Combine {
    fn name(self) -> &'static str {
        match self {
            Combine::MinP => "MinP",
            Combine::Fisher => "Fisher",
        }
    }

    /// The OOD score of one sample's p-values.
    pub fn score(self, p_values: &[f64]) -> f64 {
        match self {
            Combine::MinP => -p_values.iter().copied().fold(1.0, f64::min).ln(),
            Combine::Fisher => -2.0 * p_values.iter().map(|p| p.ln()).sum::<f64>(),
        }
    }
}

/// A member of a combination: the detectors whose fitted state can be stored (a calibration
/// file carries them). KNN is allowed but stores its whole training bank.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Member {
    /// See [`Msp`].
    Msp(Msp),
    /// See [`MaxLogit`].
    MaxLogit(MaxLogit),
    /// See [`Energy`].
    Energy(Energy),
    /// See [`Mahalanobis`].
    Mahalanobis(Mahalanobis),
    /// See [`Knn`].
    Knn(Knn),
    /// See [`Reconstruction`].
    Reconstruction(Reconstruction),
}

impl Member {
    /// The member as a detector.
    pub fn detector(&self) -> &dyn Detector {
        match self {
            Member::Msp(d) => d,
            Member::MaxLogit(d) => d,
            Member::Energy(d) => d,
            Member::Mahalanobis(d) => d,
            Member::Knn(d) => d,
            Member::Reconstruction(d) => d,
        }
    }

    /// Whether the member reads the features (Mahalanobis, KNN) rather than the logits or
    /// the reconstruction error.
    pub fn reads_features(&self) -> bool {
        matches!(self, Member::Mahalanobis(_) | Member::Knn(_))
    }

    fn detector_mut(&mut self) -> &mut dyn Detector {
        match self {
            Member::Msp(d) => d,
            Member::MaxLogit(d) => d,
            Member::Energy(d) => d,
            Member::Mahalanobis(d) => d,
            Member::Knn(d) => d,
            Member::Reconstruction(d) => d,
        }
    }
}

/// One sample's score with its parts, for explaining a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explained {
    /// The combined OOD score.
    pub score: f64,
    /// Each member: its name, its raw OOD score and its p-value.
    pub members: Vec<(String, f64, f64)>,
}

/// Checks min-p budget shares: min-p, one share per member, each positive and finite.
fn check_budget(shares: &[f64], members: usize, combine: Combine) -> Result<()> {
    if combine != Combine::MinP {
        return Err(CalibrateError::InvalidParameter {
            name: "budget shares under Fisher's combination",
            value: shares.len() as f64,
            expected: "min-p (Fisher's sum has no budget to split)",
        });
    }
    if shares.len() != members {
        return Err(CalibrateError::LengthMismatch {
            left: "budget shares",
            left_len: shares.len(),
            right: "min-p members",
            right_len: members,
        });
    }
    if let Some(&w) = shares.iter().find(|&&w| !(w.is_finite() && w > 0.0)) {
        return Err(CalibrateError::InvalidParameter {
            name: "budget share",
            value: w,
            expected: "positive and finite",
        });
    }
    Ok(())
}

/// Members' p-values against held-out in-distribution scores, combined into one OOD score.
///
/// With [`PValueCombination::with_budget`], min-p splits its budget unequally: member `i`'s
/// p-value is divided by its weight `w_i` (the weights scaled to a mean of 1) before the
/// minimum, so a sample is flagged when `p_i < w_i t` for some member. A member with a small
/// weight then flags only what lies beyond nearly every held-out sample, and the others keep
/// the rest of the held-out rejections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PValueCombination {
    members: Vec<Member>,
    combine: Combine,
    /// One per member, mean 1 (`None`: equal shares).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    budget: Option<Vec<f64>>,
    /// How each member's p-value reads its reference ([`PValues::Step`] in calibrations
    /// made before the choice).
    #[serde(default, skip_serializing_if = "PValues::is_step")]
    p_values: PValues,
    /// One per member, after [`PValueCombination::fit_reference`].
    references: Option<Vec<Reference>>,
}

impl PValueCombination {
    /// Unfitted; `members` must not be empty (checked by `fit`).
    pub fn new(members: Vec<Member>, combine: Combine) -> Self {
        Self {
            members,
            combine,
            budget: None,
            p_values: PValues::Step,
            references: None,
        }
    }

    /// The combination with `p_values`' p-values (the references, when fitted, follow).
    pub fn with_p_values(mut self, p_values: PValues) -> Self {
        self.p_values = p_values;
        self.references = self.references.map(|refs| {
            refs.into_iter()
                .map(|r| r.with_p_values(p_values))
                .collect()
        });
        self
    }

    /// How the members' p-values read their references.
    pub fn p_values(&self) -> PValues {
        self.p_values
    }

    /// Min-p with member `i` given the share `shares[i] / Σ shares` of the budget (see the
    /// type's documentation). Fails unless there is one positive, finite share per member and
    /// the combination is min-p (Fisher's sum has no budget to split).
    pub fn with_budget(mut self, shares: &[f64]) -> Result<Self> {
        check_budget(shares, self.members.len(), self.combine)?;
        let mean = shares.iter().sum::<f64>() / shares.len() as f64;
        self.budget = Some(shares.iter().map(|w| w / mean).collect());
        Ok(self)
    }

    /// Each member's share of the budget, summing to 1.
    pub fn budget_shares(&self) -> Vec<f64> {
        let n = self.members.len() as f64;
        match &self.budget {
            Some(w) => w.iter().map(|w| w / n).collect(),
            None => vec![1.0 / n; self.members.len()],
        }
    }

    /// For min-p with its threshold `threshold` (on `-ln(min p / w)`), the p-value below which
    /// each member flags a sample: `w_i exp(-threshold)`. `None` for Fisher.
    pub fn p_limits(&self, threshold: f64) -> Option<Vec<f64>> {
        (self.combine == Combine::MinP).then(|| {
            let n = self.members.len() as f64;
            self.budget_shares()
                .iter()
                .map(|s| s * n * (-threshold).exp())
                .collect()
        })
    }

    /// The p-values as the combination weighs them: each divided by its member's weight.
    fn weighed(&self, p_values: &[f64]) -> Vec<f64> {
        match &self.budget {
            Some(w) => p_values.iter().zip(w).map(|(p, w)| p / w).collect(),
            None => p_values.to_vec(),
        }
    }

    /// Min-p of energy (logits) and Mahalanobis (features): the default score of candle-ood
    /// before KNN joined it, kept as `ood calibrate --score energy+mahalanobis`.
    pub fn energy_mahalanobis() -> Self {
        Self::new(
            vec![
                Member::Energy(Energy::default()),
                Member::Mahalanobis(Mahalanobis::new()),
            ],
            Combine::MinP,
        )
    }

    /// The default score of candle-ood: min-p of energy (logits), Mahalanobis and the `k`-th
    /// nearest neighbour (features), the KNN bank at most `max_bank` training rows. Energy sees
    /// unknown digits, Mahalanobis far OOD (clothing, noise), and KNN the unknown digits that
    /// sit between two known classes, where energy is weakest (a 3 among 5s and 8s).
    pub fn energy_mahalanobis_knn(k: usize, max_bank: usize) -> Self {
        Self::new(
            vec![
                Member::Energy(Energy::default()),
                Member::Mahalanobis(Mahalanobis::new()),
                Member::Knn(Knn::new(k).with_max_bank(max_bank, 0)),
            ],
            Combine::MinP,
        )
    }

    /// The members.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The combination.
    pub fn combine(&self) -> Combine {
        self.combine
    }

    /// Scores the held-out in-distribution samples with every (fitted) member and keeps them
    /// as the references of the p-values. Call after [`Detector::fit`].
    pub fn fit_reference(&mut self, held_out: &Samples<'_>) -> Result<()> {
        self.fit_reference_widened(held_out, None, |_| false)
    }

    /// [`Self::fit_reference`], but the members that `widen` picks are referenced to
    /// `held_out` and `extra` together (for example held-out samples and restyled copies of
    /// them), so that they find ordinary what `extra` holds; the others to `held_out` alone.
    pub fn fit_reference_widened(
        &mut self,
        held_out: &Samples<'_>,
        extra: Option<&Samples<'_>>,
        widen: impl Fn(&Member) -> bool,
    ) -> Result<()> {
        if self.members.is_empty() {
            return Err(CalibrateError::Empty { what: "members" });
        }
        let references = self
            .members
            .iter()
            .map(|m| {
                let mut scores = m.detector().score(held_out)?;
                if let Some(extra) = extra.filter(|_| widen(m)) {
                    scores.extend(m.detector().score(extra)?);
                }
                Ok(Reference::new(&scores)?.with_p_values(self.p_values))
            })
            .collect::<Result<_>>()?;
        self.references = Some(references);
        Ok(())
    }

    fn references(&self) -> Result<&[Reference]> {
        self.references
            .as_deref()
            .ok_or_else(|| CalibrateError::NotFitted {
                detector: self.name(),
            })
    }

    /// Per sample, the members' raw scores and p-values with the combined score.
    pub fn explain(&self, samples: &Samples<'_>) -> Result<Vec<Explained>> {
        let references = self.references()?;
        if let Some(budget) = &self.budget {
            // A budget read from a file is checked as `with_budget` checks one.
            check_budget(budget, self.members.len(), self.combine)?;
        }
        let raw: Vec<Vec<f64>> = self
            .members
            .iter()
            .map(|m| m.detector().score(samples))
            .collect::<Result<_>>()?;
        Ok((0..samples.len())
            .map(|i| {
                let members: Vec<(String, f64, f64)> = self
                    .members
                    .iter()
                    .zip(references)
                    .zip(&raw)
                    .map(|((m, r), s)| (m.detector().name(), s[i], r.p_value(s[i])))
                    .collect();
                let p: Vec<f64> = members.iter().map(|(_, _, p)| *p).collect();
                Explained {
                    score: self.combine.score(&self.weighed(&p)),
                    members,
                }
            })
            .collect())
    }
}

impl Detector for PValueCombination {
    fn name(&self) -> String {
        let names: Vec<String> = self.members.iter().map(|m| m.detector().name()).collect();
        let budget = match &self.budget {
            Some(_) => {
                let shares: Vec<String> = self
                    .budget_shares()
                    .iter()
                    .map(|s| format!("{:.0}", 100.0 * s))
                    .collect();
                format!("; budget {}%", shares.join("/"))
            }
            None => String::new(),
        };
        let smooth = match self.p_values {
            PValues::Step => "",
            PValues::Smooth => "; smooth p",
        };
        format!(
            "{}[{}{budget}{smooth}]",
            self.combine.name(),
            names.join("+")
        )
    }

    /// Fits every member on the in-distribution training samples. The references come from
    /// other, held-out samples: [`PValueCombination::fit_reference`].
    fn fit(&mut self, id_train: &Samples<'_>, labels: &[usize]) -> Result<()> {
        if self.members.is_empty() {
            return Err(CalibrateError::Empty { what: "members" });
        }
        for m in &mut self.members {
            m.detector_mut().fit(id_train, labels)?;
        }
        self.references = None;
        Ok(())
    }

    fn score(&self, samples: &Samples<'_>) -> Result<Vec<f64>> {
        Ok(self
            .explain(samples)?
            .into_iter()
            .map(|e| e.score)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::threshold_at_id_acceptance;

    #[test]
    fn a_budget_divides_each_p_value_by_its_weight() {
        let members = vec![
            Member::Energy(Energy::default()),
            Member::Mahalanobis(Mahalanobis::new()),
        ];
        let even = PValueCombination::new(members.clone(), Combine::MinP);
        let led = PValueCombination::new(members.clone(), Combine::MinP)
            .with_budget(&[3.0, 1.0])
            .unwrap();
        assert_eq!(led.budget_shares(), vec![0.75, 0.25]);
        assert_eq!(even.budget_shares(), vec![0.5, 0.5]);
        // Weights of mean 1: 1.5 and 0.5. p = (0.03, 0.02): min(0.02, 0.04) = 0.02.
        let p = [0.03, 0.02];
        assert!((Combine::MinP.score(&led.weighed(&p)) + (0.02f64).ln()).abs() < 1e-12);
        // p = (0.02, 0.03): energy's 0.02 / 1.5 is the smaller, where the even split says 0.02.
        let p = [0.02, 0.03];
        assert!((Combine::MinP.score(&led.weighed(&p)) + (0.02f64 / 1.5).ln()).abs() < 1e-12);
        assert!((Combine::MinP.score(&even.weighed(&p)) + (0.02f64).ln()).abs() < 1e-12);
        assert!(led.name().ends_with("; budget 75/25%]"), "{}", led.name());
        let limits = led.p_limits(-(0.01f64).ln()).unwrap();
        assert!((limits[0] - 0.015).abs() < 1e-12 && (limits[1] - 0.005).abs() < 1e-12);
        let limits = even.p_limits(-(0.01f64).ln()).unwrap();
        assert!(
            limits.iter().all(|l| (l - 0.01).abs() < 1e-12),
            "{limits:?}"
        );
        let fisher = PValueCombination::new(members.clone(), Combine::Fisher);
        assert_eq!(fisher.p_limits(1.0), None);
        assert!(PValueCombination::new(members.clone(), Combine::MinP)
            .with_budget(&[1.0])
            .is_err());
        assert!(PValueCombination::new(members.clone(), Combine::MinP)
            .with_budget(&[1.0, 0.0])
            .is_err());
        assert!(PValueCombination::new(members, Combine::Fisher)
            .with_budget(&[1.0, 1.0])
            .is_err());
    }

    #[test]
    fn p_values_by_hand() {
        // Held-out scores 1, 2, 2, 3 (n = 4): p(s) = (1 + #{r >= s}) / 5.
        let r = Reference::new(&[2.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(r.len(), 4);
        assert_eq!(r.p_value(0.0), 1.0); // all four are >= 0
        assert_eq!(r.p_value(1.0), 1.0);
        assert_eq!(r.p_value(1.5), 4.0 / 5.0);
        assert_eq!(r.p_value(2.0), 4.0 / 5.0); // ties count as at least as extreme
        assert_eq!(r.p_value(2.5), 2.0 / 5.0);
        assert_eq!(r.p_value(3.0), 2.0 / 5.0);
        assert_eq!(r.p_value(9.0), 1.0 / 5.0); // beyond every held-out score
        assert!(Reference::new(&[]).is_err());
        assert!(Reference::new(&[1.0, f64::NAN]).is_err());
    }

    #[test]
    fn smooth_p_values_by_hand() {
        // Held out 1, 2, 2, 3 (n = 4) and the tail: n / 100 < 10, so the top 3 over the
        // next one (1): excesses 1, 1, 2, mean 4 / 3.
        let step = Reference::new(&[2.0, 1.0, 3.0, 2.0]).unwrap();
        let r = step.clone().smoothed();
        assert_eq!(r.tail_scale, Some(4.0 / 3.0));
        // At a held-out score, and below the first, the step's value.
        for s in [0.0, 1.0, 2.0, 3.0] {
            assert_eq!(r.p_value(s), step.p_value(s), "at {s}");
        }
        // Halfway from 2 to 3: #{r >= s} = 1 (the 3) + half of the step from 2 to 3.
        assert!((r.p_value(2.5) - 2.5 / 5.0).abs() < 1e-12);
        // A quarter of the way from 1 to 2: 2 (the twos) + 1 (the 3) + 0.75.
        assert!((r.p_value(1.25) - 4.75 / 5.0).abs() < 1e-12);
        // Beyond the last: 1 + exp(-(s - 3) / (4 / 3)), falling towards the floor 1 / 5.
        assert!((r.p_value(3.0 + 4.0 / 3.0) - (1.0 + (-1f64).exp()) / 5.0).abs() < 1e-12);
        assert!(r.p_value(1e9) > 0.0 && (r.p_value(1e9) - 0.2).abs() < 1e-12);
        // Never below the step, and strictly falling where the step is flat.
        let grid: Vec<f64> = (0..=80).map(|i| 0.5 + 0.05 * i as f64).collect();
        for w in grid.windows(2) {
            assert!(r.p_value(w[0]) >= step.p_value(w[0]));
            if w[0] >= 1.0 {
                assert!(r.p_value(w[1]) < r.p_value(w[0]), "{w:?}");
            }
        }
        // One score, or equal top scores: the scale falls back to 1.
        assert_eq!(
            Reference::new(&[5.0]).unwrap().smoothed().tail_scale,
            Some(1.0)
        );
        let flat = Reference::new(&[5.0, 5.0, 5.0, 5.0]).unwrap().smoothed();
        assert_eq!(flat.tail_scale, Some(1.0));
        assert!((flat.p_value(6.0) - (1.0 + (-1f64).exp()) / 5.0).abs() < 1e-12);
        assert_eq!(r.clone().with_p_values(PValues::Step), step);
        assert_eq!(step.clone().with_p_values(PValues::Smooth), r);
        assert_eq!(r.clone().with_p_values(PValues::Smooth), r);
    }

    #[test]
    fn a_smooth_combination_breaks_the_ties_beyond_the_last_held_out_score() {
        let mut c = PValueCombination::new(vec![Member::MaxLogit(MaxLogit)], Combine::MinP);
        c.fit(&samples(&[1.0, 0.0]), &[0]).unwrap();
        // Held out: max logits 4, 3, 2, 1 (MaxLogit scores -4..-1).
        c.fit_reference(&samples(&[4.0, 0.0, 3.0, 0.0, 2.0, 0.0, 1.0, 0.0]))
            .unwrap();
        // Max logits 0.5 and 0: both beyond every held-out score.
        let beyond = samples(&[0.5, 0.0, 0.0, 0.0]);
        let tied = c.score(&beyond).unwrap();
        assert_eq!(tied[0], tied[1]);
        let held = c.score(&samples(&[4.0, 0.0, 2.0, 0.0])).unwrap();
        let smooth = c.clone().with_p_values(PValues::Smooth);
        assert_eq!(smooth.p_values(), PValues::Smooth);
        assert_eq!(smooth.clone().with_p_values(PValues::Step), c);
        assert_eq!(smooth.name(), "MinP[MaxLogit; smooth p]");
        let s = smooth.score(&beyond).unwrap();
        assert!(s[1] > s[0], "the farther sample scores higher: {s:?}");
        assert!(
            s[0] <= tied[0] && s[1] <= tied[1],
            "never above the step's score"
        );
        // The held-out digits themselves keep their scores, so a threshold set on them holds.
        assert_eq!(smooth.score(&samples(&[4.0, 0.0, 2.0, 0.0])).unwrap(), held);
        // Fitted references after the choice are smoothed too, and the choice round-trips;
        // a file without it (before it existed) reads as the step.
        let mut refit = PValueCombination::new(vec![Member::MaxLogit(MaxLogit)], Combine::MinP)
            .with_p_values(PValues::Smooth);
        refit.fit(&samples(&[1.0, 0.0]), &[0]).unwrap();
        refit
            .fit_reference(&samples(&[4.0, 0.0, 3.0, 0.0, 2.0, 0.0, 1.0, 0.0]))
            .unwrap();
        assert_eq!(refit, smooth);
        let json = serde_json::to_string(&smooth).unwrap();
        let back: PValueCombination = serde_json::from_str(&json).unwrap();
        assert_eq!(back, smooth);
        let old = serde_json::to_string(&c).unwrap();
        assert!(
            !old.contains("p_values") && !old.contains("tail_scale"),
            "{old}"
        );
        let back: PValueCombination = serde_json::from_str(&old).unwrap();
        assert_eq!(back.p_values(), PValues::Step);
        assert_eq!("smooth".parse::<PValues>(), Ok(PValues::Smooth));
        assert!("linear".parse::<PValues>().is_err());
    }

    #[test]
    fn combinations_by_hand() {
        let p = [0.5, 0.1, 0.8];
        assert!((Combine::MinP.score(&p) - 10f64.ln()).abs() < 1e-12);
        let fisher = -2.0 * (0.5f64.ln() + 0.1f64.ln() + 0.8f64.ln());
        assert!((Combine::Fisher.score(&p) - fisher).abs() < 1e-12);
        // A p-value of 1 adds nothing to either.
        assert_eq!(Combine::MinP.score(&[1.0, 1.0]), 0.0);
        assert_eq!(Combine::Fisher.score(&[1.0]), 0.0);
    }

    /// Two logit columns, so MaxLogit and (T = 1) energy give different views of one sample.
    fn samples(logits: &[f32]) -> Samples<'_> {
        Samples::new(logits, &[], &[], 2, 0).unwrap()
    }

    #[test]
    fn min_p_of_two_members_by_hand() {
        // MaxLogit scores -max(l); MSP scores -max softmax.
        let mut c = PValueCombination::new(
            vec![Member::MaxLogit(MaxLogit), Member::Msp(Msp)],
            Combine::MinP,
        );
        let train = samples(&[1.0, 0.0]);
        c.fit(&train, &[0]).unwrap();
        assert!(c.score(&train).is_err(), "no references yet");
        // Held out: max logits 4, 3, 2, 1 with the other logit 0.
        let held = [4.0, 0.0, 3.0, 0.0, 2.0, 0.0, 1.0, 0.0];
        c.fit_reference(&samples(&held)).unwrap();
        assert_eq!(c.name(), "MinP[MaxLogit+MSP]");
        // Test: (a) like the most confident held-out sample; (b) max logit 10 but unsure
        // (10 against 10); (c) max logit 0.5 with the other at -5.
        let test = [4.0, 0.0, 10.0, 10.0, 0.5, -5.0];
        let e = c.explain(&samples(&test)).unwrap();
        // (a) MaxLogit -4: all 4 held-out scores (-4..-1) are >= -4 -> p = 5/5; MSP equal to
        //     the most confident held-out one -> p = 5/5 too. Score -ln 1 = 0.
        assert_eq!(e[0].members[0].2, 1.0);
        assert_eq!(e[0].members[1].2, 1.0);
        assert_eq!(e[0].score, 0.0);
        // (b) MaxLogit -10 is below every held-out score -> p = 1; MSP 0.5 is less confident
        //     than every held-out sample -> p = 1/5. min p = 1/5.
        assert_eq!(e[1].members[0].2, 1.0);
        assert_eq!(e[1].members[1].2, 0.2);
        assert!((e[1].score - 5f64.ln()).abs() < 1e-12);
        // (c) MaxLogit -0.5 is above every held-out score -> p = 1/5; MSP near 1, the most
        //     confident of all -> p = 1.
        assert_eq!(e[2].members[0].2, 0.2);
        assert_eq!(e[2].members[1].2, 1.0);
        assert_eq!(
            c.score(&samples(&test)).unwrap(),
            vec![0.0, 5f64.ln(), 5f64.ln()]
        );
        // Refitting the members drops the references.
        c.fit(&train, &[0]).unwrap();
        assert!(c.score(&train).is_err());
    }

    #[test]
    fn only_the_picked_members_are_referenced_to_the_extra_samples() {
        let mut c = PValueCombination::new(
            vec![Member::MaxLogit(MaxLogit), Member::Msp(Msp)],
            Combine::MinP,
        );
        c.fit(&samples(&[1.0, 0.0]), &[0]).unwrap();
        // Held out: max logits 4, 3 (MaxLogit scores -4, -3); extra: max logits 1 and 0.5.
        let held = [4.0, 0.0, 3.0, 0.0];
        let extra = [1.0, 0.0, 0.5, 0.0];
        c.fit_reference_widened(&samples(&held), Some(&samples(&extra)), |m| {
            matches!(m, Member::MaxLogit(_))
        })
        .unwrap();
        let e = c.explain(&samples(&[2.0, 0.0])).unwrap();
        // MaxLogit -2 against -4, -3, -1, -0.5: two at least as large -> p = 3/5.
        assert!((e[0].members[0].2 - 0.6).abs() < 1e-12, "{e:?}");
        // MSP against the two held-out samples alone: less confident than both -> p = 1/3.
        assert!((e[0].members[1].2 - 1.0 / 3.0).abs() < 1e-12, "{e:?}");
        // Widening no member: MaxLogit -2 lies beyond both held-out scores -> p = 1/3.
        c.fit_reference_widened(&samples(&held), Some(&samples(&extra)), |_| false)
            .unwrap();
        let plain = c.explain(&samples(&[2.0, 0.0])).unwrap();
        assert!(
            (plain[0].members[0].2 - 1.0 / 3.0).abs() < 1e-12,
            "{plain:?}"
        );
        assert!(Member::Mahalanobis(Mahalanobis::new()).reads_features());
        assert!(Member::Knn(Knn::new(3)).reads_features());
        assert!(!Member::Energy(Energy::default()).reads_features());
    }

    #[test]
    fn acceptance_threshold_on_combined_scores_with_ties() {
        // A single member and a single class: the p-values of the held-out samples themselves.
        let mut c = PValueCombination::new(vec![Member::MaxLogit(MaxLogit)], Combine::MinP);
        let held = [4.0, 0.0, 3.0, 0.0, 3.0, 0.0, 1.0, 0.0];
        c.fit(&samples(&held), &[0, 0, 0, 0]).unwrap();
        c.fit_reference(&samples(&held)).unwrap();
        let s = c.score(&samples(&held)).unwrap();
        // MaxLogit -4, -3, -3, -1 -> p 5/5, 4/5, 4/5, 2/5.
        let expect = [0.0, -(0.8f64.ln()), -(0.8f64.ln()), -(0.4f64.ln())];
        for (a, b) in s.iter().zip(expect) {
            assert!((a - b).abs() < 1e-12, "{s:?}");
        }
        // Accepting half of them: the two tied samples move together, so the threshold is
        // their score and three of four are accepted (flagged only when score > threshold).
        let t = threshold_at_id_acceptance(&s, 0.5).unwrap();
        assert!((t - expect[1]).abs() < 1e-12);
        assert_eq!(s.iter().filter(|&&x| x <= t).count(), 3);
        let t = threshold_at_id_acceptance(&s, 0.25).unwrap();
        assert_eq!(t, 0.0);
        assert_eq!(s.iter().filter(|&&x| x <= t).count(), 1);
    }

    #[test]
    fn the_combination_round_trips_through_json() {
        let features = [
            0.0f32, 1.0, 1.0, 0.0, 0.1, 0.9, 0.9, 0.1, 0.2, 1.1, 1.2, -0.1,
        ];
        let logits = [
            2.0f32, 0.0, 0.0, 2.0, 3.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 4.0,
        ];
        let all = Samples::new(&logits, &features, &[], 2, 2).unwrap();
        for (mut c, name) in [
            (
                PValueCombination::energy_mahalanobis(),
                "MinP[Energy(T=1)+Mahalanobis]",
            ),
            (
                PValueCombination::energy_mahalanobis_knn(2, 4),
                "MinP[Energy(T=1)+Mahalanobis+KNN(k=2)]",
            ),
        ] {
            c.fit(&all, &[0, 1, 0, 1, 0, 1]).unwrap();
            c.fit_reference(&all).unwrap();
            let back: PValueCombination =
                serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
            assert_eq!(back.score(&all).unwrap(), c.score(&all).unwrap());
            assert_eq!(back.name(), name);
        }
    }
}
