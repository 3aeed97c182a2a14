//! Reporting test results: text for a terminal, like `promtool test rules`
//! (each failing case with expected against got, and what decided), and
//! JUnit XML for CI systems.

use std::fmt::Write as _;

use super::run::SuiteResult;

/// The report of one file for a terminal.
pub fn text(result: &SuiteResult) -> String {
    let mut out = String::new();
    let failed = result
        .cases
        .iter()
        .filter(|c| !c.failures.is_empty())
        .count();
    let _ = writeln!(
        out,
        "{}: {} cases, {} passed, {} failed",
        result.file,
        result.cases.len(),
        result.cases.len() - failed,
        failed
    );
    for case in result.cases.iter().filter(|c| !c.failures.is_empty()) {
        let _ = writeln!(
            out,
            "  FAILED: \"{}\" ({}:{})",
            case.name, result.file, case.line
        );
        for f in &case.failures {
            let _ = writeln!(
                out,
                "    line {}: {}: expected {}, got {}",
                f.line, f.field, f.expected, f.got
            );
            if !f.context.is_empty() {
                let _ = writeln!(out, "      {}", f.context);
            }
        }
    }
    if !result.unexercised.is_empty() {
        let _ = writeln!(
            out,
            "  rules no case exercised: {}",
            result.unexercised.join(", ")
        );
    }
    out
}

/// The results as JUnit XML: one test suite per file, one test case per
/// case; a failure's message is its first difference, its text all of them.
/// A file refused before any case ran (`errored`: its name and why) is a
/// suite with one errored test case, so CI does not pass over it.
pub fn junit(
    results: &[SuiteResult],
    errored: &[(String, String)],
) -> Result<String, quick_junit::SerializeError> {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let mut report = Report::new("careroute test");
    for (file, why) in errored {
        let mut suite = TestSuite::new(file.as_str());
        let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
        status.set_message(why.as_str());
        suite.add_test_case(TestCase::new("the test file", status));
        report.add_test_suite(suite);
    }
    for result in results {
        let mut suite = TestSuite::new(result.file.as_str());
        for case in &result.cases {
            let status = match case.failures.first() {
                None => TestCaseStatus::success(),
                Some(first) => {
                    let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    status.set_message(format!(
                        "line {}: {}: expected {}, got {}",
                        first.line, first.field, first.expected, first.got
                    ));
                    let all: Vec<String> = case
                        .failures
                        .iter()
                        .map(|f| {
                            format!(
                                "line {}: {}: expected {}, got {} ({})",
                                f.line, f.field, f.expected, f.got, f.context
                            )
                        })
                        .collect();
                    status.set_description(all.join("\n"));
                    status
                }
            };
            let mut test = TestCase::new(case.name.as_str(), status);
            test.set_classname(format!("{}:{}", result.file, case.line));
            suite.add_test_case(test);
        }
        report.add_test_suite(suite);
    }
    report.to_string()
}
