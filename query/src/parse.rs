//! PromQL text to the parser's AST, with our error type. Below the engine (queries) and the
//! selector module (the API's `match[]`), which both parse.

use crate::error::QueryError;
use promql_parser::parser::Expr;
use promql_parser::parser::function::{Function, register_extra_functions};
use promql_parser::parser::value::ValueType;
use std::sync::OnceLock;

/// Teaches the parser Prometheus 2's name of `double_exponential_smoothing`, `holt_winters`,
/// which promql-parser (following Prometheus 3) does not know. The parser's function table
/// is process-wide; registering once is enough, and a failure (the name became a built-in)
/// leaves the built-in in place.
fn register_holt_winters() {
    static REGISTERED: OnceLock<()> = OnceLock::new();
    REGISTERED.get_or_init(|| {
        let _ = register_extra_functions(vec![Function::new(
            "holt_winters",
            vec![ValueType::Matrix, ValueType::Scalar, ValueType::Scalar],
            0,
            ValueType::Vector,
            false,
        )]);
    });
}

/// Parses PromQL, mapping the parser's error into ours.
pub(crate) fn parse(query: &str) -> Result<Expr, QueryError> {
    register_holt_winters();
    if query.trim().is_empty() {
        // The parser's own message for this case is unhelpful; this is Prometheus' wording.
        return Err(QueryError::Parse("no expression found in input".into()));
    }
    promql_parser::parser::parse(query).map_err(|message| {
        // The parser refuses a selector that matches everything in Prometheus' words, which
        // are also `EmptySelector`'s: keep one variant for the one error.
        if message == QueryError::EmptySelector.to_string() {
            QueryError::EmptySelector
        } else {
            QueryError::Parse(message)
        }
    })
}
