//! Parameter references and JavaScript expressions (`$(...)`, `${...}`), evaluated in an embedded
//! QuickJS engine (rquickjs) with a time and a memory limit per expression.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use rquickjs::{Context, Runtime};
use serde_json::Value;

/// Memory one expression may allocate (QuickJS heap), in bytes.
pub const MEMORY_LIMIT: usize = 256 * 1024 * 1024;
/// Wall time one expression may run.
pub const TIME_LIMIT: Duration = Duration::from_secs(10);

/// Why an expression could not be evaluated.
#[derive(Debug, thiserror::Error)]
pub enum ExprError {
    /// The expression threw, or is not valid JavaScript.
    #[error("expression `{expr}` failed: {message}")]
    Failed {
        /// The expression text.
        expr: String,
        /// What the engine said.
        message: String,
    },
    /// The expression ran past [`TIME_LIMIT`] or [`MEMORY_LIMIT`].
    #[error("expression `{expr}` was stopped: it ran longer than {limit:?} or used more than {MEMORY_LIMIT} bytes")]
    Limit {
        /// The expression text.
        expr: String,
        /// The time limit.
        limit: Duration,
    },
    /// An unterminated `$(` or `${`.
    #[error("unterminated expression in `{0}`")]
    Syntax(String),
}

/// One piece of a string that may contain expressions.
#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    /// Literal text.
    Text(String),
    /// `$(...)`: a parameter reference or JavaScript expression (the text inside the parentheses).
    Paren(String),
    /// `${...}`: a JavaScript function body (the text inside the braces).
    Brace(String),
}

/// Splits `s` into literal text and expressions. `\$(` is a literal `$(`.
pub fn scan(s: &str, js: bool) -> Result<Vec<Segment>, ExprError> {
    let b: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut text = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == '\\' && i + 1 < b.len() && b[i + 1] == '\\' {
            text.push('\\');
            i += 2;
            continue;
        }
        if b[i] == '\\' && i + 2 < b.len() && b[i + 1] == '$' && (b[i + 2] == '(' || b[i + 2] == '{') {
            text.push('$');
            i += 2;
            continue;
        }
        if b[i] == '$' && i + 1 < b.len() && (b[i + 1] == '(' || (js && b[i + 1] == '{')) {
            let open = b[i + 1];
            let close = if open == '(' { ')' } else { '}' };
            let mut depth = 0i32;
            let mut j = i + 1;
            let mut quote: Option<char> = None;
            let mut end = None;
            while j < b.len() {
                let c = b[j];
                if let Some(q) = quote {
                    if c == '\\' {
                        j += 2;
                        continue;
                    }
                    if c == q {
                        quote = None;
                    }
                } else if c == '\'' || c == '"' || c == '`' {
                    quote = Some(c);
                } else if c == '(' || c == '{' || c == '[' {
                    depth += 1;
                } else if c == ')' || c == '}' || c == ']' {
                    depth -= 1;
                    if depth == 0 {
                        if c != close {
                            return Err(ExprError::Syntax(s.to_string()));
                        }
                        end = Some(j);
                        break;
                    }
                }
                j += 1;
            }
            let Some(end) = end else {
                return Err(ExprError::Syntax(s.to_string()));
            };
            if !text.is_empty() {
                out.push(Segment::Text(std::mem::take(&mut text)));
            }
            let inner: String = b[i + 2..end].iter().collect();
            out.push(if open == '(' { Segment::Paren(inner) } else { Segment::Brace(inner) });
            i = end + 1;
            continue;
        }
        text.push(b[i]);
        i += 1;
    }
    if !text.is_empty() {
        out.push(Segment::Text(text));
    }
    Ok(out)
}

/// True when `s` contains an expression to evaluate.
pub fn has_expr(s: &str) -> bool {
    s.contains("$(") || s.contains("${")
}

/// The evaluation context: `inputs`, `self`, `runtime`, plus the expressionLib.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// `inputs`
    pub inputs: Value,
    /// `self`
    pub this: Value,
    /// `runtime`
    pub runtime: Value,
    /// expressionLib code, when InlineJavascriptRequirement is in force.
    pub lib: Vec<String>,
    /// Whether InlineJavascriptRequirement is in force (enables `${...}`).
    pub js: bool,
}

struct Engine {
    rt: Runtime,
    deadline: Rc<Cell<Instant>>,
}

thread_local! {
    static ENGINE: RefCell<Option<Engine>> = const { RefCell::new(None) };
    static LIMIT: Cell<Duration> = const { Cell::new(TIME_LIMIT) };
}

/// Sets this thread's per-expression time limit (default [`TIME_LIMIT`]).
pub fn set_time_limit(limit: Duration) {
    LIMIT.with(|l| l.set(limit));
}

fn time_limit() -> Duration {
    LIMIT.with(Cell::get)
}

fn engine_eval(script: &str, expr: &str) -> Result<Value, ExprError> {
    ENGINE.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            let rt = Runtime::new().map_err(|e| ExprError::Failed { expr: expr.into(), message: e.to_string() })?;
            rt.set_memory_limit(MEMORY_LIMIT);
            rt.set_max_stack_size(8 * 1024 * 1024);
            let deadline = Rc::new(Cell::new(Instant::now() + time_limit()));
            let d = deadline.clone();
            rt.set_interrupt_handler(Some(Box::new(move || Instant::now() > d.get())));
            *slot = Some(Engine { rt, deadline });
        }
        let Some(engine) = slot.as_ref() else {
            return Err(ExprError::Failed { expr: expr.into(), message: "no engine".into() });
        };
        engine.deadline.set(Instant::now() + time_limit());
        let ctx =
            Context::full(&engine.rt).map_err(|e| ExprError::Failed { expr: expr.into(), message: e.to_string() })?;
        let started = Instant::now();
        let res: Result<String, String> = ctx.with(|ctx| match ctx.eval::<String, _>(script) {
            Ok(s) => Ok(s),
            Err(rquickjs::Error::Exception) => {
                let v = ctx.catch();
                let msg = if let Some(ex) = v.as_exception() {
                    ex.message().unwrap_or_else(|| format!("{ex:?}"))
                } else if let Some(s) = v.as_string() {
                    s.to_string().unwrap_or_default()
                } else {
                    format!("{v:?}")
                };
                Err(msg)
            }
            Err(e) => Err(e.to_string()),
        });
        match res {
            Ok(s) => {
                let v: Value = serde_json::from_str(&s)
                    .map_err(|e| ExprError::Failed { expr: expr.into(), message: e.to_string() })?;
                if let Some(err) = v.get("err") {
                    return Err(ExprError::Failed {
                        expr: expr.into(),
                        message: err.as_str().unwrap_or("error").to_string(),
                    });
                }
                Ok(v.get("ok").cloned().unwrap_or(Value::Null))
            }
            Err(message) => {
                if started.elapsed() >= time_limit()
                    || message.contains("interrupted")
                    || message.contains("out of memory")
                {
                    Err(ExprError::Limit { expr: expr.into(), limit: time_limit() })
                } else {
                    Err(ExprError::Failed { expr: expr.into(), message })
                }
            }
        }
    })
}

/// Evaluates one expression (the text inside `$(...)` or `${...}`).
pub fn eval(seg: &Segment, scope: &Scope) -> Result<Value, ExprError> {
    let (body, src) = match seg {
        Segment::Paren(e) => (format!("return ({e});"), format!("$({e})")),
        Segment::Brace(e) => (e.clone(), format!("${{{e}}}")),
        Segment::Text(t) => return Ok(Value::String(t.clone())),
    };
    let lib = if scope.js { scope.lib.join("\n") } else { String::new() };
    let script = format!(
        "var inputs={};var self={};var runtime={};\n{lib}\n;(function(){{try{{var __r=(function(){{\n{body}\n}})();if(__r===undefined&&{strict})throw new Error('undefined value');return JSON.stringify({{ok:__r===undefined?null:__r}});}}catch(e){{return JSON.stringify({{err:String(e)}});}}}})()",
        scope.inputs,
        scope.this,
        scope.runtime,
        strict = !scope.js && matches!(seg, Segment::Paren(_)),
    );
    engine_eval(&script, &src)
}

/// Interpolates a string: a string that is exactly one expression evaluates to that expression's
/// value (any JSON type); otherwise each expression is turned into text and concatenated.
pub fn interpolate(s: &str, scope: &Scope) -> Result<Value, ExprError> {
    if !has_expr(s) {
        return Ok(Value::String(s.to_string()));
    }
    interpolate_exact(s.trim(), scope)
}

/// Like [`interpolate`] but keeps leading and trailing whitespace (InitialWorkDir entries).
pub fn interpolate_exact(s: &str, scope: &Scope) -> Result<Value, ExprError> {
    if !has_expr(s) {
        return Ok(Value::String(s.to_string()));
    }
    let segs = scan(s, scope.js)?;
    if segs.len() == 1 && !matches!(segs[0], Segment::Text(_)) {
        return eval(&segs[0], scope);
    }
    if segs.iter().all(|x| matches!(x, Segment::Text(_))) {
        let mut out = String::new();
        for x in segs {
            if let Segment::Text(t) = x {
                out.push_str(&t);
            }
        }
        return Ok(Value::String(out));
    }
    let mut out = String::new();
    for seg in &segs {
        match seg {
            Segment::Text(t) => out.push_str(t),
            _ => match eval(seg, scope)? {
                Value::String(v) => out.push_str(&v),
                Value::Number(n) => out.push_str(&crate::engine::num_str(&n)),
                v => out.push_str(&crate::engine::py_json(&v)),
            },
        }
    }
    Ok(Value::String(out))
}

/// Evaluates `v` if it is a string with expressions, else returns it unchanged.
pub fn eval_value(v: &Value, scope: &Scope) -> Result<Value, ExprError> {
    match v {
        Value::String(s) => interpolate(s, scope),
        other => Ok(other.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope() -> Scope {
        Scope { inputs: json!({"x": {"path": "/a/b.txt"}, "n": 3}), js: true, ..Default::default() }
    }

    #[test]
    fn whole_string_expression_keeps_its_type() {
        assert_eq!(interpolate("$(inputs.n)", &scope()).ok(), Some(json!(3)));
        assert_eq!(interpolate("${ return inputs.n + 1; }", &scope()).ok(), Some(json!(4)));
        assert_eq!(interpolate("${ return inputs.n + 1; }\n", &scope()).ok(), Some(json!(4)));
        assert_eq!(interpolate_exact("${ return inputs.n + 1; }\n", &scope()).ok(), Some(json!("4\n")));
    }

    #[test]
    fn embedded_expressions_become_text() {
        assert_eq!(interpolate("f=$(inputs.x.path) n=$(inputs.n)", &scope()).ok(), Some(json!("f=/a/b.txt n=3")));
        assert_eq!(interpolate(r"\$(inputs.n)", &scope()).ok(), Some(json!("$(inputs.n)")));
    }

    #[test]
    fn throwing_and_looping_expressions_fail() {
        assert!(matches!(interpolate("${ throw 'boom'; }", &scope()), Err(ExprError::Failed { .. })));
        let mut s = scope();
        s.lib = vec!["function f(){ return 2; }".into()];
        assert_eq!(interpolate("$(f())", &s).ok(), Some(json!(2)));
    }

    #[test]
    fn unterminated_is_a_syntax_error() {
        assert!(matches!(scan("$(inputs.x", true), Err(ExprError::Syntax(_))));
    }
}
