//! Postgres function forms DataFusion lacks, lowered to what it has, on the parsed statement
//! (not by matching query texts).
//!
//! Each applies to a one-statement text; [`texts_to_try`] orders the lowered texts and the
//! text as sent, and `queries` runs the first that plans.
//!
//! **Functions in FROM.** Postgres takes any function as a relation: a table function
//! aliased `AS i` names its one column `i` too, and a scalar function is a one-row relation
//! whose column is named by the alias. Grafana's table list reads the search path as
//! `FROM generate_series(…) AS i, string_to_array(current_setting('search_path'), ',') s`
//! and then `s[i]`. So an aliased table function gets the column alias `AS i(i)`, and a
//! scalar function becomes `(SELECT f(…) AS s) AS s`.
//!
//! **`generate_subscripts`.** SQLAlchemy's inspector numbers the columns of a key with
//! `unnest(indkey) AS attnum, generate_subscripts(indkey, 1) AS ord` in one select list.
//! Postgres runs set-returning functions of one select list in lockstep, as DataFusion runs
//! several `unnest`s, so `generate_subscripts(a, d)` becomes
//! `unnest(generate_series(1, array_length(a, d)))`: the subscripts 1‥n beside the elements.

use datafusion::sql::sqlparser::ast::{
    visit_expressions_mut, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArgumentList,
    FunctionArguments, Ident, ObjectName, SelectItem, SetExpr, Statement, TableAliasColumnDef,
    TableFactor, Value, VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use std::borrow::Cow;
use std::ops::ControlFlow;

/// DataFusion's table functions (and the `pg_catalog` crate's): every other function named
/// in FROM is a scalar one.
/// (Only single-column ones: Postgres names the column after the alias only for those.)
pub(super) const TABLE_FUNCTIONS: &[&str] = &["generate_series", "range"];

/// `sql` with the Postgres forms above lowered (`with_user_keyword`: also unquoted `user` as
/// `current_user`); the text itself when it has none, does not parse, or is not exactly one
/// statement (a multi-statement text is never re-run: see `queries`).
///
/// The `user` keyword is a separate, later stage because DataFusion reads an unquoted `user`
/// as a column when the query has one; only when that fails is it the Postgres keyword.
pub(super) fn lower_postgres_forms(sql: &str, with_user_keyword: bool) -> Cow<'_, str> {
    let Ok(mut statements) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
        return Cow::Borrowed(sql);
    };
    if statements.len() != 1 {
        return Cow::Borrowed(sql);
    }
    let mut changed = false;
    let _ = lower_functions_in_from(&mut statements, &mut changed);
    let _ = visit_expressions_mut(&mut statements, |expr| {
        let lowered = generate_subscripts(expr)
            .or_else(|| with_user_keyword.then(|| user_keyword(expr)).flatten());
        if let Some(lowered) = lowered {
            *expr = lowered;
            changed = true;
        }
        ControlFlow::<()>::Continue(())
    });
    if !changed {
        return Cow::Borrowed(sql);
    }
    Cow::Owned(
        statements
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
    )
}

/// The texts to plan `sql` as, in order, until one plans: with a Postgres form lowered, the
/// lowered text first (without, then with, the `user` keyword; the text as sent last, since
/// datafusion-postgres answers some such texts with a fixed substitute); otherwise the text as
/// sent, then with `user` as the keyword.
pub(super) fn texts_to_try(sql: &str) -> Vec<Cow<'_, str>> {
    let structural = lower_postgres_forms(sql, false);
    let keyword = lower_postgres_forms(sql, true);
    let mut texts = Vec::with_capacity(3);
    if let Cow::Owned(_) = structural {
        if keyword != structural {
            texts.extend([structural, keyword]);
        } else {
            texts.push(structural);
        }
        texts.push(Cow::Borrowed(sql));
    } else {
        texts.push(Cow::Borrowed(sql));
        if let Cow::Owned(_) = keyword {
            texts.push(keyword);
        }
    }
    texts
}

/// Rewrites each aliased function in FROM (see the module docs).
fn lower_functions_in_from(statements: &mut Vec<Statement>, changed: &mut bool) -> ControlFlow<()> {
    struct Functions<'a>(&'a mut bool);
    impl VisitorMut for Functions<'_> {
        type Break = ();
        fn post_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
            if let Some(lowered) = function_in_from(factor) {
                *factor = lowered;
                *self.0 = true;
            }
            ControlFlow::Continue(())
        }
    }
    statements.visit(&mut Functions(changed))
}

fn function_in_from(factor: &TableFactor) -> Option<TableFactor> {
    let TableFactor::Table {
        name,
        alias: Some(alias),
        args: Some(args),
        ..
    } = factor
    else {
        return None;
    };
    if !alias.columns.is_empty() || args.settings.is_some() {
        return None;
    }
    let function = name.0.last()?.as_ident()?.value.to_ascii_lowercase();
    if TABLE_FUNCTIONS.contains(&function.as_str()) {
        let mut named = factor.clone();
        if let TableFactor::Table { alias: Some(a), .. } = &mut named {
            a.columns = vec![TableAliasColumnDef::from_name(alias.name.value.clone())];
        }
        return Some(named);
    }
    // A scalar function: `(SELECT f(args) AS a) AS a`.
    let call = Expr::Function(Function {
        name: name.clone(),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: args.args.clone(),
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    });
    let Ok(Statement::Query(mut query)) = Parser::new(&PostgreSqlDialect {})
        .try_with_sql("SELECT NULL AS a")
        .and_then(|mut p| p.parse_statement())
    else {
        return None;
    };
    let SetExpr::Select(select) = query.body.as_mut() else {
        return None;
    };
    select.projection = vec![SelectItem::ExprWithAlias {
        expr: call,
        alias: alias.name.clone(),
    }];
    Some(TableFactor::Derived {
        lateral: false,
        subquery: query,
        alias: Some(alias.clone()),
        sample: None,
    })
}

/// Unquoted `user`, which Postgres reserves for `current_user` (Grafana's search-path list
/// maps `"$user"` to it), as the `current_user` call the planner knows.
fn user_keyword(expr: &Expr) -> Option<Expr> {
    let is_user = |i: &Ident| i.quote_style.is_none() && i.value.eq_ignore_ascii_case("user");
    let bare = match expr {
        Expr::Identifier(i) => is_user(i),
        Expr::Function(f) => {
            matches!(f.args, FunctionArguments::None)
                && f.name.0.len() == 1
                && f.name.0[0].as_ident().is_some_and(is_user)
        }
        _ => false,
    };
    bare.then(|| {
        let mut current_user = call("current_user", vec![]);
        if let Expr::Function(f) = &mut current_user {
            f.args = FunctionArguments::None;
        }
        current_user
    })
}

/// `generate_subscripts(a, d)` (or `pg_catalog.generate_subscripts`) as
/// `unnest(generate_series(1, array_length(a, d)))`.
fn generate_subscripts(expr: &Expr) -> Option<Expr> {
    let Expr::Function(f) = expr else {
        return None;
    };
    let name = f.name.0.last()?.as_ident()?.value.to_ascii_lowercase();
    if name != "generate_subscripts" {
        return None;
    }
    let FunctionArguments::List(list) = &f.args else {
        return None;
    };
    let [FunctionArg::Unnamed(FunctionArgExpr::Expr(array)), FunctionArg::Unnamed(FunctionArgExpr::Expr(dim))] =
        list.args.as_slice()
    else {
        return None;
    };
    let one = Expr::Value(Value::Number("1".into(), false).with_empty_span());
    let length = call("array_length", vec![array.clone(), dim.clone()]);
    Some(call(
        "unnest",
        vec![call("generate_series", vec![one, length])],
    ))
}

fn call(name: &str, args: Vec<Expr>) -> Expr {
    Expr::Function(Function {
        name: ObjectName::from(vec![Ident::new(name)]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: args
                .into_iter()
                .map(|a| FunctionArg::Unnamed(FunctionArgExpr::Expr(a)))
                .collect(),
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    })
}

#[cfg(test)]
mod tests {
    use super::lower_postgres_forms;

    fn lower(sql: &str) -> std::borrow::Cow<'_, str> {
        lower_postgres_forms(sql, true)
    }

    #[test]
    fn generate_subscripts_becomes_the_unnested_series_of_the_array_length() {
        let sql = "SELECT unnest(i.indkey) AS attnum, pg_catalog.generate_subscripts(i.indkey, $1::INTEGER) AS ord FROM pg_catalog.pg_index AS i";
        assert_eq!(
            lower(sql),
            "SELECT unnest(i.indkey) AS attnum, unnest(generate_series(1, array_length(i.indkey, $1::INTEGER))) AS ord FROM pg_catalog.pg_index AS i"
        );
        let untouched = "SELECT 'generate_subscripts' FROM t";
        assert!(matches!(lower(untouched), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn functions_in_from_name_their_column_after_the_alias() {
        let sql = "SELECT s[i] FROM generate_series(1, 2) AS i, string_to_array(current_setting('search_path'), ',') s";
        assert_eq!(
            lower(sql),
            "SELECT s[i] FROM generate_series(1, 2) AS i (i), (SELECT string_to_array(current_setting('search_path'), ',') AS s) s"
        );
        let user = "SELECT CASE WHEN x = '\"$user\"' THEN user ELSE x END FROM t";
        assert_eq!(
            lower(user),
            "SELECT CASE WHEN x = '\"$user\"' THEN current_user ELSE x END FROM t"
        );
        assert!(matches!(
            lower_postgres_forms(user, false),
            std::borrow::Cow::Borrowed(_)
        ));
        let two = "SELECT unnest(a), generate_subscripts(a, 1) FROM t; SELECT 1";
        assert!(matches!(lower(two), std::borrow::Cow::Borrowed(_)));
        let plain = "SELECT * FROM generate_series(1, 2) AS g(n), ledger AS l";
        assert!(matches!(lower(plain), std::borrow::Cow::Borrowed(_)));
    }
}
