//! Prometheus 3 features Updraft refuses on purpose, found in a parsed query before it runs,
//! each refused with an error that names the feature (and, for the experimental ones, the
//! Prometheus flag that enables it there), rather than a generic "not supported" from the
//! middle of evaluation or an answer that is silently empty:
//!
//! - experimental functions (`--enable-feature=promql-experimental-functions`): `info`,
//!   `sort_by_label`, `limitk`, `ts_of_*_over_time`, ...; the two Updraft evaluates,
//!   `double_exponential_smoothing` and `mad_over_time`, pass;
//! - binary operator fill modifiers (`--enable-feature=promql-binop-fill-modifiers`);
//! - the type-and-unit labels `__type__`/`__unit__` in a selector
//!   (`--enable-feature=type-and-unit-labels`; refused on ingest as well);
//! - the functions of native histograms (`histogram_count`, `histogram_sum`, `histogram_avg`,
//!   `histogram_stddev`, `histogram_stdvar`): Updraft stores classic histograms only, where
//!   Prometheus would answer these with nothing.

use crate::error::QueryError;
use promql_parser::parser::{BinModifier, Expr, VectorSelector};

/// Experimental functions of Prometheus 3 that Updraft evaluates anyway.
const EVALUATED_EXPERIMENTAL: [&str; 2] = ["double_exponential_smoothing", "mad_over_time"];

/// Functions defined over native histograms only (`simpleHistogramFunc` in Prometheus'
/// `functions.go` ignores float samples).
const NATIVE_HISTOGRAM_FUNCTIONS: [&str; 5] = [
    "histogram_count",
    "histogram_sum",
    "histogram_avg",
    "histogram_stddev",
    "histogram_stdvar",
];

/// The first refused feature `expr` uses, as an [`QueryError::Unsupported`] naming it.
pub(crate) fn refuse_unsupported(expr: &Expr) -> Result<(), QueryError> {
    match expr {
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => Ok(()),
        Expr::VectorSelector(vs) => selector(vs),
        Expr::MatrixSelector(ms) => selector(&ms.vs),
        Expr::Paren(p) => refuse_unsupported(&p.expr),
        Expr::Unary(u) => refuse_unsupported(&u.expr),
        Expr::Subquery(s) => refuse_unsupported(&s.expr),
        Expr::Aggregate(a) => {
            let op = a.op.to_string();
            if matches!(op.as_str(), "limitk" | "limit_ratio") {
                return Err(experimental(&format!("aggregation `{op}`")));
            }
            if let Some(param) = &a.param {
                refuse_unsupported(param)?;
            }
            refuse_unsupported(&a.expr)
        }
        Expr::Binary(b) => {
            if b.modifier.as_ref().is_some_and(has_fill) {
                return Err(QueryError::Unsupported(
                    "the `fill` modifiers of binary operators (experimental in Prometheus 3, \
                     --enable-feature=promql-binop-fill-modifiers)"
                        .into(),
                ));
            }
            refuse_unsupported(&b.lhs)?;
            refuse_unsupported(&b.rhs)
        }
        Expr::Call(c) => {
            let name = c.func.name;
            if NATIVE_HISTOGRAM_FUNCTIONS.contains(&name) {
                return Err(QueryError::Unsupported(format!(
                    "function `{name}`, which applies to native histograms only (Updraft stores \
                     classic histograms: use the `_count` and `_sum` series),"
                )));
            }
            if c.func.experimental && !EVALUATED_EXPERIMENTAL.contains(&name) {
                return Err(experimental(&format!("function `{name}`")));
            }
            c.args
                .args
                .iter()
                .try_for_each(|arg| refuse_unsupported(arg))
        }
    }
}

fn experimental(what: &str) -> QueryError {
    QueryError::Unsupported(format!(
        "{what} (experimental in Prometheus 3, --enable-feature=promql-experimental-functions)"
    ))
}

fn has_fill(m: &BinModifier) -> bool {
    m.fill_values.lhs.is_some() || m.fill_values.rhs.is_some()
}

fn selector(vs: &VectorSelector) -> Result<(), QueryError> {
    let matchers = vs
        .matchers
        .matchers
        .iter()
        .chain(vs.matchers.or_matchers.iter().flatten());
    for m in matchers {
        if protocols::model::RESERVED_LABEL_NAMES.contains(&m.name.as_str()) {
            return Err(QueryError::Unsupported(format!(
                "label `{}`, one of the type-and-unit labels (experimental in Prometheus 3, \
                 --enable-feature=type-and-unit-labels),",
                m.name
            )));
        }
    }
    Ok(())
}
