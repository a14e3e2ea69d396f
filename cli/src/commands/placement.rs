//! `--cluster`, `--region` and `--label` on `code register`, `task queue` and `schedule
//! create`: where a task may run. Given none, the request carries no placement (a task then
//! takes its code's; a code runs anywhere on the shared fleet).

use clap::Args;
use drover_proto::v1 as pv;

#[derive(Args, Clone, Debug, Default)]
pub struct PlacementArgs {
    /// Run only on agents of this dedicated cluster (default: the shared fleet).
    #[arg(long)]
    pub cluster: Option<String>,
    /// Run only on agents in this region.
    #[arg(long)]
    pub region: Option<String>,
    /// Run only on agents carrying this label, KEY=VALUE (repeat for several).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = label)]
    pub labels: Vec<(String, String)>,
}

/// Parses `KEY=VALUE` (an empty value is allowed, an empty key is not).
pub fn label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

impl PlacementArgs {
    /// The placement to send, or None when no flag was given.
    pub fn to_proto(&self) -> Option<pv::Placement> {
        if self.cluster.is_none() && self.region.is_none() && self.labels.is_empty() {
            return None;
        }
        Some(pv::Placement {
            cluster: self.cluster.clone().unwrap_or_default(),
            region: self.region.clone().unwrap_or_default(),
            labels: self.labels.iter().cloned().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_make_a_placement_and_none_leave_it_unset() {
        assert_eq!(PlacementArgs::default().to_proto(), None);
        let p = PlacementArgs {
            region: Some("eu".into()),
            labels: vec![label("gpu=1").expect("label"), label("disk=").expect("empty value")],
            ..Default::default()
        };
        let out = p.to_proto().expect("placement");
        assert_eq!((out.region.as_str(), out.cluster.as_str(), out.labels.len()), ("eu", "", 2));
        assert!(label("=1").is_err() && label("gpu").is_err());
    }
}
