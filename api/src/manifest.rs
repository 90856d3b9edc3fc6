//! YAML manifests: one deployment per document, several documents per file.
//!
//! ```yaml
//! name: worker
//! wasm: ./worker.wasm        # relative to the manifest
//! replicas: 3
//! resources: { cpu: 100m, memory: 64Mi }
//! env: { GREETING: hello }
//! restart: always            # always | on-failure | never
//! constraints: { zone: a }   # node labels
//! allowed_hosts: [api.example.com]   # outbound HTTP the replicas may make
//! ```
//!
//! A document is the deployment's own keys (`name`, `wasm` or `image`,
//! `replicas`, `resources` with defaults, `strategy`, `autoscale`, `scale_to_zero`) and, for every
//! other key, the wire template [`WorkloadSpec`] read by its own `Deserialize`:
//! a field added to the spec is a manifest key at once. This is what
//! `#[serde(flatten)]` would do, without its buffering: flatten reads the values
//! into memory first and loses their line and column. Then every rule is
//! checked by [`crate::validate::apply`], as the server checks an apply.

use crate::messages::ApplyRequest;
use crate::quantity::{Cpu, Memory};
use crate::spec::{Autoscale, Resources, ScaleToZero, UpdateStrategy, Workload, WorkloadSpec};
use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;
// Where callers of the API have always found the rules; they live in `validate`.
pub use crate::validate::{
    MAX_AUTOSCALE_WINDOW_SECONDS, MAX_REPLICAS, MAX_SECRET_BYTES, MAX_SPEC_ENTRIES, MAX_SPEC_TEXT_BYTES,
    MAX_VALUE_BYTES, validate_allowed_host, validate_apply, validate_env_key, validate_name, validate_ports,
    validate_probes, validate_secret, validate_secret_key, validate_secret_ref, validate_spec_sizes,
    validate_volume_lease, validate_volumes,
};

/// What each replica requests.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestResources {
    /// CPU, `100m` by default.
    #[serde(default = "default_cpu")]
    pub cpu: Cpu,
    /// Memory and its hard limit, `64Mi` by default.
    #[serde(default = "default_memory")]
    pub memory: Memory,
}

/// The default CPU request: `100m`.
pub fn default_cpu() -> Cpu {
    Cpu(100)
}

/// The default memory request and limit: `64Mi`.
pub fn default_memory() -> Memory {
    Memory(64 << 20)
}

impl Default for ManifestResources {
    fn default() -> Self {
        ManifestResources { cpu: default_cpu(), memory: default_memory() }
    }
}

/// One deployment as a manifest declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestDeployment {
    /// The deployment's name.
    pub name: String,
    /// Desired replicas; when absent, 1 for a new deployment, and an existing one
    /// keeps the count it has.
    pub replicas: Option<u32>,
    /// How a new revision replaces the old one.
    pub strategy: UpdateStrategy,
    /// Scaling by load between `min` and `max` replicas.
    pub autoscale: Option<Autoscale>,
    /// Going to zero replicas when idle.
    pub scale_to_zero: Option<ScaleToZero>,
    /// The namespace it goes to (#20); absent: the one the CLI acts in.
    pub namespace: Option<String>,
    /// The template. Its workload is `Wasm(path)` with the path of the `.wasm`
    /// file as written (relative to the manifest) until the CLI uploads it and
    /// puts the digest there, or `Image(reference)`.
    pub spec: WorkloadSpec,
}

impl ManifestDeployment {
    /// The apply this deployment asks for.
    pub fn request(&self) -> ApplyRequest {
        ApplyRequest {
            replicas: self.replicas,
            spec: self.spec.clone(),
            strategy: Some(self.strategy.clone()),
            autoscale: self.autoscale,
            scale_to_zero: self.scale_to_zero,
        }
    }
}

/// The keys a manifest reads itself rather than through [`WorkloadSpec`].
const OWN_KEYS: [&str; 9] =
    ["name", "wasm", "image", "replicas", "resources", "strategy", "autoscale", "scale_to_zero", "namespace"];

/// The template's fields a manifest spells with its own keys (`wasm`/`image`,
/// and `resources` with defaults).
const SPEC_FIELDS_NOT_KEYS: [&str; 2] = ["workload", "resources"];

/// The names of a derived struct's fields, as its `Deserialize` hands them to
/// `deserialize_struct`: the spec's fields without a copy of the list.
fn struct_fields<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    struct Fields(Option<&'static [&'static str]>);
    impl<'de> Deserializer<'de> for &mut Fields {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0 = Some(fields);
            Err(de::Error::custom("fields read"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields = Fields(None);
    let _ = T::deserialize(&mut fields);
    fields.0.unwrap_or_default()
}

/// Every key a manifest document may hold, for "unknown field" errors.
fn manifest_keys() -> &'static [&'static str] {
    static KEYS: OnceLock<&'static [&'static str]> = OnceLock::new();
    KEYS.get_or_init(|| {
        let spec = struct_fields::<WorkloadSpec>().iter().filter(|f| !SPEC_FIELDS_NOT_KEYS.contains(f));
        let all: Vec<&'static str> = OWN_KEYS.iter().copied().chain(spec.copied()).collect();
        Box::leak(all.into_boxed_slice())
    })
}

/// A document key: one of [`OWN_KEYS`], or a template field.
enum Key {
    Own(&'static str),
    Spec(&'static str),
}

/// Reads a key and says whose it is; an unknown key is refused here, so the
/// error points at the key itself.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Key;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a manifest key")
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
        // `kind: deployment` (the default kind) says what `parse_objects` already knows.
        if key == "kind" {
            return Ok(Key::Own("kind"));
        }
        if let Some(k) = OWN_KEYS.iter().find(|k| **k == key) {
            return Ok(Key::Own(k));
        }
        match manifest_keys().iter().find(|k| **k == key) {
            Some(k) => Ok(Key::Spec(k)),
            None => Err(E::unknown_field(key, manifest_keys())),
        }
    }
}

/// The values of a document's own keys, as read so far.
#[derive(Default)]
struct Own {
    name: Option<String>,
    wasm: Option<String>,
    image: Option<String>,
    replicas: Option<u32>,
    resources: Option<ManifestResources>,
    strategy: Option<UpdateStrategy>,
    autoscale: Option<Autoscale>,
    scale_to_zero: Option<ScaleToZero>,
    namespace: Option<String>,
}

impl Own {
    /// Reads the value of own key `key` from `map`, where it stands (so its
    /// errors carry its line and column).
    fn read<'de, A: MapAccess<'de>>(&mut self, key: &'static str, map: &mut A) -> Result<(), A::Error> {
        fn once<'de, T: Deserialize<'de>, A: MapAccess<'de>>(
            slot: &mut Option<T>,
            key: &'static str,
            map: &mut A,
        ) -> Result<(), A::Error> {
            if slot.is_some() {
                return Err(de::Error::duplicate_field(key));
            }
            *slot = Some(map.next_value()?);
            Ok(())
        }
        match key {
            "kind" => map.next_value::<de::IgnoredAny>().map(|_| ()),
            "name" => once(&mut self.name, key, map),
            "wasm" => once(&mut self.wasm, key, map),
            "image" => once(&mut self.image, key, map),
            "replicas" => once(&mut self.replicas, key, map),
            "resources" => once(&mut self.resources, key, map),
            "strategy" => once(&mut self.strategy, key, map),
            "autoscale" => once(&mut self.autoscale, key, map),
            "namespace" => once(&mut self.namespace, key, map),
            _ => once(&mut self.scale_to_zero, key, map),
        }
    }
}

/// The document's mapping as the template's `Deserialize` sees it: the template
/// keys with their values read in place, the own keys taken aside, and at the
/// end the two fields the manifest spells differently.
struct Template<'a, A> {
    map: &'a mut A,
    own: &'a mut Own,
    /// How many of [`SPEC_FIELDS_NOT_KEYS`] were handed over.
    tail: usize,
    /// The value of the last one handed over, until it is read.
    tail_value: Option<serde_json::Value>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Template<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        while let Some(key) = self.map.next_key_seed(KeySeed)? {
            match key {
                Key::Own(k) => self.own.read(k, self.map)?,
                Key::Spec(k) => return seed.deserialize(k.into_deserializer()).map(Some),
            }
        }
        let Some(&field) = SPEC_FIELDS_NOT_KEYS.get(self.tail) else { return Ok(None) };
        self.tail += 1;
        // A placeholder when neither or both of wasm and image are set: the
        // check after reading says which.
        let value = match field {
            "workload" => match (&self.own.wasm, &self.own.image) {
                (None, Some(image)) => serde_json::to_value(Workload::Image(image.clone())),
                (wasm, _) => serde_json::to_value(Workload::Wasm(wasm.clone().unwrap_or_default())),
            },
            _ => {
                let r = self.own.resources.clone().unwrap_or_default();
                serde_json::to_value(Resources { cpu: r.cpu, memory: r.memory })
            }
        };
        self.tail_value = Some(value.map_err(de::Error::custom)?);
        seed.deserialize(field.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        match self.tail_value.take() {
            Some(value) => seed.deserialize(value).map_err(de::Error::custom),
            None => self.map.next_value_seed(seed),
        }
    }
}

impl<'de, A: MapAccess<'de>> Deserializer<'de> for Template<'_, A> {
    type Error = A::Error;
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, A::Error> {
        visitor.visit_map(self)
    }
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

struct DocumentVisitor;

impl<'de> Visitor<'de> for DocumentVisitor {
    type Value = (ManifestDeployment, [bool; 2]);
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a deployment: a mapping with name and wasm or image")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut own = Own::default();
        let spec = WorkloadSpec::deserialize(Template { map: &mut map, own: &mut own, tail: 0, tail_value: None })?;
        let name = own.name.ok_or_else(|| de::Error::missing_field("name"))?;
        let workloads = [own.wasm.is_some(), own.image.is_some()];
        let d = ManifestDeployment {
            name,
            replicas: own.replicas,
            strategy: own.strategy.unwrap_or_default(),
            autoscale: own.autoscale,
            scale_to_zero: own.scale_to_zero,
            namespace: own.namespace,
            spec,
        };
        Ok((d, workloads))
    }
}

/// A document as read, before the rules: the deployment, and
/// which of wasm and image it set.
struct Document((ManifestDeployment, [bool; 2]));

impl<'de> Deserialize<'de> for Document {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(DocumentVisitor).map(Document)
    }
}

/// A manifest that could not be read, with where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ManifestError {
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl ManifestError {
    fn render(&self) -> String {
        match (self.line, self.column) {
            (Some(l), Some(c)) => format!("line {l} column {c}: {}", self.message),
            _ => self.message.clone(),
        }
    }
}

/// The largest manifest read, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;

/// Reads every deployment in a YAML text of one or more documents, and checks
/// each as the server will (`validate::apply`).
pub fn parse_manifest(text: &str) -> Result<Vec<ManifestDeployment>, ManifestError> {
    let objects = parse_objects(text)?;
    let deployments: Vec<ManifestDeployment> = objects
        .into_iter()
        .filter_map(|o| match o {
            ManifestObject::Deployment(d) => Some(d),
            _ => None,
        })
        .collect();
    if deployments.is_empty() {
        return Err(plain("manifest holds no deployment".into()));
    }
    Ok(deployments)
}

/// One document of a manifest, by its `kind` (`deployment` when absent).
#[derive(Debug, Clone, PartialEq)]
pub enum ManifestObject {
    /// `kind: deployment`, or no kind.
    Deployment(ManifestDeployment),
    /// `kind: job`: its name, spec (the workload as in
    /// [`ManifestDeployment::spec`]) and `namespace:` (#20).
    Job(String, crate::job::JobSpec, Option<String>),
    /// `kind: cron`: its name, spec and `namespace:`.
    Cron(String, crate::job::CronSpec, Option<String>),
}

/// The kind a document names, read before the document itself.
#[derive(Deserialize)]
struct KindOnly {
    #[serde(default)]
    kind: Option<String>,
}

/// Reads every object (deployments, jobs, crons) of a YAML text of one or more
/// documents, and checks each as the server will.
pub fn parse_objects(text: &str) -> Result<Vec<ManifestObject>, ManifestError> {
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(plain(format!(
            "the manifest is {} bytes; at most {MAX_MANIFEST_BYTES} are read (split it into several files)",
            text.len()
        )));
    }
    let mut kinds = Vec::new();
    for doc in serde_norway::Deserializer::from_str(text) {
        match Option::<KindOnly>::deserialize(doc) {
            Ok(k) => kinds.push(k.and_then(|k| k.kind)),
            Err(e) => return Err(relocate(text, yaml_error(e))),
        }
    }
    let mut read = Vec::new();
    let mut others = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let kind = kinds.get(i).cloned().flatten();
        let res = match kind.as_deref() {
            None | Some("deployment") => match Option::<Document>::deserialize(doc) {
                Ok(Some(Document(d))) => {
                    read.push((i, d));
                    Ok(())
                }
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            },
            Some("job") => crate::job::ManifestJob::deserialize(doc).map(|j| others.push(Err(j))),
            Some("cron") => crate::job::ManifestCron::deserialize(doc).map(|c| others.push(Ok(c))),
            Some(other) => {
                return Err(plain(format!("unknown kind {other:?}; a document is a deployment, a job or a cron")));
            }
        };
        if let Err(e) = res {
            return Err(relocate(text, yaml_error(e)));
        }
    }
    if read.is_empty() && others.is_empty() {
        return Err(plain("manifest holds no deployment, job or cron".into()));
    }
    let mut objects = Vec::new();
    let mut seen_jobs = std::collections::BTreeSet::new();
    for o in others {
        let (name, obj) = match o {
            Err(j) => {
                let name = j.name.clone().ok_or_else(|| plain("a job needs a name".into()))?;
                let spec = j.spec().map_err(|e| plain(format!("job {name:?}: {e}")))?;
                crate::job::validate_job(&name, &spec).map_err(|e| plain(format!("job {name:?}: {e}")))?;
                if let Some(ns) = &j.namespace {
                    validate_name(ns).map_err(|e| plain(format!("job {name:?}: namespace {e}")))?;
                }
                let seen = format!("job {}", j.namespace.as_deref().map_or(name.clone(), |ns| format!("{ns}/{name}")));
                (seen, ManifestObject::Job(name, spec, j.namespace))
            }
            Ok(c) => {
                let name = c.name.clone();
                let spec = c.spec().map_err(|e| plain(format!("cron {name:?}: {e}")))?;
                crate::job::validate_cron(&name, &spec).map_err(|e| plain(format!("cron {name:?}: {e}")))?;
                if let Some(ns) = &c.namespace {
                    validate_name(ns).map_err(|e| plain(format!("cron {name:?}: namespace {e}")))?;
                }
                let seen = format!("cron {}", c.namespace.as_deref().map_or(name.clone(), |ns| format!("{ns}/{name}")));
                (seen, ManifestObject::Cron(name, spec, c.namespace))
            }
        };
        if !seen_jobs.insert(name.clone()) {
            return Err(plain(format!("{name} appears twice in the manifest")));
        }
        objects.push(obj);
    }
    let documents = documents(text);
    let mut seen = std::collections::BTreeSet::new();
    let mut deployments = Vec::new();
    for (i, (d, workloads)) in read.into_iter() {
        let name = &d.name;
        match workloads {
            [true, true] => return Err(plain(format!("deployment {name:?}: set either wasm or image, not both"))),
            [false, false] => return Err(plain(format!("deployment {name:?}: set wasm (a .wasm file) or image"))),
            _ => {}
        }
        if let Err(e) = crate::validate::apply(name, &d.request()) {
            let place = e
                .value
                .as_deref()
                .and_then(|v| documents.get(i).and_then(|&(from, to)| find_token(text, v, from, 0, to)));
            return Err(match place {
                Some((line, column)) => ManifestError { line: Some(line), column: Some(column), message: e.message },
                None => plain(format!("deployment {name:?}: {}", e.message)),
            });
        }
        if !seen.insert(name.clone()) {
            return Err(plain(format!("deployment {name:?} appears twice in the manifest")));
        }
        deployments.push(d);
    }
    let mut all: Vec<ManifestObject> = deployments.into_iter().map(ManifestObject::Deployment).collect();
    all.extend(objects);
    Ok(all)
}

/// The lines (0-based, end exclusive) of each document that holds something:
/// documents are split at `---` lines. Used only to point at a refused value,
/// so a document this misjudges (one holding only `null`) costs a line number,
/// never a wrong answer.
fn documents(text: &str) -> Vec<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut bounds = Vec::new();
    let mut start = 0;
    for (i, l) in lines.iter().enumerate() {
        if *l == "---" || l.starts_with("--- ") {
            bounds.push((start, i));
            start = i;
        }
    }
    bounds.push((start, lines.len()));
    let holds = |&(from, to): &(usize, usize)| {
        lines[from..to].iter().any(|l| {
            let l = l.trim_start_matches("---").trim();
            !l.is_empty() && !l.starts_with('#') && l != "..."
        })
    };
    bounds.into_iter().filter(holds).collect()
}

/// Where `value` first stands as a whole token in `text`, from line `from`
/// (0-based) and `column` (0-based, on that line only) up to line `to`: 1-based
/// line and column.
fn find_token(text: &str, value: &str, from: usize, column: usize, to: usize) -> Option<(usize, usize)> {
    // An empty value is found everywhere (and `find("")` never moves on).
    if value.is_empty() {
        return None;
    }
    for (i, line) in text.lines().enumerate().take(to).skip(from) {
        let mut start = if i == from { line.char_indices().nth(column).map_or(line.len(), |(b, _)| b) } else { 0 };
        while let Some(pos) = line[start..].find(value) {
            let at = start + pos;
            let before = line[..at].chars().next_back();
            let after = line[at + value.len()..].chars().next();
            let boundary = |c: Option<char>| c.is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '-'));
            if boundary(before) && boundary(after) {
                return Some((i + 1, line[..at].chars().count() + 1));
            }
            start = at + value.len();
        }
    }
    None
}

/// serde_norway places an error that a type's `Deserialize` raises after
/// reading its value (a quantity or a grace period that does not parse) at
/// the start of the enclosing mapping. Those messages quote the value first
/// (`invalid memory quantity "64m": ...`); this moves the error to it, found
/// as a whole token from where the error was placed. An error already at its
/// value stays there.
fn relocate(text: &str, mut err: ManifestError) -> ManifestError {
    let (Some(line), Some(column)) = (err.line, err.column) else { return err };
    let Some(value) = first_quoted(&err.message) else { return err };
    if let Some((l, c)) = find_token(text, &value, line - 1, column - 1, usize::MAX) {
        err.line = Some(l);
        err.column = Some(c);
    }
    err
}

/// The first string quoted as Rust's `{:?}` quotes it, unescaped (`\"`, `\\`).
fn first_quoted(message: &str) -> Option<String> {
    let rest = &message[message.find('"')? + 1..];
    let mut out = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => out.push(chars.next()?),
            c => out.push(c),
        }
    }
    None
}

fn plain(message: String) -> ManifestError {
    ManifestError { line: None, column: None, message }
}

fn yaml_error(e: serde_norway::Error) -> ManifestError {
    let loc = e.location();
    let mut message = e.to_string();
    // serde_norway appends " at line L column C"; we print the place first instead.
    if let Some(i) = message.find(" at line ") {
        message.truncate(i);
    }
    ManifestError { line: loc.as_ref().map(|l| l.line()), column: loc.as_ref().map(|l| l.column()), message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{Expect, expect};

    fn check(text: &str, expected: Expect) {
        let out = match parse_manifest(text) {
            Ok(ds) => ds
                .iter()
                .map(|d| {
                    let n = d.replicas.map_or("-".to_string(), |n| n.to_string());
                    format!("{} x{n} {}\n", d.name, d.spec.resources)
                })
                .collect(),
            Err(e) => format!("error: {e}"),
        };
        expected.assert_eq(&out);
    }

    #[test]
    fn oversized_and_deeply_nested_input_is_refused_in_one_line() {
        let big = format!("name: a\nwasm: a.wasm\nenv: {{X: \"{}\"}}\n", "x".repeat(MAX_MANIFEST_BYTES));
        let e = parse_manifest(&big).unwrap_err().to_string();
        assert!(e.starts_with("the manifest is 1048") && e.contains("at most 1048576"), "{e}");
        // Nesting where a string is expected: the parser's recursion limit, not a stack overflow.
        let deep = format!("name: a\nwasm: a.wasm\nenv: {{X: {}{}}}\n", "[".repeat(1000), "]".repeat(1000));
        let e = parse_manifest(&deep).unwrap_err().to_string();
        assert!(!e.contains('\n'), "{e}");
        assert!(e.contains("recursion limit") || e.contains("invalid type"), "{e}");

        let mut spec: crate::types::WorkloadSpec = serde_json::from_value(serde_json::json!({
            "workload": { "wasm": "sha256:00" }, "resources": { "cpu": "100m", "memory": "64Mi" },
        }))
        .expect("spec");
        assert_eq!(validate_spec_sizes(&spec), Ok(()));
        spec.args = vec!["a".into(); MAX_SPEC_ENTRIES + 1];
        assert_eq!(validate_spec_sizes(&spec), Err("args has 257 entries; at most 256 are allowed".into()));
        spec.args = vec!["a".repeat(MAX_VALUE_BYTES + 1)];
        assert_eq!(validate_spec_sizes(&spec), Err("argument 1 is 32769 bytes long; at most 32768 are allowed".into()));
        spec.args = vec!["a".repeat(MAX_VALUE_BYTES); 9];
        assert!(validate_spec_sizes(&spec).unwrap_err().starts_with("env, args and constraints hold 294912 bytes"));
    }

    #[test]
    fn an_empty_refused_value_is_located_without_hanging() {
        // Found by fuzz/ (manifest): locating the empty name looped forever.
        for yaml in
            ["name: \nwasm: w.wasm\n", "name: \"\"\nwasm: w.wasm\n", "wasm: w.wasm\nenv: {\"\": x}\nname: \"\"\n"]
        {
            let e = parse_manifest(yaml).expect_err(yaml).to_string();
            assert!(e.contains("must be") && !e.contains('\n'), "{yaml:?}: {e}");
        }
    }

    #[test]
    fn several_documents() {
        check(
            "name: a\nwasm: a.wasm\nreplicas: 3\nresources: {cpu: 250m, memory: 1Gi}\n---\nname: b\nwasm: b.wasm\n---\n",
            expect![[r#"
                a x3 cpu 250m, memory 1Gi
                b x- cpu 100m, memory 64Mi
            "#]],
        );
    }

    #[test]
    fn rebalance_is_read_and_off_by_default() {
        let d = &parse_manifest("name: web\nwasm: web.wasm\nreplicas: 6\nrebalance: true\n").expect("manifest")[0];
        assert!(d.spec.rebalance);
        let d = &parse_manifest("name: web\nwasm: web.wasm\n").expect("manifest")[0];
        assert!(!d.spec.rebalance);
    }

    #[test]
    fn ports_network_and_stop_grace_period() {
        let yaml = "name: web\nimage: web\nports: [{container_port: 80, host_port: 8081}, {container_port: 53, protocol: udp}]\nstop_grace_period: 10s\n";
        let d = &parse_manifest(yaml).expect("manifest")[0];
        assert_eq!(d.spec.ports.len(), 2);
        assert_eq!(d.spec.ports[0].host_port, Some(8081));
        assert_eq!(d.spec.ports[1].protocol, crate::types::Protocol::Udp);
        assert_eq!(d.spec.stop_grace_period, Some(crate::types::GracePeriod(10_000)));
        let host = &parse_manifest(
            "name: h\nimage: h\nnetwork: host\nports: [{container_port: 8080}]\nstop_grace_period: 1500ms\n",
        )
        .expect("manifest")[0];
        assert_eq!(host.spec.network, crate::types::NetworkMode::Host);
        assert_eq!(host.spec.stop_grace_period.map(|g| g.to_string()).as_deref(), Some("1500ms"));
        check(
            "name: w\nimage: w\nstop_grace_period: 11m\n",
            expect![[r#"error: line 3 column 20: stop grace period "11m" is too long; at most 10m"#]],
        );
        check(
            "name: w\nimage: w\nstop_grace_period: 5h\n",
            expect![[r#"error: line 3 column 20: invalid stop grace period "5h": unknown unit "h"; use ms, s or m"#]],
        );
        check(
            "name: w\nimage: w\nports: [{container_port: 80, host_port: 8081}, {container_port: 81, host_port: 8081}]\n",
            expect![[r#"error: deployment "w": host port 8081 is given twice"#]],
        );
        check(
            "name: w\nimage: w\nnetwork: host\nports: [{container_port: 80, host_port: 8081}]\n",
            expect![[
                r#"error: deployment "w": with network: host the container's port 80 is the node's port; drop host_port 8081 or make them equal"#
            ]],
        );
        check(
            "name: w\nwasm: w.wasm\nports: [{container_port: 80}]\n",
            expect![[r#"error: deployment "w": ports and network: host are for images; a Wasm workload has neither"#]],
        );
    }

    #[test]
    fn http_port_is_for_images() {
        let ok = parse_manifest("name: web\nimage: localhost:5000/web:1\nhttp_port: 8080\n").expect("manifest");
        assert_eq!(ok[0].spec.http_port, Some(8080));
        let err = parse_manifest("name: web\nwasm: web.wasm\nhttp_port: 8080\n").expect_err("wasm with a port");
        assert!(err.to_string().contains("http_port is for images"), "{err}");
        let err = parse_manifest("name: web\nimage: web\nhttp_port: 0\n").expect_err("port 0");
        assert!(err.to_string().contains("http_port must be 1-65535"), "{err}");
    }

    #[test]
    fn allowed_hosts_are_hosts() {
        for ok in ["api.example.com", "*.example.com", "10.0.0.5:8080", "localhost"] {
            assert_eq!(validate_allowed_host(ok), Ok(()), "{ok}");
        }
        for bad in ["http://api.example.com", "api.example.com/x", "a..b", "", "*.", "host:0", "host:http", "-a.com"] {
            assert!(validate_allowed_host(bad).is_err(), "{bad}");
        }
        assert_eq!(
            validate_allowed_host("https://x.io").unwrap_err(),
            r#"allowed host "https://x.io" has a scheme or a path; write a host such as api.example.com[:8080]"#
        );
    }

    #[test]
    fn validation_messages() {
        check(
            "name: a\nwasm: a.wasm\nreplica: 3\n",
            expect![
                "error: line 3 column 1: unknown field `replica`, expected one of `name`, `wasm`, `image`, `replicas`, `resources`, `strategy`, `autoscale`, `scale_to_zero`, `namespace`, `env`, `args`, `restart`, `constraints`, `secrets`, `allowed_hosts`, `volumes`, `probes`, `http_port`, `ports`, `network`, `stop_grace_period`, `volume_lease`, `rebalance`"
            ],
        );
        check(
            "name: a\nwasm: a.wasm\nvolumes: [{name: d, path: /d, read_only: true}]\nvolume_lease: true\n",
            expect![[r#"error: deployment "a": volume_lease needs a volume mounted read-write"#]],
        );
        check(
            "name: a\nwasm: a.wasm\nvolumes: [{name: d, path: /d}]\nrebalance: true\n",
            expect![[
                r#"error: deployment "a": rebalance moves replicas between nodes, but volume d keeps them on its node; drop rebalance or the volume"#
            ]],
        );
        check(
            "name: Bad_Name\nwasm: a.wasm\n",
            expect![[
                r#"error: line 1 column 7: name "Bad_Name" must use only lowercase letters, digits and '-', and start and end with a letter or digit"#
            ]],
        );
        check(
            "name: a\nwasm: a.wasm\nresources:\n  memory: 64m\n",
            expect![[
                r#"error: line 4 column 11: resources: invalid memory quantity "64m": `m` means thousandths; did you mean Mi (mebibytes)?"#
            ]],
        );
        check(
            "name: a\nwasm: a.wasm\nreplicas: -1\n",
            expect!["error: line 3 column 11: replicas: invalid type: integer `-1`, expected u32"],
        );
        check(
            "name: a\nwasm: a.wasm\nrestart: sometimes\n",
            expect![
                "error: line 3 column 10: restart: unknown variant `sometimes`, expected one of `always`, `on-failure`, `never`"
            ],
        );
        // An unclosed sequence is a syntax error, found before the type of
        // `wasm` (documents are read whole since manifests hold kinds).
        check("name: a\nwasm: [a\n", expect!["error: line 3 column 1: did not find expected ',' or ']'"]);
        check(
            "name: a\nwasm: [a]\n",
            expect!["error: line 2 column 7: wasm: invalid type: sequence, expected a string"],
        );
        check("name: a\nwasm: x\nenv: {A: 1\n", expect!["error: line 4 column 1: did not find expected ',' or '}'"]);
        check(
            "name: web\nwasm: w.wasm\nreplicas: lots\n",
            expect![[r#"error: line 3 column 11: replicas: invalid type: string "lots", expected u32"#]],
        );
        check("name: a\n", expect![[r#"error: deployment "a": set wasm (a .wasm file) or image"#]]);
        check(
            "name: a\nwasm: x\n---\nname: a\nwasm: y\n",
            expect![[r#"error: deployment "a" appears twice in the manifest"#]],
        );
        check("", expect!["error: manifest holds no deployment, job or cron"]);
        check(
            "name: a\nwasm: x\nenv: {1X: y}\n",
            expect![[
                r#"error: line 3 column 7: environment variable name "1X" must be letters, digits and '_', not starting with a digit"#
            ]],
        );
        check(
            "name: a\nwasm: x\nreplicas: 1000000\n",
            expect!["error: line 3 column 11: replicas must be at most 100000, got 1000000"],
        );
    }

    #[test]
    fn an_apply_is_held_to_the_manifest_rules() {
        // Before validate.rs, only parse_manifest knew these; an API client could
        // store http_port 0, or a port or a grace period on a Wasm workload.
        let req = |spec: serde_json::Value| -> crate::types::ApplyRequest {
            serde_json::from_value(serde_json::json!({ "spec": spec })).expect("apply")
        };
        let res = serde_json::json!({ "cpu": "100m", "memory": "64Mi" });
        let image = req(serde_json::json!({ "workload": { "image": "web" }, "resources": res, "http_port": 0 }));
        assert_eq!(validate_apply("web", &image), Err("http_port must be 1-65535".into()));
        let wasm = req(serde_json::json!({ "workload": { "wasm": "sha256:00" }, "resources": res, "http_port": 80 }));
        assert!(validate_apply("web", &wasm).unwrap_err().contains("http_port is for images"));
        let grace = req(
            serde_json::json!({ "workload": { "wasm": "sha256:00" }, "resources": res, "stop_grace_period": "3s" }),
        );
        assert!(validate_apply("web", &grace).unwrap_err().contains("stop_grace_period is for images"));
        // And a manifest's document is the same spec: env values are text, any
        // spec field is a key.
        let d = &parse_manifest("name: a\nimage: a\nenv: {N: 1, B: true}\nhttp_port: 80\nargs: [x]\n")
            .expect("manifest")[0];
        assert_eq!(d.spec.env.get("N").map(String::as_str), Some("1"));
        assert_eq!(d.spec.env.get("B").map(String::as_str), Some("true"));
        assert_eq!((d.spec.http_port, d.spec.args.as_slice()), (Some(80), ["x".to_string()].as_slice()));
        assert_eq!(d.spec.workload, crate::types::Workload::Image("a".into()));
        check(
            "name: a\nwasm: a.wasm\nallowed_hosts: [ok.example.com, \"http://x\"]\n",
            expect![[
                r#"error: line 3 column 34: allowed host "http://x" has a scheme or a path; write a host such as api.example.com[:8080]"#
            ]],
        );
    }
}
