//! How every service registers its Prometheus metrics: all at once, through
//! [`register_all`], so a service's `/metrics` is whatever it listed, and a
//! name registered twice is found at start-up, not in production.

use prometheus::core::Collector;
use prometheus::Registry;

/// A metric, boxed for [`register_all`] (the registry keeps a clone; the
/// service updates its own handle, which shares the values).
pub fn boxed<C: Collector + Clone + 'static>(metric: &C) -> Box<dyn Collector> {
    Box::new(metric.clone())
}

/// Registers every metric in `registry`. Panics when a name or a metric is
/// registered twice, or a description is empty: a programmer's error.
pub fn register_all(registry: &Registry, metrics: impl IntoIterator<Item = Box<dyn Collector>>) {
    for metric in metrics {
        let names: Vec<String> = metric.desc().iter().map(|desc| desc.fq_name.clone()).collect();
        if let Err(e) = registry.register(metric) {
            panic!("registering metric {names:?}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{IntCounter, IntGauge};

    use super::*;

    #[test]
    fn every_metric_listed_is_exported() {
        let registry = Registry::new();
        let (a, b) = (
            IntCounter::new("a_total", "a").unwrap(),
            IntGauge::new("b", "b").unwrap(),
        );
        register_all(&registry, [boxed(&a), boxed(&b)]);
        a.inc();
        let names: Vec<String> = registry.gather().iter().map(|f| f.name().to_string()).collect();
        assert_eq!(names, ["a_total", "b"]);
    }

    #[test]
    #[should_panic(expected = "registering metric [\"a_total\"]")]
    fn a_name_registered_twice_is_a_programmers_error() {
        let registry = Registry::new();
        let a = IntCounter::new("a_total", "a").unwrap();
        register_all(&registry, [boxed(&a), boxed(&a)]);
    }
}
