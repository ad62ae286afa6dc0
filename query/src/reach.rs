//! What a query's steps read: for a cache of range-query results, which must know when a
//! cached step can be reused (its value depends only on its own time) and which writes make
//! it stale (those inside the time span and metrics it read).
//!
//! Every step of a PromQL query is evaluated on its own: its value depends on the stored
//! samples and on the step's time `t`, except through `@` (`@ start()`, `@ end()` name the
//! query's bounds, `@ t0` a fixed time, which a cache keyed by step would get right, but
//! refusing every `@` keeps the rule simple). Subquery steps are aligned to the epoch, not
//! to the query's start, so they are fine.

use crate::error::QueryError;
use crate::features::refuse_unsupported;
use crate::options::EngineOptions;
use crate::parse::parse;
use promql_parser::label::MatchOp;
use promql_parser::parser::{Expr, Offset, VectorSelector};
use protocols::model::METRIC_NAME_LABEL;
use std::time::Duration;

/// The samples a step at `t` may read: timestamps in `[t - back_ms, t + forward_ms]`, of
/// series named in `names`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    pub back_ms: i64,
    pub forward_ms: i64,
    /// The metric name of every selector, sorted and deduplicated; `None` when some selector
    /// does not name its metric by equality (it may read any series).
    pub names: Option<Vec<String>>,
}

/// The [`Reach`] of `query`, or `Ok(None)` when its steps depend on more than their own time
/// (`@`). Errors are the parser's (the engine would give the same).
pub fn reach(query: &str, options: &EngineOptions) -> Result<Option<Reach>, QueryError> {
    let expr = parse(query)?;
    refuse_unsupported(&expr)?;
    let mut walk = Walk {
        lookback_ms: options.lookback_delta_ms,
        subquery_step_ms: options.default_subquery_step_ms,
        back_ms: 0,
        forward_ms: 0,
        names: Some(Vec::new()),
        pinned: false,
    };
    walk.expr(&expr, 0);
    if walk.pinned {
        return Ok(None);
    }
    let names = walk.names.map(|mut n| {
        n.sort_unstable();
        n.dedup();
        n
    });
    Ok(Some(Reach {
        back_ms: walk.back_ms,
        forward_ms: walk.forward_ms,
        names,
    }))
}

struct Walk {
    lookback_ms: i64,
    subquery_step_ms: i64,
    back_ms: i64,
    forward_ms: i64,
    names: Option<Vec<String>>,
    /// An `@` somewhere: not cacheable.
    pinned: bool,
}

impl Walk {
    /// `shift`: how far before the step the enclosing subqueries move the evaluation time at
    /// most (their offsets, ranges and steps); their nearest evaluation time is walked again
    /// for the forward reach (`forward_inner`).
    fn expr(&mut self, expr: &Expr, shift: i64) {
        match expr {
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) => {}
            Expr::Paren(p) => self.expr(&p.expr, shift),
            Expr::Unary(u) => self.expr(&u.expr, shift),
            Expr::Binary(b) => {
                self.expr(&b.lhs, shift);
                self.expr(&b.rhs, shift);
            }
            Expr::Aggregate(a) => {
                self.expr(&a.expr, shift);
                if let Some(p) = &a.param {
                    self.expr(p, shift);
                }
            }
            Expr::Call(c) => {
                for arg in &c.args.args {
                    self.expr(arg, shift);
                }
            }
            Expr::VectorSelector(vs) => self.selector(vs, self.lookback_ms, shift),
            Expr::MatrixSelector(ms) => self.selector(&ms.vs, millis(ms.range), shift),
            Expr::Subquery(sq) => {
                if sq.at.is_some() {
                    self.pinned = true;
                }
                let offset = offset_ms(sq.offset.as_ref());
                self.forward(offset, shift);
                // Inner steps lie in `(t - offset - range, t - offset]`; one inner step more
                // covers the alignment to multiples of the step.
                let step = sq
                    .step
                    .map(millis)
                    .filter(|s| *s > 0)
                    .unwrap_or(self.subquery_step_ms);
                let inner = shift
                    .saturating_add(offset)
                    .saturating_add(millis(sq.range))
                    .saturating_add(step);
                // The inner expression is evaluated from `t - offset - range` up to
                // `t - offset`: its reach back adds to the farthest, forward to the nearest.
                self.expr(&sq.expr, inner);
                self.forward_inner(&sq.expr, shift.saturating_add(offset));
            }
            Expr::Extension(_) => self.pinned = true,
        }
    }

    /// A selector reading `(u - range, u]` at `u = t - shift - offset`.
    fn selector(&mut self, vs: &VectorSelector, range_ms: i64, shift: i64) {
        if vs.at.is_some() {
            self.pinned = true;
        }
        let offset = offset_ms(vs.offset.as_ref());
        let back = shift.saturating_add(offset).saturating_add(range_ms);
        self.back_ms = self.back_ms.max(back);
        self.forward(offset, shift);
        let name = vs.name.clone().or_else(|| {
            vs.matchers
                .matchers
                .iter()
                .find(|m| m.name == METRIC_NAME_LABEL && matches!(m.op, MatchOp::Equal))
                .map(|m| m.value.clone())
        });
        match (name, &mut self.names) {
            (Some(name), Some(names)) if vs.matchers.or_matchers.is_empty() => names.push(name),
            _ => self.names = None,
        }
    }

    /// A negative total shift reads after the step.
    fn forward(&mut self, offset: i64, shift: i64) {
        let ahead = shift.saturating_add(offset).saturating_neg();
        self.forward_ms = self.forward_ms.max(ahead);
    }

    /// The forward reach of a subquery's inner expression evaluated at `t - shift` (its
    /// latest inner step): only negative offsets inside reach past it.
    fn forward_inner(&mut self, expr: &Expr, shift: i64) {
        let mut inner = Walk {
            lookback_ms: self.lookback_ms,
            subquery_step_ms: self.subquery_step_ms,
            back_ms: 0,
            forward_ms: 0,
            names: None,
            pinned: false,
        };
        inner.expr(expr, shift);
        self.forward_ms = self.forward_ms.max(inner.forward_ms);
    }
}

/// An offset as a shift back in time (negative for `offset -5m`).
fn offset_ms(offset: Option<&Offset>) -> i64 {
    match offset {
        None => 0,
        Some(Offset::Pos(d)) => millis(*d),
        Some(Offset::Neg(d)) => millis(*d).saturating_neg(),
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(q: &str) -> Option<Reach> {
        reach(q, &EngineOptions::default()).expect("parses")
    }

    #[test]
    fn selectors_reach_back_by_lookback_range_and_offset() {
        let r = of("temp").expect("cacheable");
        assert_eq!((r.back_ms, r.forward_ms), (300_000, 0));
        assert_eq!(r.names, Some(vec!["temp".to_owned()]));
        let r = of("rate(a[10m] offset 1h) + on() b offset -2m").expect("cacheable");
        assert_eq!(r.back_ms, 3_600_000 + 600_000);
        assert_eq!(r.forward_ms, 120_000);
        assert_eq!(r.names, Some(vec!["a".to_owned(), "b".to_owned()]));
    }

    #[test]
    fn subqueries_add_their_range_and_step() {
        let r = of("max_over_time(rate(a[5m])[1h:1m] offset 10m)").expect("cacheable");
        assert_eq!(r.back_ms, 600_000 + 3_600_000 + 60_000 + 300_000);
        assert_eq!(r.forward_ms, 0);
        let r = of("max_over_time((a offset -1h)[10m:1m])").expect("cacheable");
        assert_eq!(r.forward_ms, 3_600_000);
    }

    #[test]
    fn unnamed_selectors_may_read_any_metric_and_at_is_refused() {
        assert_eq!(of(r#"{__name__=~"a.*"}"#).expect("cacheable").names, None);
        assert_eq!(
            of(r#"{__name__="a", x="1"}"#).expect("cacheable").names,
            Some(vec!["a".to_owned()])
        );
        assert_eq!(of("time() * 2").expect("cacheable").names, Some(vec![]));
        assert!(of("a @ 100").is_none());
        assert!(of("rate(a[5m] @ end())").is_none());
        assert!(of("max_over_time(a[1h:1m] @ start())").is_none());
        assert!(reach("a +", &EngineOptions::default()).is_err());
    }
}
