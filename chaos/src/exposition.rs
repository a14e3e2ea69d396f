//! Reading one value out of a Prometheus text exposition (a node's or an agent's
//! `/metrics`), for tests and benchmarks that check what a node counted.

/// The value of the sample named exactly `series` (a metric name with its label set as
/// exposed, e.g. `drover_x_total{side="leader"}`), if the exposition has it.
pub fn value(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        rest.starts_with(' ').then(|| rest.trim().parse::<f64>().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_series_by_its_exact_name_and_labels() {
        let text = "# HELP x\ndrover_r_total{side=\"leader\"} 12\ndrover_r_total{side=\"follower\"} 3\n\
                    drover_r_total_more 7\ndrover_r_total 5\n";
        assert_eq!(super::value(text, "drover_r_total{side=\"follower\"}"), Some(3.0));
        assert_eq!(super::value(text, "drover_r_total{side=\"leader\"}"), Some(12.0));
        assert_eq!(super::value(text, "drover_r_total"), Some(5.0), "not a longer name sharing the prefix");
        assert_eq!(super::value(text, "drover_other"), None);
    }
}
