//! `makiatto.toml`: the project's domains, records, functions, transforms
//! and `[o11y]`, read and validated once before anything is sent.
//!
//! Every problem in the file is collected (not only the first) and shown as
//! cargo and rustc do: the file, line and column, the offending span
//! underlined, what is wrong and how to fix it. [`Project::load`] returns
//! either a whole valid project or every problem found. DNS records are
//! parsed by `makiatto_projections::record`, the parser the nodes' zone
//! compiler uses, so a record that passes here is one every node serves.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use makiatto_projections::config::{
    DesiredConfig, DomainConfig, FunctionConfig, O11yConfig, RecordConfig, TransformConfig,
};
use makiatto_projections::record::{
    Field, NameKind, Record, RecordError, RecordText, check_name, normalise_name,
};
use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme, NamedSource, SourceSpan};
use serde::Deserialize;
use toml::Spanned;

/// The file name `maki` looks for in the current directory.
pub const FILE_NAME: &str = "makiatto.toml";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProject {
    #[serde(default)]
    domain: Vec<Spanned<RawDomain>>,
    o11y: Option<RawO11y>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDomain {
    name: Spanned<String>,
    path: Spanned<String>,
    #[serde(default)]
    aliases: Vec<Spanned<String>>,
    #[serde(default)]
    records: Vec<Spanned<RawRecord>>,
    #[serde(default)]
    functions: Vec<Spanned<RawFunction>>,
    #[serde(default)]
    transforms: Vec<Spanned<RawTransform>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord {
    #[serde(rename = "type")]
    rtype: Spanned<String>,
    name: Spanned<String>,
    value: Spanned<String>,
    ttl: Option<Spanned<i64>>,
    priority: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFunction {
    path: Spanned<String>,
    #[serde(default)]
    methods: Vec<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<Spanned<String>, Spanned<String>>,
    env_file: Option<Spanned<String>>,
    timeout_ms: Option<Spanned<i64>>,
    max_memory_mb: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTransform {
    path: Spanned<String>,
    files: Spanned<String>,
    #[serde(default)]
    env: BTreeMap<Spanned<String>, Spanned<String>>,
    env_file: Option<Spanned<String>>,
    timeout_ms: Option<Spanned<i64>>,
    max_memory_mb: Option<Spanned<i64>>,
    max_file_size_kb: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawO11y {
    otlp_endpoint: Option<Spanned<String>>,
    sampling_ratio: Option<Spanned<f64>>,
    tracing_enabled: Option<bool>,
    metrics_enabled: Option<bool>,
    logging_enabled: Option<bool>,
    slow_threshold_ms: Option<Spanned<i64>>,
    metrics_interval_secs: Option<Spanned<i64>>,
    dns_sampling_ratio: Option<Spanned<f64>>,
}

/// A valid project.
#[derive(Debug, Clone)]
pub struct Project {
    /// The `makiatto.toml` read.
    pub file: PathBuf,
    pub domains: Vec<Domain>,
    pub o11y: O11yConfig,
}

/// One `[[domain]]`.
#[derive(Debug, Clone)]
pub struct Domain {
    /// Lowercase, no trailing dot; a registrable domain.
    pub name: String,
    /// The directory served, absolute.
    pub dir: PathBuf,
    pub aliases: Vec<String>,
    /// Keyed as the configuration document keys them: `TYPE name n`, n
    /// counting records of the same type and name in file order.
    pub records: BTreeMap<String, RecordConfig>,
    pub functions: Vec<Function>,
    pub transforms: Vec<Transform>,
    /// Files inside `dir` that are configuration, never served: the
    /// components and any `env_file` that lives there.
    pub config_files: BTreeSet<String>,
}

impl Domain {
    /// A domain with no records, functions or transforms, served from
    /// `/site` (the sync tests' plans).
    #[doc(hidden)]
    pub fn for_test(name: &str) -> Domain {
        Domain {
            name: name.to_owned(),
            dir: PathBuf::from("/site"),
            aliases: vec![],
            records: Default::default(),
            functions: vec![],
            transforms: vec![],
            config_files: Default::default(),
        }
    }
}

/// A `[[domain.functions]]` entry; `env` in plain text until sealed.
#[derive(Debug, Clone)]
pub struct Function {
    /// Relative to the domain directory, `/`-separated, normalised.
    pub path: String,
    pub methods: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub timeout_ms: Option<u64>,
    pub max_memory_mb: Option<u64>,
}

/// A `[[domain.transforms]]` entry, in file order.
#[derive(Debug, Clone)]
pub struct Transform {
    pub path: String,
    pub files: String,
    pub env: BTreeMap<String, String>,
    pub timeout_ms: Option<u64>,
    pub max_memory_mb: Option<u64>,
    pub max_file_size_kb: Option<u64>,
}

impl Project {
    /// The desired configuration this file asks for, on top of `base` (the
    /// configuration as of the last sync: settings and domains this file
    /// does not name are kept). `seal` turns each env value into its sealed
    /// form (hex of a `SealedValue` to the nodes' keys); its arguments are
    /// the domain, the component path, the variable and its value.
    pub fn to_desired(
        &self,
        base: &DesiredConfig,
        mut seal: impl FnMut(&str, &str, &str, &str) -> anyhow::Result<String>,
    ) -> anyhow::Result<DesiredConfig> {
        let mut out = base.clone();
        out.o11y = self.o11y.clone();
        out.domains.clear();
        for d in &self.domains {
            let mut sealed_env = |path: &str, env: &BTreeMap<String, String>| {
                env.iter()
                    .map(|(k, v)| Ok((k.clone(), seal(&d.name, path, k, v)?)))
                    .collect::<anyhow::Result<BTreeMap<_, _>>>()
            };
            let functions = d
                .functions
                .iter()
                .map(|f| {
                    Ok(FunctionConfig {
                        path: f.path.clone(),
                        methods: f.methods.clone(),
                        env: sealed_env(&f.path, &f.env)?,
                        timeout_ms: f.timeout_ms,
                        max_memory_mb: f.max_memory_mb,
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let transforms = d
                .transforms
                .iter()
                .map(|t| {
                    Ok(TransformConfig {
                        path: t.path.clone(),
                        files: t.files.clone(),
                        env: sealed_env(&t.path, &t.env)?,
                        timeout_ms: t.timeout_ms,
                        max_memory_mb: t.max_memory_mb,
                        max_file_size_kb: t.max_file_size_kb,
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            out.domains.insert(
                d.name.clone(),
                DomainConfig {
                    aliases: d.aliases.clone(),
                    records: d.records.clone(),
                    functions,
                    transforms,
                },
            );
        }
        Ok(out)
    }
}

/// One problem in the file.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("{message}")]
pub struct Problem {
    message: String,
    #[source_code]
    src: NamedSource<Arc<String>>,
    #[label("{label}")]
    span: SourceSpan,
    #[help]
    help: Option<String>,
    label: String,
    /// 1-based line and column of the span's start (for tests and scripts).
    pub line: usize,
    pub column: usize,
}

/// Every problem found in a `makiatto.toml`.
#[derive(Debug)]
pub struct Problems {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl std::fmt::Display for Problems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::io::IsTerminal;
        let theme = if std::io::stderr().is_terminal() {
            GraphicalTheme::unicode()
        } else {
            GraphicalTheme::unicode_nocolor()
        };
        let handler = GraphicalReportHandler::new_themed(theme).with_width(100);
        for p in &self.problems {
            let mut out = String::new();
            if handler.render_report(&mut out, p).is_err() {
                out = format!(
                    "{}:{}:{}: {}\n",
                    self.file.display(),
                    p.line,
                    p.column,
                    p.message
                );
            }
            // A plain `file:line:col: message` first line, for editors and grep.
            writeln!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                p.line,
                p.column,
                p.message
            )?;
            write!(f, "{out}")?;
        }
        write!(
            f,
            "{} problem{} in {}; nothing was sent",
            self.problems.len(),
            if self.problems.len() == 1 { "" } else { "s" },
            self.file.display()
        )
    }
}

impl std::error::Error for Problems {}

/// Collects problems against one source text.
struct Checker {
    src: Arc<String>,
    name: String,
    problems: Vec<Problem>,
}

impl Checker {
    fn problem(
        &mut self,
        span: Range<usize>,
        message: impl Into<String>,
        label: impl Into<String>,
        help: Option<String>,
    ) {
        let start = span.start.min(self.src.len());
        let end = span.end.clamp(start, self.src.len());
        let (line, column) = line_col(&self.src, start);
        self.problems.push(Problem {
            message: message.into(),
            src: NamedSource::new(self.name.clone(), self.src.clone()),
            span: (start, end - start).into(),
            label: label.into(),
            help,
            line,
            column,
        });
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

impl Project {
    /// Reads and validates `file`. Paths in it are relative to its directory.
    pub fn load(file: &Path) -> Result<Project, Box<Problems>> {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                let src = Arc::new(String::new());
                let mut c = Checker {
                    src,
                    name: file.display().to_string(),
                    problems: Vec::new(),
                };
                c.problem(
                    0..0,
                    format!("cannot read {}: {e}", file.display()),
                    "here",
                    Some(format!(
                        "create {FILE_NAME} in your project directory (see `maki config check --help`), or name it with --file"
                    )),
                );
                return Err(Box::new(Problems {
                    file: file.to_owned(),
                    problems: c.problems,
                }));
            }
        };
        let root = file
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."))
            .to_owned();
        Self::parse(file, &root, text)
    }

    /// Validates `text` as the contents of `file`, paths relative to `root`.
    pub fn parse(file: &Path, root: &Path, text: String) -> Result<Project, Box<Problems>> {
        let mut c = Checker {
            src: Arc::new(text),
            name: file.display().to_string(),
            problems: Vec::new(),
        };
        let raw: RawProject = match toml::from_str(&c.src.clone()) {
            Ok(raw) => raw,
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                let message = e.message().to_owned();
                let help = if message.starts_with("unknown field") {
                    Some("check the spelling; the fields of each table are listed in the guide's Configuration section".to_owned())
                } else if message.starts_with("missing field") {
                    Some("add the field: it is required".to_owned())
                } else {
                    None
                };
                c.problem(span, message, "here", help);
                return Err(Box::new(Problems {
                    file: file.to_owned(),
                    problems: c.problems,
                }));
            }
        };
        let mut domains = Vec::new();
        let mut seen: BTreeMap<String, Range<usize>> = BTreeMap::new();
        for d in &raw.domain {
            if let Some(domain) = check_domain(&mut c, root, d.get_ref(), &mut seen) {
                domains.push(domain);
            }
        }
        if raw.domain.is_empty() {
            c.problem(
                0..0,
                "no [[domain]] is configured",
                "here",
                Some("add one:\n[[domain]]\nname = \"example.com\"\npath = \"./dist\"".into()),
            );
        }
        let o11y = raw.o11y.map(|o| check_o11y(&mut c, o)).unwrap_or_default();
        if c.problems.is_empty() {
            Ok(Project {
                file: file.to_owned(),
                domains,
                o11y,
            })
        } else {
            Err(Box::new(Problems {
                file: file.to_owned(),
                problems: c.problems,
            }))
        }
    }
}

/// `maki config check`: prints every problem (to standard error) or a
/// summary of what the file configures (with `json`, the configuration it
/// would send, env values by name only); returns whether it is valid.
pub fn check(file: &Path, json: bool) -> anyhow::Result<bool> {
    match Project::load(file) {
        Err(problems) => {
            eprintln!("{problems}");
            Ok(false)
        }
        Ok(p) if json => {
            let desired = p.to_desired(&DesiredConfig::default(), |_, _, _, _| {
                Ok("sealed at sync".to_owned())
            })?;
            let mut value = serde_json::to_value(&desired)?;
            if let Some(map) = value.as_object_mut() {
                map.remove("settings");
            }
            println!("{}", serde_json::to_string_pretty(&value)?);
            Ok(true)
        }
        Ok(p) => {
            for d in &p.domains {
                let files = crate::tree::walk(d, &d.config_files)?;
                let cache_file = crate::tree::HashCache::file_for(&d.dir);
                let mut cache = cache_file
                    .as_deref()
                    .map(crate::tree::HashCache::load)
                    .unwrap_or_default();
                let (manifest, _) = crate::tree::manifest(&files, &mut cache, &|_| {})?;
                if let Some(file) = &cache_file
                    && let Err(e) = cache.save(file)
                {
                    eprintln!(
                        "warning: cannot save the hash cache {}: {e:#}",
                        file.display()
                    );
                }
                println!(
                    "{}: {} files, {} bytes (manifest {}) from {} ({} alias{}, {} record{}, {} function{}, {} transform{})",
                    d.name,
                    manifest.files.len(),
                    manifest.bytes(),
                    manifest.hash().short(),
                    d.dir.display(),
                    d.aliases.len(),
                    if d.aliases.len() == 1 { "" } else { "es" },
                    d.records.len(),
                    if d.records.len() == 1 { "" } else { "s" },
                    d.functions.len(),
                    if d.functions.len() == 1 { "" } else { "s" },
                    d.transforms.len(),
                    if d.transforms.len() == 1 { "" } else { "s" },
                );
            }
            println!("{}: valid", p.file.display());
            Ok(true)
        }
    }
}

/// A path below the domain directory: relative, no `..` above it, no NUL.
fn inner_path(text: &str) -> Result<String, String> {
    if text.contains('\0') {
        return Err("the path holds a NUL byte".into());
    }
    let path = Path::new(text);
    if path.is_absolute() {
        return Err("the path is absolute; give it relative to the domain's directory".into());
    }
    let mut parts: Vec<String> = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return Err("the path leaves the domain's directory".into());
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(
                    "the path is absolute; give it relative to the domain's directory".into(),
                );
            }
        }
    }
    if parts.is_empty() {
        return Err("the path names the domain's directory itself, not a file".into());
    }
    Ok(parts.join("/"))
}

fn check_domain(
    c: &mut Checker,
    root: &Path,
    d: &RawDomain,
    seen: &mut BTreeMap<String, Range<usize>>,
) -> Option<Domain> {
    let before = c.problems.len();
    let name = check_domain_name(c, d, seen);
    let dir = check_dir(c, root, d);
    let aliases = check_aliases(c, &name, d, seen);
    let records = check_records(c, &name, &d.records);
    let functions = check_functions(c, root, &dir, d);
    let transforms = check_transforms(c, root, &dir, d);
    let config_files = config_files(root, &dir, d, &functions, &transforms);
    (c.problems.len() == before).then_some(Domain {
        name,
        dir,
        aliases,
        records,
        functions,
        transforms,
        config_files,
    })
}

/// The domain's name, lowercased: a valid, registrable domain, configured
/// once.
fn check_domain_name(
    c: &mut Checker,
    d: &RawDomain,
    seen: &mut BTreeMap<String, Range<usize>>,
) -> String {
    let name = d.name.get_ref().trim_end_matches('.').to_ascii_lowercase();
    let name_span = d.name.span();
    match check_name(&name, NameKind::Domain) {
        Err(e) => c.problem(
            name_span.clone(),
            format!("{:?} is not a valid domain name: {e}", d.name.get_ref()),
            "this name",
            None,
        ),
        Ok(()) => match psl::domain_str(&name) {
            Some(registrable) if registrable == name => {}
            Some(registrable) => c.problem(
                name_span.clone(),
                format!("{name} is a subdomain of {registrable}; each [[domain]] must be a root domain you control at the registrar"),
                "a subdomain",
                Some(format!(
                    "serve {registrable} as the domain, and give {name} a record under it (or list it in `aliases`)"
                )),
            ),
            None => c.problem(
                name_span.clone(),
                format!("{name} is a public suffix, not a domain you can register"),
                "a public suffix",
                Some("name a domain registered under it, such as example.co.uk".into()),
            ),
        },
    }
    if let Some(first) = seen.get(&name) {
        let (line, _) = line_col(&c.src, first.start);
        c.problem(
            name_span.clone(),
            format!("the domain {name} is configured twice"),
            "again here",
            Some(format!("merge this [[domain]] with the one on line {line}")),
        );
    } else {
        seen.insert(name.clone(), name_span);
    }
    name
}

/// The directory served: it must exist; absolute.
fn check_dir(c: &mut Checker, root: &Path, d: &RawDomain) -> PathBuf {
    let path_text = d.path.get_ref();
    let dir = if path_text.contains('\0') {
        c.problem(
            d.path.span(),
            "the path holds a NUL byte",
            "this path",
            None,
        );
        root.to_owned()
    } else {
        root.join(path_text)
    };
    if !path_text.contains('\0') && !dir.is_dir() {
        c.problem(
            d.path.span(),
            format!("{} is not a directory", dir.display()),
            "relative to makiatto.toml",
            Some("create it, or point `path` at the directory holding the site's files".into()),
        );
    }
    std::path::absolute(&dir).unwrap_or(dir)
}

/// The aliases: valid names, not the domain itself, each name used once
/// in the file.
fn check_aliases(
    c: &mut Checker,
    name: &str,
    d: &RawDomain,
    seen: &mut BTreeMap<String, Range<usize>>,
) -> Vec<String> {
    let mut aliases = Vec::new();
    for a in &d.aliases {
        let alias = a.get_ref().trim_end_matches('.').to_ascii_lowercase();
        if let Err(e) = check_name(&alias, NameKind::Alias) {
            c.problem(
                a.span(),
                format!("{:?} is not a valid alias: {e}", a.get_ref()),
                "this alias",
                None,
            );
        } else if alias == name {
            c.problem(
                a.span(),
                format!("{alias} is the domain itself"),
                "not an alias",
                Some("remove it from `aliases`".into()),
            );
        } else if let Some(first) = seen.get(&alias) {
            let (line, _) = line_col(&c.src, first.start);
            c.problem(
                a.span(),
                format!("{alias} is already used on line {line}"),
                "used twice",
                Some("a name can be one domain or one alias, once".into()),
            );
        } else {
            seen.insert(alias.clone(), a.span());
            aliases.push(alias);
        }
    }
    aliases
}

/// The functions: components inside the directory, one per route, HTTP
/// method names, env values, positive limits.
fn check_functions(c: &mut Checker, root: &Path, dir: &Path, d: &RawDomain) -> Vec<Function> {
    let mut functions = Vec::new();
    let mut routes: BTreeMap<String, Range<usize>> = BTreeMap::new();
    for f in &d.functions {
        let span = f.span();
        let f = f.get_ref();
        let Some(path) = component_path(c, dir, &f.path) else {
            continue;
        };
        let route = path.trim_end_matches(".wasm").to_owned();
        if let Some(first) = routes.get(&route) {
            let (line, _) = line_col(&c.src, first.start);
            c.problem(
                f.path.span(),
                format!("a function on line {line} already serves /{route}"),
                "same route",
                None,
            );
        }
        routes.insert(route, span);
        let mut methods = Vec::new();
        for m in &f.methods {
            let method = m.get_ref().to_ascii_uppercase();
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase() || b == b'-') {
                c.problem(
                    m.span(),
                    format!("{:?} is not an HTTP method", m.get_ref()),
                    "this method",
                    Some("use names such as GET, POST, PUT, DELETE".into()),
                );
            } else if !methods.contains(&method) {
                methods.push(method);
            }
        }
        let env = check_env(c, root, &f.env, f.env_file.as_ref());
        functions.push(Function {
            path,
            methods,
            env,
            timeout_ms: positive(c, f.timeout_ms.as_ref(), "timeout_ms"),
            max_memory_mb: positive(c, f.max_memory_mb.as_ref(), "max_memory_mb"),
        });
    }
    functions
}

/// The transforms: components inside the directory, valid globs, env
/// values, positive limits.
fn check_transforms(c: &mut Checker, root: &Path, dir: &Path, d: &RawDomain) -> Vec<Transform> {
    let mut transforms = Vec::new();
    for t in &d.transforms {
        let t = t.get_ref();
        let Some(path) = component_path(c, dir, &t.path) else {
            continue;
        };
        if let Err(e) = globset::Glob::new(t.files.get_ref()) {
            c.problem(
                t.files.span(),
                format!("{:?} is not a valid glob: {}", t.files.get_ref(), e.kind()),
                "this pattern",
                Some("for example \"**/*.html\" or \"**/*.{js,css}\"".into()),
            );
        }
        let env = check_env(c, root, &t.env, t.env_file.as_ref());
        transforms.push(Transform {
            path,
            files: t.files.get_ref().clone(),
            env,
            timeout_ms: positive(c, t.timeout_ms.as_ref(), "timeout_ms"),
            max_memory_mb: positive(c, t.max_memory_mb.as_ref(), "max_memory_mb"),
            max_file_size_kb: positive(c, t.max_file_size_kb.as_ref(), "max_file_size_kb"),
        });
    }
    transforms
}

/// Files inside the directory that are configuration, never served: the
/// components and any `env_file` that lives there.
fn config_files(
    root: &Path,
    dir: &Path,
    d: &RawDomain,
    functions: &[Function],
    transforms: &[Transform],
) -> BTreeSet<String> {
    let mut files: BTreeSet<String> = functions
        .iter()
        .map(|f| f.path.clone())
        .chain(transforms.iter().map(|t| t.path.clone()))
        .collect();
    let env_files = d
        .functions
        .iter()
        .filter_map(|f| f.get_ref().env_file.as_ref())
        .chain(
            d.transforms
                .iter()
                .filter_map(|t| t.get_ref().env_file.as_ref()),
        );
    for file in env_files {
        if let (Ok(real), Ok(base)) = (root.join(file.get_ref()).canonicalize(), dir.canonicalize())
            && let Ok(inside) = real.strip_prefix(&base)
        {
            files.insert(
                inside
                    .to_string_lossy()
                    .replace(std::path::MAIN_SEPARATOR, "/"),
            );
        }
    }
    files
}

/// A function's or transform's component: inside the domain directory, a
/// `.wasm` file that exists.
fn component_path(c: &mut Checker, dir: &Path, path: &Spanned<String>) -> Option<String> {
    match inner_path(path.get_ref()) {
        Err(e) => {
            c.problem(
                path.span(),
                e,
                "this path",
                Some("components live inside the domain's directory".into()),
            );
            None
        }
        Ok(p) => {
            if !p.ends_with(".wasm") {
                c.problem(
                    path.span(),
                    format!("{p} is not a .wasm component"),
                    "this path",
                    Some(
                        "build the component (cargo component build) and name the .wasm file"
                            .into(),
                    ),
                );
                return None;
            }
            let full = dir.join(&p);
            if !full.is_file() {
                c.problem(
                    path.span(),
                    format!("{} does not exist", full.display()),
                    "not found",
                    Some("build the component into the domain's directory first".into()),
                );
                return None;
            }
            // A symlink pointing out of the directory escapes it too.
            if let (Ok(real), Ok(base)) = (full.canonicalize(), dir.canonicalize())
                && !real.starts_with(&base)
            {
                c.problem(
                    path.span(),
                    format!("{p} resolves outside the domain's directory"),
                    "a link out",
                    None,
                );
                return None;
            }
            Some(p)
        }
    }
}

fn positive(c: &mut Checker, v: Option<&Spanned<i64>>, field: &str) -> Option<u64> {
    let v = v?;
    match u64::try_from(*v.get_ref()) {
        Ok(n) if n > 0 => Some(n),
        _ => {
            c.problem(
                v.span(),
                format!("{field} must be a positive whole number"),
                "this value",
                None,
            );
            None
        }
    }
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|ch| ch.is_ascii_alphabetic() || ch == '_')
        && chars.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

/// `env` merged over the `env_file`'s variables (the table wins).
fn check_env(
    c: &mut Checker,
    root: &Path,
    env: &BTreeMap<Spanned<String>, Spanned<String>>,
    env_file: Option<&Spanned<String>>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(file) = env_file {
        let path = root.join(file.get_ref());
        match read_env_file(&path) {
            Err(e) => c.problem(
                file.span(),
                format!("cannot read {}: {e}", path.display()),
                "this env_file",
                Some("env_file is relative to makiatto.toml".into()),
            ),
            Ok(text) => match parse_env_file(&text) {
                Ok(vars) => out.extend(vars),
                Err((line, e)) => c.problem(
                    file.span(),
                    format!("{}:{line}: {e}", path.display()),
                    "in this file",
                    Some("write one NAME=value per line; # starts a comment".into()),
                ),
            },
        }
    }
    for (k, v) in env {
        if !valid_env_name(k.get_ref()) {
            c.problem(
                k.span(),
                format!("{:?} is not a valid environment variable name", k.get_ref()),
                "this name",
                Some("use letters, digits and _, not starting with a digit".into()),
            );
        } else {
            out.insert(k.get_ref().clone(), v.get_ref().clone());
        }
    }
    out
}

/// The largest `env_file` read: far past any real one, and a path such as
/// `/dev/zero` ends in an error, not in a read that never ends.
const MAX_ENV_FILE: u64 = 1 << 20;

/// An `env_file`'s text: a regular file (a FIFO or a device is refused
/// before it is opened), at most [`MAX_ENV_FILE`] bytes, UTF-8.
fn read_env_file(path: &Path) -> std::io::Result<String> {
    use std::io::{Error, Read};
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(Error::other("not a regular file"));
    }
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_ENV_FILE + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_ENV_FILE {
        return Err(Error::other(format!(
            "larger than {} KiB",
            MAX_ENV_FILE / 1024
        )));
    }
    Ok(text)
}

/// `NAME=value` lines; blank lines and `#` comments skipped; a value may
/// be wrapped in single or double quotes.
pub fn parse_env_file(text: &str) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut vars = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((name, value)) = line.split_once('=') else {
            return Err((i + 1, format!("{line:?} is not NAME=value")));
        };
        let name = name.trim();
        if !valid_env_name(name) {
            return Err((i + 1, format!("{name:?} is not a valid variable name")));
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        vars.push((name.to_owned(), value.to_owned()));
    }
    Ok(vars)
}

/// The records of one domain, each parsed by `makiatto_projections::record`
/// (the parser every node's zone compiler uses, so what passes here is
/// served), each problem pointing at the field it is in; then the rules
/// across records.
fn check_records(
    c: &mut Checker,
    domain: &str,
    records: &[Spanned<RawRecord>],
) -> BTreeMap<String, RecordConfig> {
    let mut out = BTreeMap::new();
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    // Per owner name: the types present and where the first record was.
    let mut at_name: BTreeMap<String, Vec<(String, Range<usize>)>> = BTreeMap::new();
    for r in records {
        let span = r.span();
        let r = r.get_ref();
        let rtype = r.rtype.get_ref().to_ascii_uppercase();
        let name = normalise_name(domain, r.name.get_ref());
        let text = RecordText {
            rtype: r.rtype.get_ref(),
            name: r.name.get_ref(),
            value: r.value.get_ref(),
            ttl: r.ttl.as_ref().map(|t| *t.get_ref()),
            priority: r.priority.as_ref().map(|p| *p.get_ref()),
        };
        match Record::parse(domain, &text) {
            Err(errors) => {
                for e in &errors {
                    let at = match e.field() {
                        Field::Type => r.rtype.span(),
                        Field::Name => r.name.span(),
                        Field::Value => r.value.span(),
                        Field::Ttl => r.ttl.as_ref().map_or(span.clone(), |t| t.span()),
                        Field::Priority => r.priority.as_ref().map_or(span.clone(), |p| p.span()),
                        Field::Entry => span.clone(),
                    };
                    c.problem(at, e.to_string(), label(e, &rtype), e.help());
                }
            }
            Ok(record) => {
                // The stored form keeps the value as written (the nodes
                // parse it again); the name and type as parsed.
                let (rtype, name) = (record.data.rtype().as_str(), record.owner.relative());
                let n = counts.entry((rtype.into(), name.into())).or_default();
                out.insert(
                    format!("{rtype} {name} {n}"),
                    RecordConfig {
                        rtype: rtype.into(),
                        name: name.into(),
                        value: r.value.get_ref().clone(),
                        ttl: record.ttl,
                        priority: record.data.priority(),
                    },
                );
                *n += 1;
            }
        }
        at_name
            .entry(name)
            .or_default()
            .push((rtype, r.name.span()));
    }
    // A CNAME owns its name alone (RFC 1034 §3.6.2).
    for (name, entries) in &at_name {
        if name == "@" {
            continue; // a CNAME there is refused on its own
        }
        let cnames = entries.iter().filter(|(t, _)| t == "CNAME").count();
        if cnames > 0 && entries.len() > 1 {
            let (_, span) = entries
                .iter()
                .filter(|(t, _)| t == "CNAME")
                .nth(if cnames > 1 { 1 } else { 0 })
                .cloned()
                .unwrap_or_else(|| entries[0].clone());
            c.problem(
                span,
                format!("{name}.{domain} has a CNAME beside other records"),
                "CNAME here",
                Some(
                    "a CNAME must be the only record of its name: remove the others, or the CNAME"
                        .into(),
                ),
            );
        }
    }
    out
}

/// The underline's label for a record problem.
fn label(e: &RecordError, rtype: &str) -> String {
    match e {
        RecordError::NotRelative { .. } => "the domain repeated".into(),
        RecordError::AtApex { .. } => "at the apex".into(),
        RecordError::NoPriority(_) => "not used".into(),
        _ => match e.field() {
            Field::Type => "this type".into(),
            Field::Name => "this name".into(),
            Field::Value => format!("not a valid {rtype} value"),
            Field::Ttl => "this ttl".into(),
            Field::Priority => "this priority".into(),
            Field::Entry => "this record".into(),
        },
    }
}

fn check_o11y(c: &mut Checker, o: RawO11y) -> O11yConfig {
    if let Some(e) = &o.otlp_endpoint {
        let text = e.get_ref();
        let ok = text
            .strip_prefix("http://")
            .or_else(|| text.strip_prefix("https://"))
            .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace));
        if !ok {
            c.problem(
                e.span(),
                format!("{text:?} is not an OTLP endpoint URL"),
                "this endpoint",
                Some(
                    "for example \"http://10.44.44.5:4317\"; leave it out to use the o11y peer"
                        .into(),
                ),
            );
        }
    }
    for (r, what, hint) in [
        (
            &o.sampling_ratio,
            "sampling_ratio",
            "0.1 samples 10% of traces",
        ),
        (
            &o.dns_sampling_ratio,
            "dns_sampling_ratio",
            "0.001 traces one DNS query in a thousand",
        ),
    ] {
        if let Some(r) = r
            && !(0.0..=1.0).contains(r.get_ref())
        {
            c.problem(
                r.span(),
                format!("{what} must be from 0.0 to 1.0"),
                "this ratio",
                Some(hint.into()),
            );
        }
    }
    let mut ranged = |v: &Option<Spanned<i64>>, lo: i64, hi: i64, what: &str, hint: &str| {
        let value = v.as_ref()?;
        if !(lo..=hi).contains(value.get_ref()) {
            c.problem(
                value.span(),
                format!("{what} must be from {lo} to {hi}"),
                "this value",
                Some(hint.into()),
            );
            return None;
        }
        u64::try_from(*value.get_ref()).ok()
    };
    let slow_threshold_ms = ranged(
        &o.slow_threshold_ms,
        1,
        3_600_000,
        "slow_threshold_ms",
        "requests slower than this many milliseconds are always traced (default 1000)",
    );
    let metrics_interval_secs = ranged(
        &o.metrics_interval_secs,
        1,
        3600,
        "metrics_interval_secs",
        "how often metrics are exported, in seconds (default 15)",
    );
    O11yConfig {
        slow_threshold_ms,
        metrics_interval_secs,
        otlp_endpoint: o.otlp_endpoint.map(|e| e.into_inner()),
        sampling_ratio: o.sampling_ratio.map(|r| r.into_inner()),
        dns_sampling_ratio: o.dns_sampling_ratio.map(|r| r.into_inner()),
        tracing_enabled: o.tracing_enabled,
        metrics_enabled: o.metrics_enabled,
        logging_enabled: o.logging_enabled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(text: &str) -> (tempfile::TempDir, Result<Project, Box<Problems>>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dist/api")).unwrap();
        std::fs::write(dir.path().join("dist/api/hello.wasm"), b"\0asm").unwrap();
        std::fs::write(
            dir.path().join("secrets.env"),
            "API_KEY=\"s3cret\"\n# note\nMODE=prod\n",
        )
        .unwrap();
        let file = dir.path().join(FILE_NAME);
        std::fs::write(&file, text).unwrap();
        let loaded = Project::load(&file);
        (dir, loaded)
    }

    /// (line, column, message) of every problem.
    fn problems(text: &str) -> Vec<(usize, usize, String)> {
        let (_dir, loaded) = project(text);
        loaded
            .expect_err("the file should be refused")
            .problems
            .iter()
            .map(|p| (p.line, p.column, p.message.clone()))
            .collect()
    }

    #[test]
    fn the_guides_example_is_valid() {
        let (_dir, loaded) = project(
            r#"
[[domain]]
name = "example.com"
path = "./dist"
aliases = ["www.example.com", "old-domain.com"]

[[domain.records]]
type = "TXT"
name = "_dmarc"
value = "v=DMARC1; p=none; rua=mailto:dmarc@example.com"

[[domain.records]]
type = "MX"
name = "@"
value = "mail.example.com"
ttl = 300
priority = 10

[[domain.functions]]
path = "api/hello.wasm"
methods = ["get", "POST"]
env = { GREETING = "hi" }
env_file = "secrets.env"

[o11y]
sampling_ratio = 0.1
"#,
        );
        let p = loaded.unwrap_or_else(|e| panic!("{e}"));
        let d = &p.domains[0];
        assert_eq!(d.aliases, ["www.example.com", "old-domain.com"]);
        assert_eq!(d.records["MX @ 0"].priority, Some(10));
        assert_eq!(d.records["TXT _dmarc 0"].rtype, "TXT");
        assert_eq!(d.functions[0].methods, ["GET", "POST"]);
        assert_eq!(d.functions[0].env["API_KEY"], "s3cret");
        assert_eq!(d.functions[0].env["GREETING"], "hi");
        assert_eq!(p.o11y.sampling_ratio, Some(0.1));
        assert_eq!(
            d.config_files.iter().collect::<Vec<_>>(),
            ["api/hello.wasm"],
            "the env file lives outside dist"
        );
    }

    #[test]
    fn unknown_fields_are_reported_where_they_are() {
        let got = problems("[[domain]]\nname = \"example.com\"\npaht = \"./dist\"\n");
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].0, got[0].1), (3, 1), "{got:?}");
        assert!(got[0].2.contains("unknown field `paht`"), "{got:?}");
    }

    #[test]
    fn subdomains_are_not_root_domains_but_co_uk_names_are() {
        let got = problems("[[domain]]\nname = \"blog.example.com\"\npath = \"dist\"\n");
        assert_eq!((got[0].0, got[0].1), (2, 8));
        assert!(got[0].2.contains("subdomain of example.com"), "{got:?}");
        let (_d, ok) = project("[[domain]]\nname = \"example.co.uk\"\npath = \"dist\"\n");
        assert!(ok.is_ok());
        let got = problems("[[domain]]\nname = \"co.uk\"\npath = \"dist\"\n");
        assert!(got[0].2.contains("public suffix"), "{got:?}");
    }

    #[test]
    fn every_problem_is_reported_with_its_position() {
        let got = problems(
            r#"[[domain]]
name = "example.com"
path = "dist"

[[domain.records]]
type = "A"
name = "www"
value = "300.1.1.1"

[[domain.records]]
type = "CNAME"
name = "@"
value = "elsewhere.example.net"

[[domain.records]]
type = "MX"
name = "@"
value = "mail.example.com"

[[domain.records]]
type = "CNAME"
name = "www"
value = "example.net"

[[domain]]
name = "example.com"
path = "missing"
"#,
        );
        let at: Vec<(usize, usize)> = got.iter().map(|(l, c, _)| (*l, *c)).collect();
        assert!(at.contains(&(8, 9)), "bad A value: {got:?}");
        assert!(at.contains(&(12, 8)), "CNAME at the apex: {got:?}");
        assert!(
            got.iter().any(|(_, _, m)| m.contains("needs a priority")),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|(l, _, m)| *l == 22 && m.contains("CNAME beside other records")),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|(l, _, m)| *l == 26 && m.contains("configured twice")),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|(l, _, m)| *l == 27 && m.contains("not a directory")),
            "{got:?}"
        );
    }

    #[test]
    fn component_paths_stay_inside_the_domain() {
        for (path, wanted) in [
            ("../outside.wasm", "leaves the domain"),
            ("/etc/passwd.wasm", "absolute"),
            ("api/../../x.wasm", "leaves the domain"),
            ("api/missing.wasm", "does not exist"),
            ("api/hello.txt", "not a .wasm"),
        ] {
            let got = problems(&format!(
                "[[domain]]\nname = \"example.com\"\npath = \"dist\"\n[[domain.functions]]\npath = {path:?}\n"
            ));
            assert_eq!((got[0].0, got[0].1), (5, 8), "{path}: {got:?}");
            assert!(got[0].2.contains(wanted), "{path}: {got:?}");
        }
    }

    #[test]
    fn an_env_file_that_is_no_regular_file_is_refused_without_reading_it() {
        // /dev/zero would be read for ever; a directory cannot be read.
        for (path, wanted) in [
            ("/dev/zero", "not a regular file"),
            ("dist", "not a regular file"),
        ] {
            let got = problems(&format!(
                "[[domain]]\nname = \"example.com\"\npath = \"dist\"\n[[domain.functions]]\npath = \"api/hello.wasm\"\nenv_file = {path:?}\n"
            ));
            assert_eq!((got[0].0, got[0].1), (6, 12), "{path}: {got:?}");
            assert!(got[0].2.contains(wanted), "{path}: {got:?}");
        }
    }

    #[test]
    fn record_values_follow_their_types() {
        for (rtype, value, ok) in [
            ("AAAA", "2001:db8::1", true),
            ("AAAA", "192.0.2.1", false),
            ("SRV", "5 5060 sip.example.com", true),
            ("SRV", "5 sip.example.com", false),
            ("CAA", "0 issue \"letsencrypt.org\"", true),
            ("CAA", "0 issue letsencrypt.org", false),
            ("NS", "ns1.other.net.", true),
            ("TXT", "anything at all", true),
            ("PTR", "x.example.com", false),
        ] {
            let priority = if rtype == "SRV" { "priority = 1\n" } else { "" };
            let (_d, loaded) = project(&format!(
                "[[domain]]\nname = \"example.com\"\npath = \"dist\"\n[[domain.records]]\ntype = {rtype:?}\nname = \"sub\"\nvalue = {value:?}\n{priority}"
            ));
            assert_eq!(
                loaded.is_ok(),
                ok,
                "{rtype} {value}: {:?}",
                loaded.err().map(|e| e.to_string())
            );
        }
    }

    #[test]
    fn the_report_names_file_line_and_column_and_says_nothing_was_sent() {
        let (_dir, loaded) = project(
            "[[domain]]\nname = \"example.com\"\npath = \"dist\"\naliases = [\"bad name\"]\n",
        );
        let text = loaded.err().unwrap().to_string();
        assert!(
            text.contains("makiatto.toml:4:12: \"bad name\" is not a valid alias"),
            "{text}"
        );
        assert!(text.contains("nothing was sent"), "{text}");
    }

    #[test]
    fn env_files_are_name_value_lines() {
        assert_eq!(
            parse_env_file("A=1\n\n# c\nexport B='two words'\n").unwrap(),
            vec![("A".into(), "1".into()), ("B".into(), "two words".into())]
        );
        assert_eq!(parse_env_file("A=1\nnot a line\n").unwrap_err().0, 2);
    }

    /// The node's zone compiler (`node/src/dns/zone.rs`) is tested on the
    /// same rows: what this check accepts, every node serves; what it
    /// refuses, a node skips, for the same reason.
    #[test]
    fn the_shared_table_of_records_is_checked_as_every_node_serves_it() {
        use makiatto_projections::record::cases::{CASES, DOMAIN, Verdict};

        for case in CASES {
            let mut text = format!(
                "[[domain]]\nname = {DOMAIN:?}\npath = \"dist\"\n[[domain.records]]\ntype = {}\nname = {}\nvalue = {}\n",
                toml::Value::from(case.rtype),
                toml::Value::from(case.name),
                toml::Value::from(case.value),
            );
            if let Some(ttl) = case.ttl {
                text.push_str(&format!("ttl = {ttl}\n"));
            }
            if let Some(priority) = case.priority {
                text.push_str(&format!("priority = {priority}\n"));
            }
            let (_dir, loaded) = project(&text);
            let parsed = Record::parse(DOMAIN, &case.text());
            match (case.verdict, loaded) {
                (Verdict::Accept, Ok(p)) => {
                    let records = &p.domains[0].records;
                    assert_eq!(records.len(), 1, "{case:?}");
                    let stored = records.values().next().unwrap();
                    assert_eq!(
                        Record::parse(DOMAIN, &stored.text()),
                        parsed,
                        "{case:?}: the stored form reads back as the file's"
                    );
                }
                (Verdict::Refuse(why), Err(problems)) => {
                    let Err(errors) = parsed else {
                        panic!("{case:?}: refused, yet the parser accepts it");
                    };
                    let got: Vec<String> = problems
                        .problems
                        .iter()
                        .map(|p| p.message.clone())
                        .collect();
                    let wanted: Vec<String> = errors.iter().map(ToString::to_string).collect();
                    assert_eq!(got, wanted, "{case:?}");
                    assert!(got.iter().any(|m| m.contains(why)), "{case:?}: {got:?}");
                }
                (_, got) => panic!("{case:?}: {:?}", got.err().map(|e| e.to_string())),
            }
        }
    }

    #[test]
    fn records_that_used_to_pass_are_shown_where_their_value_is() {
        let got = problems(
            r#"[[domain]]
name = "example.com"
path = "dist"

[[domain.records]]
type = "CAA"
name = "@"
value = "0 issuewildcardsxy \"letsencrypt.org\""

[[domain.records]]
type = "CAA"
name = "@"
value = "1 issue \"letsencrypt.org\""

[[domain.records]]
type = "CAA"
name = "@"
value = "0 iodef \"security@example.com\""

[[domain.records]]
type = "TXT"
name = "@"
value = "v=spf1 -all"
ttl = 0
"#,
        );
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!((got[0].0, got[0].1), (8, 9), "{got:?}");
        assert!(got[0].2.contains("is not 1 to 15 ASCII letters"), "{got:?}");
        assert_eq!((got[1].0, got[1].1), (13, 9), "{got:?}");
        assert!(got[1].2.contains("neither 0 nor 128"), "{got:?}");
        assert_eq!((got[2].0, got[2].1), (18, 9), "{got:?}");
        assert!(
            got[2].2.contains("is not a mailto:, http: or https: URL"),
            "{got:?}"
        );
        assert_eq!((got[3].0, got[3].1), (24, 7), "{got:?}");
        assert!(got[3].2.contains("ttl must be from 1"), "{got:?}");
    }
}
