//! Shared helpers for Ferrite's benchmarks: the `RESULT <name> <value> <unit>`
//! lines every benchmark prints after its human-readable table.

/// Prints one machine-readable result line.
pub fn result(name: &str, value: f64, unit: &str) {
    if value.abs() >= 100.0 || value == value.trunc() {
        println!("RESULT {name} {value:.0} {unit}");
    } else {
        println!("RESULT {name} {value:.2} {unit}");
    }
}

/// The median of several runs (benchmarks repeat and report the median so
/// that one noisy run on a shared machine does not decide the figure).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}
