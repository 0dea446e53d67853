//! libiscsi's conformance suite, `iscsi-test-cu`, over every test it has
//! (family ALL, destructive tests allowed) against dedicated RAM volumes:
//! a 512-byte-block LUN with one URL, the same LUN again with a second URL
//! through another portal group (so the multipath tests run too), and a
//! 4096-byte-block LUN with one URL.
//!
//! A test counts as passed when CUnit passed it without printing
//! "[SKIPPED]", skipped when it did, failed otherwise. Every test must pass
//! or skip in every run; the totals are printed and written to
//! `$CARGO_TARGET_TMPDIR/iscsi-test-cu-results.txt`.

mod iscsi_common;

use iscsi_common::{require, run, Target};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Verdict {
    Passed,
    Skipped,
    Failed,
}

/// Parses `iscsi-test-cu` verbose output into suite.test -> (verdict, text).
fn parse(out: &str) -> BTreeMap<String, (Verdict, String)> {
    let mut res = BTreeMap::new();
    let mut suite = String::new();
    let mut cur: Option<(String, String)> = None;
    let flush = |cur: &mut Option<(String, String)>,
                 res: &mut BTreeMap<String, (Verdict, String)>| {
        if let Some((name, text)) = cur.take() {
            let failed = text
                .lines()
                .any(|l| l.trim_end() == "FAILED" || l.ends_with("...FAILED"));
            let v = if failed {
                Verdict::Failed
            } else if text.contains("[SKIPPED]") {
                Verdict::Skipped
            } else {
                Verdict::Passed
            };
            res.insert(name, (v, text));
        }
    };
    for line in out.lines() {
        if let Some(s) = line.strip_prefix("Suite: ") {
            flush(&mut cur, &mut res);
            suite = s.trim().to_string();
        } else if let Some(rest) = line.strip_prefix("  Test: ") {
            flush(&mut cur, &mut res);
            let (name, tail) = rest.split_once(" ...").unwrap_or((rest, ""));
            cur = Some((format!("{suite}.{}", name.trim()), format!("...{tail}\n")));
        } else if line.starts_with("Run Summary") {
            flush(&mut cur, &mut res);
        } else if let Some((_, text)) = cur.as_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    flush(&mut cur, &mut res);
    res
}

fn suite(urls: &[&str]) -> (BTreeMap<String, (Verdict, String)>, String) {
    let mut args = vec!["-d", "-t", "ALL"];
    args.extend_from_slice(urls);
    let (_, out) = run(900, "iscsi-test-cu", &args);
    (parse(&out), out)
}

/// One run of the suite: a label, the verdicts, the raw output.
struct Run {
    label: &'static str,
    verdicts: BTreeMap<String, (Verdict, String)>,
    output: String,
}

#[test]
fn libiscsi_conformance_suite_has_no_failures() {
    require("iscsi-test-cu");
    let (_, list) = run(30, "iscsi-test-cu", &["--list"]);
    let all: Vec<String> = list
        .lines()
        .filter_map(|l| l.strip_prefix("ALL."))
        .filter(|l| l.matches('.').count() == 1)
        .map(str::to_string)
        .collect();
    assert!(all.len() > 200, "iscsi-test-cu --list: {list}");

    // A dedicated 512-byte and a 4096-byte volume, each reachable through
    // two portal groups (two target ports of one ALUA group).
    let t = Target::start("cu", &["cu512:64M", "cu4k:64M:4096"], 2, true, &[]);
    let started = std::time::Instant::now();
    let mut runs = Vec::new();
    for (label, urls) in [
        ("512-byte LUN, one path", vec![t.url(0, "cu512", 0)]),
        (
            "512-byte LUN, two paths",
            vec![t.url(0, "cu512", 0), t.url(1, "cu512", 0)],
        ),
        ("4096-byte LUN, one path", vec![t.url(0, "cu4k", 0)]),
    ] {
        let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
        let (verdicts, output) = suite(&urls);
        runs.push(Run {
            label,
            verdicts,
            output,
        });
    }
    let elapsed = started.elapsed();

    let mut failures = Vec::new();
    let mut combined: BTreeMap<&str, (Verdict, String)> = BTreeMap::new();
    for name in &all {
        let mut best: Option<(Verdict, String)> = None;
        for r in &runs {
            match r.verdicts.get(name) {
                None => failures.push(format!("{name} ({}): not run", r.label)),
                Some((Verdict::Failed, text)) => {
                    failures.push(format!("{name} ({}):\n{text}", r.label))
                }
                Some((v, text)) => {
                    // Passed in any run counts (multipath tests only run
                    // with two URLs).
                    if best.as_ref().is_none_or(|b| *v < b.0) {
                        best = Some((*v, text.clone()));
                    }
                }
            }
        }
        combined.insert(name, best.unwrap_or((Verdict::Failed, String::new())));
    }
    let count = |m: &BTreeMap<String, (Verdict, String)>, v: Verdict| {
        m.values().filter(|x| x.0 == v).count()
    };
    let total = |v: Verdict| combined.values().filter(|x| x.0 == v).count();
    let mut report = format!(
        "iscsi-test-cu -d -t ALL: {} tests; combined over the runs: {} passed, {} skipped, {} failed; the runs took {:.0} s\n",
        all.len(),
        total(Verdict::Passed),
        total(Verdict::Skipped),
        failures.len(),
        elapsed.as_secs_f64()
    );
    for r in &runs {
        report.push_str(&format!(
            "  {:<26} {} passed, {} skipped, {} failed\n",
            r.label,
            count(&r.verdicts, Verdict::Passed),
            count(&r.verdicts, Verdict::Skipped),
            count(&r.verdicts, Verdict::Failed)
        ));
    }
    let mut families: BTreeMap<&str, [usize; 3]> = BTreeMap::new();
    for (name, (v, _)) in &combined {
        let fam = name.split('.').next().unwrap_or("");
        families.entry(fam).or_default()[*v as usize] += 1;
    }
    for (fam, [p, s, f]) in &families {
        report.push_str(&format!(
            "  {fam:<26} passed {p:>2}  skipped {s:>2}  failed {f}\n"
        ));
    }
    for (name, (v, text)) in &combined {
        if *v == Verdict::Skipped {
            let why = text
                .lines()
                .find(|l| l.contains("[SKIPPED]"))
                .map(|l| l.trim().trim_start_matches("...").trim().to_string())
                .unwrap_or_default();
            report.push_str(&format!("  skipped {name}: {why}\n"));
        }
    }
    println!("{report}");
    if let Some(dir) = option_env!("CARGO_TARGET_TMPDIR") {
        let mut all_out = report.clone();
        for r in &runs {
            all_out.push_str(&format!("\n--- {} ---\n{}", r.label, r.output));
        }
        let _ = std::fs::write(
            std::path::Path::new(&dir).join("iscsi-test-cu-results.txt"),
            all_out,
        );
    }
    assert!(
        failures.is_empty(),
        "{} failing test(s):\n{}\ntarget log:\n{}",
        failures.len(),
        failures.join("\n"),
        t.log()
    );
    // tgt, Linux's user-space target, passes 157 of these on this suite.
    assert!(
        total(Verdict::Passed) >= 204,
        "fewer tests pass than before:\n{report}"
    );
}
