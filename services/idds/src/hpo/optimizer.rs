//! Built-in optimizers behind one trait. Both are stateless: the points they propose depend only
//! on the space, the history (every earlier point with its loss) and the study's seed, so a
//! restarted idds proposes what it would have proposed before (same build).
//!
//! - [`Random`]: independent uniform draws in the unit cube (seeded).
//! - [`Tpe`]: the Tree-structured Parzen Estimator (Bergstra et al. 2011), written here because
//!   it needs no linear algebra: losses split the history into the best quarter and the rest,
//!   each dimension gets a Parzen density (a truncated Gaussian mixture on [0, 1], or smoothed
//!   frequencies for categorical parameters) for both groups, and of 24 candidates drawn from the
//!   good density the one maximising good/bad is proposed. Within a batch, each proposal is
//!   counted as a bad observation for the next ("constant liar"), which spreads the batch.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::space::{Param, Point, Space};

/// One earlier point: its parameters and its loss (None while it runs, or when it failed).
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Parameters.
    pub params: Point,
    /// Loss once known.
    pub loss: Option<f64>,
}

/// Proposes new points.
pub trait Optimizer: Send + Sync {
    /// `n` new points of `space`, given every earlier point; deterministic for a given seed
    /// and history.
    fn ask(&self, space: &Space, history: &[Observation], n: usize, seed: u64) -> Vec<Point>;
}

/// The random stream for one `ask`: the seed mixed with how many points exist already.
fn rng_for(seed: u64, history: &[Observation]) -> StdRng {
    StdRng::seed_from_u64(seed ^ (history.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Uniform random search.
#[derive(Debug, Clone, Copy, Default)]
pub struct Random;

impl Optimizer for Random {
    fn ask(&self, space: &Space, history: &[Observation], n: usize, seed: u64) -> Vec<Point> {
        let mut rng = rng_for(seed, history);
        (0..n).map(|_| random_point(space, &mut rng)).collect()
    }
}

fn random_point(space: &Space, rng: &mut StdRng) -> Point {
    space.params.iter().map(|(name, param)| (name.clone(), param.from_unit(rng.random::<f64>()))).collect()
}

/// Tree-structured Parzen Estimator.
#[derive(Debug, Clone, Copy)]
pub struct Tpe {
    /// Points drawn at random before the model is used (at least 2).
    pub startup: usize,
    /// The share of the history counted as good.
    pub gamma: f64,
    /// Candidates scored per proposal.
    pub candidates: usize,
}

impl Default for Tpe {
    fn default() -> Self {
        Tpe { startup: 8, gamma: 0.25, candidates: 24 }
    }
}

impl Optimizer for Tpe {
    fn ask(&self, space: &Space, history: &[Observation], n: usize, seed: u64) -> Vec<Point> {
        let mut rng = rng_for(seed, history);
        let mut done: Vec<(f64, &Point)> =
            history.iter().filter_map(|o| o.loss.filter(|l| l.is_finite()).map(|l| (l, &o.params))).collect();
        if done.len() < self.startup.max(2) {
            return (0..n).map(|_| random_point(space, &mut rng)).collect();
        }
        done.sort_by(|a, b| a.0.total_cmp(&b.0));
        let n_good = ((self.gamma * done.len() as f64).ceil() as usize).clamp(1, done.len() - 1);
        let good: Vec<Point> = done[..n_good].iter().map(|(_, p)| (*p).clone()).collect();
        let mut bad: Vec<Point> = done[n_good..].iter().map(|(_, p)| (*p).clone()).collect();
        // Points still running count as bad: the batch should look elsewhere.
        bad.extend(history.iter().filter(|o| o.loss.is_none()).map(|o| o.params.clone()));
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let models: Vec<(&String, &Param, Density, Density)> = space
                .params
                .iter()
                .map(|(name, param)| (name, param, Density::fit(param, name, &good), Density::fit(param, name, &bad)))
                .collect();
            let mut best: Option<(f64, Point)> = None;
            for _ in 0..self.candidates.max(1) {
                let mut point = Point::new();
                let mut score = 0.0;
                for (name, param, l, g) in &models {
                    let value = l.sample(param, &mut rng);
                    score += l.log_density(param, &value) - g.log_density(param, &value);
                    point.insert((*name).clone(), value);
                }
                if best.as_ref().is_none_or(|(s, _)| score > *s) {
                    best = Some((score, point));
                }
            }
            let point = best.map(|(_, p)| p).unwrap_or_else(|| random_point(space, &mut rng));
            bad.push(point.clone());
            out.push(point);
        }
        out
    }
}

/// A one-dimensional density over a parameter.
enum Density {
    /// Truncated Gaussian mixture on [0, 1]: (mean, sigma) per component, equal weights.
    Parzen(Vec<(f64, f64)>),
    /// Probabilities per choice.
    Choices(Vec<f64>),
}

impl Density {
    fn fit(param: &Param, name: &str, points: &[Point]) -> Density {
        if let Some(k) = param.n_choices() {
            // One pseudo-count per choice keeps every choice possible.
            let mut counts = vec![1.0; k];
            for point in points {
                if let Some(i) = point.get(name).and_then(|v| param.choice_index(v)) {
                    counts[i] += 1.0;
                }
            }
            let total: f64 = counts.iter().sum();
            return Density::Choices(counts.into_iter().map(|c| c / total).collect());
        }
        let mut mus: Vec<f64> = points.iter().filter_map(|p| p.get(name).and_then(|v| param.to_unit(v))).collect();
        mus.sort_by(f64::total_cmp);
        let prior_sigma = 1.0;
        let min_sigma = prior_sigma / (1.0 + mus.len() as f64).min(100.0);
        let mut components = Vec::with_capacity(mus.len() + 1);
        for (i, &mu) in mus.iter().enumerate() {
            let left = if i == 0 { mu } else { mu - mus[i - 1] };
            let right = if i + 1 == mus.len() { 1.0 - mu } else { mus[i + 1] - mu };
            components.push((mu, left.max(right).clamp(min_sigma, prior_sigma)));
        }
        // The prior: a wide component in the middle.
        components.push((0.5, prior_sigma));
        Density::Parzen(components)
    }

    fn sample(&self, param: &Param, rng: &mut StdRng) -> serde_json::Value {
        match self {
            Density::Choices(probs) => {
                let mut u = rng.random::<f64>();
                for (i, p) in probs.iter().enumerate() {
                    if u < *p {
                        return param.choice(i);
                    }
                    u -= p;
                }
                param.choice(probs.len().saturating_sub(1))
            }
            Density::Parzen(components) => {
                let (mu, sigma) = components[rng.random_range(0..components.len())];
                // Rejection into [0, 1]; a component mostly outside falls back to clamping.
                let mut x = mu;
                for _ in 0..16 {
                    x = mu + sigma * standard_normal(rng);
                    if (0.0..=1.0).contains(&x) {
                        break;
                    }
                }
                param.from_unit(x.clamp(0.0, 1.0))
            }
        }
    }

    fn log_density(&self, param: &Param, value: &serde_json::Value) -> f64 {
        match self {
            Density::Choices(probs) => {
                param.choice_index(value).and_then(|i| probs.get(i)).copied().unwrap_or(f64::MIN_POSITIVE).ln()
            }
            Density::Parzen(components) => {
                let Some(x) = param.to_unit(value) else { return f64::MIN_POSITIVE.ln() };
                let sum: f64 = components
                    .iter()
                    .map(|&(mu, sigma)| {
                        let mass = normal_cdf((1.0 - mu) / sigma) - normal_cdf(-mu / sigma);
                        let z = (x - mu) / sigma;
                        (-0.5 * z * z).exp() / (sigma * (2.0 * std::f64::consts::PI).sqrt() * mass.max(1e-12))
                    })
                    .sum();
                (sum / components.len() as f64).max(f64::MIN_POSITIVE).ln()
            }
        }
    }
}

/// Box–Muller.
fn standard_normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Φ(x), through erf (Abramowitz & Stegun 7.1.26, absolute error below 1.5e-7).
fn normal_cdf(x: f64) -> f64 {
    0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

fn erf(x: f64) -> f64 {
    let sign = if x < 0.0 { -1.0 } else { 1.0 };
    let x = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly =
        t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    sign * (1.0 - poly * (-x * x).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        assert!((erf(0.0)).abs() < 1e-6);
        assert!((erf(1.0) - 0.842_700_79).abs() < 1e-6);
        assert!((erf(-2.0) + 0.995_322_27).abs() < 1e-6);
        assert!((normal_cdf(1.959_964) - 0.975).abs() < 1e-6);
    }
}
