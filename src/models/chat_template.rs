//! Chat template of a Qwen3-VL checkpoint, rendered with minijinja.
//!
//! Owns turning a conversation (messages with string or list content: text, image and video
//! parts) into the prompt string, with the checkpoint's own Jinja source from
//! `chat_template.jinja`, `chat_template.json` or `tokenizer_config.json`. The environment matches
//! transformers' (`trim_blocks`, `lstrip_blocks`, loop controls, `raise_exception`, Python string
//! methods via pycompat, and a `tojson` that writes exactly what Python's `json.dumps` writes) so
//! the rendered text, and therefore the token ids, are identical. Never tokenizes or touches images.

use std::path::{Path, PathBuf};

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

/// The Qwen3-VL Instruct style template that prism writes into model directories it creates (the
/// demo tokenizer); the fixtures use the same file, so it is checked against transformers.
pub const QWEN3_VL_CHAT_TEMPLATE: &str =
    include_str!("../../tests/fixtures/chat_template_qwen3_vl.jinja");

const TEMPLATE_NAME: &str = "chat_template";

/// Errors of finding, compiling or rendering a chat template.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: field `{field}`: {message}")]
    Field {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error(
        "no chat template in {dir} (looked for chat_template.jinja, chat_template.json and the \
         `chat_template` field of tokenizer_config.json)"
    )]
    NotFound { dir: PathBuf },
    #[error("{origin}: template does not compile: {source:#}")]
    Compile {
        origin: String,
        source: minijinja::Error,
    },
    #[error("{origin}: rendering failed: {source:#}")]
    Render {
        origin: String,
        source: minijinja::Error,
    },
    #[error("invalid messages: {0}")]
    Messages(String),
}

/// One content part of a message, tagged by `type` as in transformers' chat format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ContentPart {
    Text {
        text: String,
    },
    /// `image` is an optional reference (path, URL) carried through to the template; pixels are
    /// passed to the processor separately, in order of appearance.
    Image {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image: Option<String>,
    },
    Video {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        video: Option<String>,
    },
}

/// Message content: a plain string or a list of parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// One chat message. `tool_calls` (assistant) is passed to the template as given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: Content,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<serde_json::Value>>,
}

impl ChatMessage {
    pub fn system(text: impl Into<String>) -> Self {
        Self::text("system", text)
    }
    pub fn user(text: impl Into<String>) -> Self {
        Self::text("user", text)
    }
    pub fn assistant(text: impl Into<String>) -> Self {
        Self::text("assistant", text)
    }
    /// A message with plain string content.
    pub fn text(role: &str, text: impl Into<String>) -> Self {
        Self {
            role: role.to_string(),
            content: Content::Text(text.into()),
            tool_calls: None,
        }
    }
    /// A message with list content.
    pub fn parts(role: &str, parts: Vec<ContentPart>) -> Self {
        Self {
            role: role.to_string(),
            content: Content::Parts(parts),
            tool_calls: None,
        }
    }
    /// Number of image parts.
    pub fn num_images(&self) -> usize {
        match &self.content {
            Content::Text(_) => 0,
            Content::Parts(p) => p
                .iter()
                .filter(|p| matches!(p, ContentPart::Image { .. }))
                .count(),
        }
    }
}

/// Splits dataset text with `<image>` / `<video>` placeholders into typed content parts, as
/// verl's RL dataset does before applying the chat template: `"a<image>b"` → text "a", image,
/// text "b"; empty text segments are dropped.
pub fn split_vision_placeholders(text: &str) -> Vec<ContentPart> {
    let mut parts = Vec::new();
    let mut rest = text;
    loop {
        let next = [("<image>", true), ("<video>", false)]
            .iter()
            .filter_map(|&(tag, is_image)| rest.find(tag).map(|i| (i, tag, is_image)))
            .min_by_key(|&(i, _, _)| i);
        let Some((i, tag, is_image)) = next else {
            if !rest.is_empty() {
                parts.push(ContentPart::Text {
                    text: rest.to_string(),
                });
            }
            return parts;
        };
        if i > 0 {
            parts.push(ContentPart::Text {
                text: rest[..i].to_string(),
            });
        }
        parts.push(if is_image {
            ContentPart::Image { image: None }
        } else {
            ContentPart::Video { video: None }
        });
        rest = &rest[i + tag.len()..];
    }
}

/// Options of one rendering (the keyword arguments of `apply_chat_template`).
#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    /// Append the assistant header (`<|im_start|>assistant\n`).
    pub add_generation_prompt: bool,
    /// Prefix image/video parts with `Picture n: ` / `Video n: `.
    pub add_vision_id: bool,
    /// Tool (function) schemas, rendered with `tojson`.
    pub tools: Option<Vec<serde_json::Value>>,
    /// Further template variables (e.g. `enable_thinking` of thinking checkpoints); they cannot
    /// override `messages`, `tools`, `add_generation_prompt` or `add_vision_id`.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    /// File (or description) the template came from, for error messages.
    origin: String,
}

impl ChatTemplate {
    /// Finds the template of a checkpoint directory: `chat_template.jinja` (v5), else
    /// `chat_template.json` (4.57), else the `chat_template` field of `tokenizer_config.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, TemplateError> {
        let dir = dir.as_ref();
        let jinja = dir.join("chat_template.jinja");
        if jinja.exists() {
            let src = std::fs::read_to_string(&jinja).map_err(|source| TemplateError::Io {
                path: jinja.clone(),
                source,
            })?;
            return Self::new(src, jinja.display().to_string());
        }
        for file in ["chat_template.json", "tokenizer_config.json"] {
            let path = dir.join(file);
            if !path.exists() {
                continue;
            }
            if let Some(src) = template_from_json(&path)? {
                return Self::new(src, format!("{} (field chat_template)", path.display()));
            }
        }
        Err(TemplateError::NotFound {
            dir: dir.to_path_buf(),
        })
    }

    /// Compiles a template source; `origin` names it in errors.
    pub fn new(
        source: impl Into<String>,
        origin: impl Into<String>,
    ) -> Result<Self, TemplateError> {
        let source = source.into();
        let origin = origin.into();
        let mut env = Environment::new();
        let syntax = env
            .syntax()
            .to_builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|source| TemplateError::Compile {
                origin: origin.clone(),
                source,
            })?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson_filter);
        // Python prints True / False / None and repr() of floats where minijinja would print
        // true / false / none; tool-call arguments reach the prompt this way.
        env.set_formatter(|out, state, value| match python_str(value) {
            Some(s) => out
                .write_str(&s)
                .map_err(|_| minijinja::Error::from(ErrorKind::WriteFailure)),
            None => minijinja::escape_formatter(out, state, value),
        });
        env.add_filter(
            "string",
            |state: &minijinja::State, value: Value| match python_str(&value) {
                Some(s) => Ok(Value::from(s)),
                None => minijinja::filters::string(state, &value),
            },
        );
        env.add_template_owned(TEMPLATE_NAME, source.clone())
            .map_err(|source| TemplateError::Compile {
                origin: origin.clone(),
                source,
            })?;
        Ok(Self {
            env,
            source,
            origin,
        })
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders typed messages.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        opts: &RenderOptions,
    ) -> Result<String, TemplateError> {
        let value =
            serde_json::to_value(messages).map_err(|e| TemplateError::Messages(e.to_string()))?;
        self.render_json(&value, opts)
    }

    /// Renders messages given as JSON (a list of `{role, content, ...}` objects), e.g. straight
    /// from a dataset line; the template sees exactly these fields.
    pub fn render_json(
        &self,
        messages: &serde_json::Value,
        opts: &RenderOptions,
    ) -> Result<String, TemplateError> {
        let list = messages.as_array().ok_or_else(|| {
            TemplateError::Messages(format!("expected a list of messages, got {messages}"))
        })?;
        if list.is_empty() {
            return Err(TemplateError::Messages("the message list is empty".into()));
        }
        for (i, m) in list.iter().enumerate() {
            if !m.get("role").is_some_and(|r| r.is_string()) {
                return Err(TemplateError::Messages(format!(
                    "message {i} has no string `role`"
                )));
            }
        }
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|source| self.render_error(source))?;
        let ctx = minijinja::context! {
            messages => jinja_value(messages),
            add_generation_prompt => opts.add_generation_prompt,
            add_vision_id => opts.add_vision_id,
            tools => opts.tools.as_ref().map(jinja_value),
            ..jinja_value(&opts.extra)
        };
        tmpl.render(ctx).map_err(|source| self.render_error(source))
    }

    fn render_error(&self, source: minijinja::Error) -> TemplateError {
        TemplateError::Render {
            origin: self.origin.clone(),
            source,
        }
    }
}

/// A serde value as a template value (`Value::from_serialize` of minijinja 2).
fn jinja_value<T: Serialize>(v: T) -> Value {
    Value::from(minijinja::value::Serde(v))
}

fn template_from_json(path: &Path) -> Result<Option<String>, TemplateError> {
    let text = std::fs::read_to_string(path).map_err(|source| TemplateError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| TemplateError::Json {
            path: path.to_path_buf(),
            source,
        })?;
    match json.get("chat_template") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        // Named templates: [{"name": "default", "template": "..."}, ...]
        Some(serde_json::Value::Array(items)) => {
            let named = |want: &str| {
                items.iter().find_map(|it| {
                    (it.get("name")?.as_str()? == want)
                        .then(|| it.get("template")?.as_str().map(str::to_string))
                        .flatten()
                })
            };
            match named("default") {
                Some(s) => Ok(Some(s)),
                None => Err(TemplateError::Field {
                    path: path.to_path_buf(),
                    field: "chat_template".into(),
                    message: "a list of named templates without one named \"default\"".into(),
                }),
            }
        }
        Some(other) => Err(TemplateError::Field {
            path: path.to_path_buf(),
            field: "chat_template".into(),
            message: format!("expected a string, got {}", kind_name(other)),
        }),
    }
}

fn kind_name(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Python's `str()` of the scalars whose text differs from minijinja's (bools, None, floats).
/// Strings operated on with `~` still use minijinja's spelling (`true`), a known gap.
fn python_str(v: &Value) -> Option<String> {
    match v.kind() {
        ValueKind::Bool => Some(if v.is_true() { "True" } else { "False" }.into()),
        ValueKind::None => Some("None".into()),
        ValueKind::Number if !v.is_integer() => {
            f64::try_from(v.clone()).ok().map(python_float_repr)
        }
        _ => None,
    }
}

/// `raise_exception(msg)` as transformers defines it: aborts rendering with the message.
fn raise_exception(msg: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False, indent=indent,
/// separators=separators, sort_keys=sort_keys)`. minijinja's own `tojson` HTML-escapes `<`, `>`,
/// `&` and `'`, which would change the prompt.
fn tojson_filter(value: &Value, kwargs: Kwargs) -> Result<Value, minijinja::Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.as_i64() {
            Some(n) if n >= 0 => Some(" ".repeat(n as usize)),
            _ => match v.as_str() {
                Some(s) => Some(s.to_string()),
                None => {
                    return Err(minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: indent must be a non-negative integer or a string",
                    ));
                }
            },
        },
    };
    let (item_sep, key_sep) = match separators {
        Some(s) if !s.is_none() => {
            let a = s.get_item(&Value::from(0))?;
            let b = s.get_item(&Value::from(1))?;
            match (a.as_str(), b.as_str()) {
                (Some(a), Some(b)) => (a.to_string(), b.to_string()),
                _ => {
                    return Err(minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be two strings",
                    ));
                }
            }
        }
        // Python's default: ", " without indent, "," with indent.
        _ => (
            if indent.is_some() { "," } else { ", " }.to_string(),
            ": ".to_string(),
        ),
    };
    let opts = JsonOpts {
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    let mut out = String::new();
    write_json(&mut out, value, &opts, 0)?;
    Ok(Value::from_safe_string(out))
}

struct JsonOpts {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

/// `json.dumps(v, ensure_ascii=False)` exactly as Python writes it (key order kept).
pub fn to_python_json(v: &serde_json::Value) -> String {
    let opts = JsonOpts {
        indent: None,
        item_sep: ", ".into(),
        key_sep: ": ".into(),
        sort_keys: false,
        ensure_ascii: false,
    };
    let mut out = String::new();
    // A serde_json value always converts; errors only come from exotic minijinja values.
    let _ = write_json(&mut out, &jinja_value(v), &opts, 0);
    out
}

fn write_json(
    out: &mut String,
    v: &Value,
    o: &JsonOpts,
    level: usize,
) -> Result<(), minijinja::Error> {
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                out.push_str(&v.to_string());
            } else {
                let f = f64::try_from(v.clone())?;
                out.push_str(&python_float_repr(f));
            }
        }
        ValueKind::String => write_json_str(out, v.as_str().unwrap_or_default(), o.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            write_container(out, '[', ']', items.len(), o, level, |out, i| {
                write_json(out, &items[i], o, level + 1)
            })?;
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if o.sort_keys {
                keys.sort_by_key(json_key);
            }
            let mut err = None;
            write_container(out, '{', '}', keys.len(), o, level, |out, i| {
                let k = &keys[i];
                write_json_str(out, &json_key(k), o.ensure_ascii);
                out.push_str(&o.key_sep);
                match v.get_item(k) {
                    Ok(val) => write_json(out, &val, o, level + 1),
                    Err(e) => {
                        err = Some(e);
                        Ok(())
                    }
                }
            })?;
            if let Some(e) = err {
                return Err(e);
            }
        }
        _ => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: cannot serialize a value of kind {:?}", v.kind()),
            ));
        }
    }
    Ok(())
}

fn write_container(
    out: &mut String,
    open: char,
    close: char,
    len: usize,
    o: &JsonOpts,
    level: usize,
    mut item: impl FnMut(&mut String, usize) -> Result<(), minijinja::Error>,
) -> Result<(), minijinja::Error> {
    out.push(open);
    if len == 0 {
        out.push(close);
        return Ok(());
    }
    for i in 0..len {
        if i > 0 {
            out.push_str(&o.item_sep);
        }
        if let Some(ind) = &o.indent {
            out.push('\n');
            out.push_str(&ind.repeat(level + 1));
        }
        item(out, i)?;
    }
    if let Some(ind) = &o.indent {
        out.push('\n');
        out.push_str(&ind.repeat(level));
    }
    out.push(close);
    Ok(())
}

/// Python turns non-string keys into strings: ints as digits, bools as true/false, None as null.
fn json_key(k: &Value) -> String {
    match k.kind() {
        ValueKind::String => k.as_str().unwrap_or_default().to_string(),
        ValueKind::None | ValueKind::Undefined => "null".into(),
        ValueKind::Bool => if k.is_true() { "true" } else { "false" }.into(),
        ValueKind::Number if !k.is_integer() => {
            python_float_repr(f64::try_from(k.clone()).unwrap_or(f64::NAN))
        }
        _ => k.to_string(),
    }
}

fn write_json_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if ensure_ascii && (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)` (what `json.dumps` writes): shortest round-trip digits, positional for
/// decimal exponents in [-4, 16), else `d.ddde±XX`; `Infinity` / `NaN` as json.dumps allows.
pub(crate) fn python_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // `{:e}` gives the shortest round-trip digits: "-1.2345e-5".
    let e = format!("{f:e}");
    let (mantissa, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (neg, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let mut s = String::new();
    if neg {
        s.push('-');
    }
    if (-4..16).contains(&exp) {
        if exp < 0 {
            s.push_str("0.");
            s.push_str(&"0".repeat((-exp - 1) as usize));
            s.push_str(&digits);
        } else {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                s.push_str(&digits);
                s.push_str(&"0".repeat(int_len - digits.len()));
                s.push_str(".0");
            } else {
                s.push_str(&digits[..int_len]);
                s.push('.');
                s.push_str(&digits[int_len..]);
            }
        }
    } else {
        s.push_str(&digits[..1]);
        if digits.len() > 1 {
            s.push('.');
            s.push_str(&digits[1..]);
        }
        s.push('e');
        s.push(if exp < 0 { '-' } else { '+' });
        s.push_str(&format!("{:02}", exp.abs()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_matches_python() {
        // expected strings are Python 3.11 repr() outputs
        for (f, want) in [
            (1.0, "1.0"),
            (0.5, "0.5"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (1234567890123456.0, "1234567890123456.0"),
            (-2.5e-7, "-2.5e-07"),
            (0.1 + 0.2, "0.30000000000000004"),
            (123.456, "123.456"),
            (1.5e300, "1.5e+300"),
        ] {
            assert_eq!(python_float_repr(f), want, "{f}");
        }
    }

    #[test]
    fn tojson_matches_python_dumps() {
        // json.dumps({"b": [1, 2.0, None, True], "a": "x<y> & 'z' é\n"}, ensure_ascii=False)
        let v: serde_json::Value =
            serde_json::from_str(r#"{"b": [1, 2.0, null, true], "a": "x<y> & 'z' é\n"}"#).unwrap();
        assert_eq!(
            to_python_json(&v),
            r#"{"b": [1, 2.0, null, true], "a": "x<y> & 'z' é\n"}"#
        );
        let t = ChatTemplate::new(
            "{{ x | tojson(indent=2) }}|{{ x | tojson(sort_keys=true) }}|{{ [] | tojson }}",
            "test",
        )
        .unwrap();
        let tmpl = t.env.get_template(TEMPLATE_NAME).unwrap();
        let out = tmpl
            .render(minijinja::context! { x => jinja_value(&v) })
            .unwrap();
        // json.dumps(x, indent=2) and json.dumps(x, sort_keys=True)
        assert_eq!(
            out,
            "{\n  \"b\": [\n    1,\n    2.0,\n    null,\n    true\n  ],\n  \"a\": \"x<y> & 'z' é\\n\"\n}|{\"a\": \"x<y> & 'z' é\\n\", \"b\": [1, 2.0, null, true]}|[]"
        );
    }

    #[test]
    fn placeholders_split_like_verl() {
        let img = || ContentPart::Image { image: None };
        let txt = |t: &str| ContentPart::Text { text: t.into() };
        assert_eq!(
            split_vision_placeholders("<image>How many?<image><video> ok"),
            vec![
                img(),
                txt("How many?"),
                img(),
                ContentPart::Video { video: None },
                txt(" ok")
            ]
        );
        assert_eq!(split_vision_placeholders("plain"), vec![txt("plain")]);
        assert_eq!(split_vision_placeholders(""), vec![]);
        assert_eq!(
            split_vision_placeholders("<imag><image"),
            vec![txt("<imag><image")]
        );
    }

    #[test]
    fn raise_exception_surfaces_the_message() {
        let t = ChatTemplate::new(
            "{{ raise_exception('bad role: ' + messages[0].role) }}",
            "t",
        )
        .unwrap();
        let err = t
            .render(
                &[ChatMessage::text("robot", "x")],
                &RenderOptions::default(),
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad role: robot"), "{err}");
    }

    #[test]
    fn builtin_template_renders_qwen_format() {
        let t = ChatTemplate::new(QWEN3_VL_CHAT_TEMPLATE, "builtin").unwrap();
        let msgs = vec![
            ChatMessage::system("S"),
            ChatMessage::parts(
                "user",
                vec![
                    ContentPart::Text { text: "a".into() },
                    ContentPart::Image { image: None },
                    ContentPart::Text { text: "b".into() },
                ],
            ),
        ];
        let out = t
            .render(
                &msgs,
                &RenderOptions {
                    add_generation_prompt: true,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\na<|vision_start|><|image_pad|><|vision_end|>b<|im_end|>\n<|im_start|>assistant\n"
        );
    }
}
