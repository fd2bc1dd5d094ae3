//! `LIKE … ESCAPE 'c'` with any escape character, as Postgres allows.
//!
//! DataFusion's LIKE kernels take only the backslash as escape character; SQLAlchemy's
//! inspector lists schemas with `nspname NOT LIKE 'pg!_%' ESCAPE '!'`. A pattern literal with
//! another escape character means the same as the pattern re-escaped with backslashes, so this
//! analyzer rule rewrites it before execution (a pattern that is not a literal is left as it
//! is, and still fails with DataFusion's message).

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::expr::Like;
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::optimizer::AnalyzerRule;

/// See the module docs.
#[derive(Debug, Default)]
pub(super) struct LikeEscape;

/// `pattern` with escape character `escape` re-escaped with backslashes.
fn with_backslash(pattern: &str, escape: char) -> String {
    let mut out = String::with_capacity(pattern.len() + 2);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c == escape {
            // The next character is taken literally (a trailing escape stands for itself).
            let next = chars.next().unwrap_or(escape);
            out.push('\\');
            out.push(next);
        } else if c == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
    }
    out
}

fn rewrite(expr: Expr) -> datafusion::common::Result<Transformed<Expr>> {
    let Expr::Like(like) = &expr else {
        return Ok(Transformed::no(expr));
    };
    let (Some(escape), Expr::Literal(literal, meta)) = (like.escape_char, like.pattern.as_ref())
    else {
        return Ok(Transformed::no(expr));
    };
    if escape == '\\' {
        return Ok(Transformed::no(expr));
    }
    // The same string type as before: type coercion has already matched it to the input's.
    let literal = match literal {
        ScalarValue::Utf8(Some(t)) => ScalarValue::Utf8(Some(with_backslash(t, escape))),
        ScalarValue::Utf8View(Some(t)) => ScalarValue::Utf8View(Some(with_backslash(t, escape))),
        ScalarValue::LargeUtf8(Some(t)) => ScalarValue::LargeUtf8(Some(with_backslash(t, escape))),
        _ => return Ok(Transformed::no(expr)),
    };
    let pattern = Expr::Literal(literal, meta.clone());
    Ok(Transformed::yes(Expr::Like(Like {
        negated: like.negated,
        expr: like.expr.clone(),
        pattern: Box::new(pattern),
        escape_char: Some('\\'),
        case_insensitive: like.case_insensitive,
    })))
}

/// Applies `rewrite` bottom-up to every expression of `plan` and of its subqueries, keeping
/// each expression's name (a rewritten expression must not rename a column the plan above
/// refers to). The driver of tally's analyzer rules on the Postgres endpoint.
pub(super) fn rewrite_expressions(
    plan: LogicalPlan,
    rewrite: impl Fn(Expr) -> datafusion::common::Result<Transformed<Expr>>,
) -> datafusion::common::Result<LogicalPlan> {
    plan.transform_up_with_subqueries(|p| {
        let names = NamePreserver::new(&p);
        p.map_expressions(|e| {
            let saved = names.save(&e);
            Ok(e.transform_up(&rewrite)?.update_data(|e| saved.restore(e)))
        })
    })
    .map(|t| t.data)
}

impl AnalyzerRule for LikeEscape {
    fn analyze(
        &self,
        plan: LogicalPlan,
        _config: &ConfigOptions,
    ) -> datafusion::common::Result<LogicalPlan> {
        rewrite_expressions(plan, rewrite)
    }

    fn name(&self) -> &str {
        "tally_like_escape"
    }
}

#[cfg(test)]
mod tests {
    use super::with_backslash;

    #[test]
    fn another_escape_character_becomes_the_backslash() {
        assert_eq!(with_backslash("pg!_%", '!'), "pg\\_%");
        assert_eq!(with_backslash("a!!b", '!'), "a\\!b");
        assert_eq!(with_backslash("c:\\x%", '!'), "c:\\\\x%");
    }
}
