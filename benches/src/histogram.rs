//! Quantiles of a Prometheus histogram over a window: the difference of two scrapes of
//! its cumulative buckets. A quantile is reported as the upper bound of the bucket it
//! falls in (the most a scrape can say).

/// Cumulative bucket counts gained between two scrapes, by upper bound.
pub struct Delta {
    buckets: Vec<(f64, u64)>,
    /// Sum of the observations in the window (seconds).
    sum: f64,
}

impl Delta {
    /// The buckets of the unlabelled histogram `name` in `after` minus those in `before`.
    pub fn between(before: &str, after: &str, name: &str) -> Delta {
        let b = buckets(before, name);
        let mut buckets = buckets(after, name);
        for (le, n) in &mut buckets {
            let was = b.iter().find(|(l, _)| l == le).map(|(_, n)| *n).unwrap_or(0);
            *n = n.saturating_sub(was);
        }
        let sum_of = |text: &str| drover_chaos::exposition::value(text, &format!("{name}_sum")).unwrap_or(0.0);
        Delta { buckets, sum: (sum_of(after) - sum_of(before)).max(0.0) }
    }

    /// The mean observation (seconds) in the window: exact, unlike the bucket bounds.
    pub fn mean(&self) -> Option<f64> {
        let n = self.count();
        (n > 0).then(|| self.sum / n as f64)
    }

    /// Observations in the window.
    pub fn count(&self) -> u64 {
        self.buckets.last().map(|(_, n)| *n).unwrap_or(0)
    }

    /// The upper bound (seconds) of the bucket holding quantile `q`; `None` with no
    /// observation, infinity past the last finite bucket.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        self.buckets.iter().find(|(_, n)| *n >= rank).map(|(le, _)| *le)
    }
}

fn buckets(exposition: &str, name: &str) -> Vec<(f64, u64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut out: Vec<(f64, u64)> = exposition
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, count) = rest.split_once("\"}")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, count.trim().parse::<f64>().ok()? as u64))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_the_difference_of_two_scrapes() {
        let before = "h_bucket{le=\"0.01\"} 5\nh_bucket{le=\"0.1\"} 5\nh_bucket{le=\"+Inf\"} 5\n";
        let after = "h_bucket{le=\"0.01\"} 55\nh_bucket{le=\"0.1\"} 104\nh_bucket{le=\"+Inf\"} 105\nh_sum 3\n";
        let d = Delta::between(before, after, "h");
        assert_eq!(d.count(), 100);
        assert_eq!(d.quantile(0.50), Some(0.01));
        assert_eq!(d.quantile(0.51), Some(0.1));
        assert_eq!(d.quantile(0.99), Some(0.1));
        assert_eq!(d.quantile(1.0), Some(f64::INFINITY));
        assert_eq!(Delta::between(after, after, "h").quantile(0.5), None);
        // 3 s over 100 observations (no _sum before counts as 0).
        assert_eq!(d.mean(), Some(0.03));
        assert_eq!(Delta::between(after, after, "h").mean(), None);
    }
}
