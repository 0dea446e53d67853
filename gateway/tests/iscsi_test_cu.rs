//! libiscsi's conformance suite, `iscsi-test-cu`, over every test it has
//! (family ALL, destructive tests allowed) against a dedicated RAM volume:
//! once with one URL, once more with a second URL to the same LUN through
//! another portal group, so the multipath tests run too.
//!
//! A test counts as passed when CUnit passed it without printing
//! "[SKIPPED]", skipped when it did, failed otherwise. Every test must pass
//! or skip in both runs; the totals are printed and written to
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

    let t = Target::start("cu", &["cu:64M"], 2, true, &[]);
    let one = t.url(0, "cu", 0);
    let two = t.url(1, "cu", 0);
    let started = std::time::Instant::now();
    let (single, out1) = suite(&[&one]);
    let (multi, out2) = suite(&[&one, &two]);
    let elapsed = started.elapsed();

    let mut report = String::new();
    let mut failures = Vec::new();
    let mut combined: BTreeMap<&str, Verdict> = BTreeMap::new();
    for name in &all {
        let a = single.get(name).map(|x| x.0);
        let b = multi.get(name).map(|x| x.0);
        for (run, v, m) in [("one path", a, &single), ("two paths", b, &multi)] {
            match v {
                None => failures.push(format!("{name} ({run}): not run")),
                Some(Verdict::Failed) => failures.push(format!("{name} ({run}):\n{}", m[name].1)),
                _ => {}
            }
        }
        // Passed in either run (multipath tests only run with two URLs).
        let v = match (a, b) {
            (Some(Verdict::Passed), _) | (_, Some(Verdict::Passed)) => Verdict::Passed,
            (Some(Verdict::Failed), _) | (_, Some(Verdict::Failed)) => Verdict::Failed,
            _ => Verdict::Skipped,
        };
        combined.insert(name, v);
    }
    let mut families: BTreeMap<&str, [usize; 3]> = BTreeMap::new();
    for (name, v) in &combined {
        let fam = name.split('.').next().unwrap_or("");
        families.entry(fam).or_default()[*v as usize] += 1;
    }
    let count = |m: &BTreeMap<String, (Verdict, String)>, v: Verdict| {
        m.values().filter(|x| x.0 == v).count()
    };
    let total = |v: Verdict| combined.values().filter(|x| **x == v).count();
    report.push_str(&format!(
        "iscsi-test-cu ALL: {} tests; one path: {} passed, {} skipped, {} failed; two paths: {} passed, {} skipped, {} failed; combined: {} passed, {} skipped, {} failed; both runs took {:.0} s\n",
        all.len(),
        count(&single, Verdict::Passed),
        count(&single, Verdict::Skipped),
        count(&single, Verdict::Failed),
        count(&multi, Verdict::Passed),
        count(&multi, Verdict::Skipped),
        count(&multi, Verdict::Failed),
        total(Verdict::Passed),
        total(Verdict::Skipped),
        total(Verdict::Failed),
        elapsed.as_secs_f64()
    ));
    for (fam, [p, s, f]) in &families {
        report.push_str(&format!(
            "  {fam:<26} passed {p:>2}  skipped {s:>2}  failed {f}\n"
        ));
    }
    for (name, v) in &combined {
        if *v == Verdict::Skipped {
            let why = multi[*name]
                .1
                .lines()
                .find(|l| l.contains("[SKIPPED]"))
                .map(|l| l.trim().to_string())
                .unwrap_or_default();
            report.push_str(&format!("  skipped {name}: {why}\n"));
        }
    }
    println!("{report}");
    if let Some(dir) = option_env!("CARGO_TARGET_TMPDIR") {
        let _ = std::fs::write(
            std::path::Path::new(&dir).join("iscsi-test-cu-results.txt"),
            format!("{report}\n--- one path ---\n{out1}\n--- two paths ---\n{out2}"),
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
        total(Verdict::Passed) >= 186,
        "fewer tests pass than before:\n{report}"
    );
}
