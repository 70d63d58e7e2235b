//! Stages, stage variables and stage selection.
//!
//! A [`Stage`] is a named deployment target (`prod`, `beta`) with [`StageVariables`]: a small
//! map of configuration values that reach handlers and can be substituted into strings such as
//! upstream URLs (`https://${stageVariables.backend}/pets`).
//!
//! Names and values follow API Gateway's rules, checked when the stage is built:
//! a stage name is 1–128 characters of letters, digits, `-` and `_`; a variable name is 1–64
//! characters of letters, digits and `_`; a value is at most 512 characters of
//! `A-Za-z0-9-._~:/?#&=,`; a stage has at most 100 variables. Stage variables are not for
//! secrets: they are visible to every handler and may appear in logs.
//!
//! [`StageSelection`] says how a request finds its stage: one [fixed](StageSelection::Fixed)
//! stage; the [first path segment](StageSelection::BasePath) (`/prod/pets` → stage `prod`, and
//! the inner service sees `/pets`); or [host plus base path](StageSelection::Domains) as custom
//! domains do (`api.example.com/v2/pets` → stage `prod`, inner path `/pets`). A request whose
//! stage is unknown gets 403 `MISSING_AUTHENTICATION_TOKEN`, as from API Gateway, unless a
//! default stage is set: then it is served by the default stage with its path unchanged.
//! The path as received stays available as [`RequestContext::path`].
//!
//! # Example
//!
//! ```
//! use tower_gateway::stage::{Stage, StageLayer, StageSelection};
//!
//! let prod = Stage::builder("prod")
//!     .variable("backend", "pets-v1.internal:8080")
//!     .build()
//!     .expect("valid stage");
//! assert_eq!(
//!     prod.variables().substitute("http://${stageVariables.backend}/pets").unwrap(),
//!     "http://pets-v1.internal:8080/pets"
//! );
//!
//! // À la carte: `/prod/...` is served with the `prod` stage; anything else gets a 403.
//! let layer = StageLayer::builder()
//!     .stage(prod)
//!     .selection(StageSelection::BasePath)
//!     .build()
//!     .expect("valid stage layer");
//! # let _ = layer;
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::HeaderName;
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response};
use serde::{Deserialize, Serialize};
use tower_layer::Layer;
use tower_service::Service;

use crate::arena;
use crate::body::GatewayBody;
use crate::cache::CacheSettings;
use crate::canary::{CanarySettings, CompiledCanary, Release};
use crate::context::{Decided, RequestContext, host_without_port};
use crate::error::{ConfigError, is_identifier};
use crate::future::{ResponseFuture, run_step};
use crate::response::{GatewayError, GatewayResponseType, GatewayResponses};
use crate::route::ThrottleSettings;
use crate::usage_plan::validate_throttle;

const MAX_STAGE_NAME: usize = 128;
const MAX_VARIABLE_NAME: usize = 64;
const MAX_VARIABLE_VALUE: usize = 512;
const MAX_VARIABLES: usize = 100;

/// A named stage with its variables. Cheap to clone.
#[derive(Clone, PartialEq)]
pub struct Stage {
    inner: Arc<StageInner>,
}

#[derive(PartialEq)]
struct StageInner {
    name: Box<str>,
    variables: StageVariables,
    throttle: Option<ThrottleSettings>,
    cache: Option<CacheSettings>,
    canary: Option<Arc<CompiledCanary>>,
}

impl Stage {
    /// Starts a stage called `name`; [`StageBuilder::build`] checks the name and variables.
    pub fn builder(name: impl Into<String>) -> StageBuilder {
        StageBuilder {
            name: name.into(),
            variables: Vec::new(),
            throttle: None,
            cache: None,
            canary: None,
        }
    }

    /// The stage's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Tells this stage apart from others while it lives: clones share it.
    #[cfg(feature = "metrics")]
    pub(crate) fn identity(&self) -> usize {
        Arc::as_ptr(&self.inner) as usize
    }

    /// The stage's variables.
    pub fn variables(&self) -> &StageVariables {
        &self.inner.variables
    }

    /// The stage's default throttle, shared by every client of the stage.
    pub fn throttle(&self) -> Option<&ThrottleSettings> {
        self.inner.throttle.as_ref()
    }

    /// The stage's response-cache settings, when it has a cache.
    pub fn cache(&self) -> Option<&CacheSettings> {
        self.inner.cache.as_ref()
    }

    /// The stage's [canary](crate::canary), when it has one.
    pub fn canary(&self) -> Option<&CanarySettings> {
        self.inner.canary.as_ref().map(|canary| &canary.settings)
    }

    pub(crate) fn compiled_canary(&self) -> Option<&CompiledCanary> {
        self.inner.canary.as_deref()
    }

    /// The stage as its canary's promotion leaves it: the overridden variables become its
    /// own, and the canary keeps its other settings with no traffic and no overrides.
    pub(crate) fn promoted(&self) -> Result<Stage, ConfigError> {
        let Some(canary) = &self.inner.canary else {
            return Ok(self.clone());
        };
        let mut settings = canary.settings.clone();
        settings.percent_traffic = 0.0;
        settings.stage_variable_overrides.clear();
        self.rebuilt(
            canary.variables.as_ref().unwrap_or(self.variables()),
            Some(settings),
        )
    }

    /// Whether the stage's canary would change anything when promoted: it has a share of the
    /// traffic or overrides.
    pub(crate) fn has_live_canary(&self) -> bool {
        self.canary().is_some_and(|canary| {
            canary.percent_traffic > 0.0 || !canary.stage_variable_overrides.is_empty()
        })
    }

    /// The stage with `canary`'s settings in place of its canary's, keeping its own variable
    /// overrides.
    pub(crate) fn with_canary_settings(
        &self,
        canary: &CanarySettings,
    ) -> Result<Stage, ConfigError> {
        let mut settings = canary.clone();
        settings.stage_variable_overrides = self
            .canary()
            .map(|own| own.stage_variable_overrides.clone())
            .unwrap_or_default();
        self.rebuilt(self.variables(), Some(settings))
    }

    fn rebuilt(
        &self,
        variables: &StageVariables,
        canary: Option<CanarySettings>,
    ) -> Result<Stage, ConfigError> {
        let mut builder = Stage::builder(self.name()).variables(variables.iter());
        builder.throttle = self.inner.throttle;
        builder.cache = self.inner.cache.clone();
        builder.canary = canary;
        builder.build()
    }

    /// Whether `other` is this very stage (not merely an equal one).
    pub(crate) fn is(&self, other: &Stage) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl fmt::Debug for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stage")
            .field("name", &self.name())
            .field("variables", self.variables())
            .finish()
    }
}

/// Builds a [`Stage`].
#[derive(Debug, Clone)]
#[must_use]
pub struct StageBuilder {
    name: String,
    variables: Vec<(String, String)>,
    throttle: Option<ThrottleSettings>,
    cache: Option<CacheSettings>,
    canary: Option<CanarySettings>,
}

impl StageBuilder {
    /// Adds a stage variable; a second value for the same name is a [`ConfigError`].
    pub fn variable(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.variables.push((name.into(), value.into()));
        self
    }

    /// Adds several stage variables.
    pub fn variables<I, K, V>(mut self, variables: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.variables
            .extend(variables.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// The stage's default throttle (API Gateway's stage-level `throttlingRateLimit` and
    /// `throttlingBurstLimit`), shared by every client; a route's
    /// [`throttle`](crate::Route::throttle) replaces it for that route.
    pub fn throttle(mut self, throttle: ThrottleSettings) -> Self {
        self.throttle = Some(throttle);
        self
    }

    /// Gives the stage a [response cache](crate::cache).
    pub fn cache(mut self, cache: CacheSettings) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Gives the stage a [canary](crate::canary): a share of its requests served by the canary
    /// release. Its variable overrides must name variables of the stage.
    pub fn canary(mut self, canary: CanarySettings) -> Self {
        self.canary = Some(canary);
        self
    }

    /// Checks the name, the variables, the throttle, the cache and the canary settings.
    pub fn build(self) -> Result<Stage, ConfigError> {
        validate_stage_name(&self.name)?;
        let field = format!("stages[{}]", self.name);
        let variables = StageVariables::from_pairs(self.variables).map_err(|e| e.within(&field))?;
        if let Some(throttle) = &self.throttle {
            validate_throttle(&format!("{field}.throttle"), throttle)?;
        }
        if let Some(cache) = &self.cache {
            cache.validate(&format!("{field}.cache"))?;
        }
        let canary = self
            .canary
            .map(|canary| canary.compile(&format!("{field}.canary"), Some(&variables)))
            .transpose()?
            .map(Arc::new);
        Ok(Stage {
            inner: Arc::new(StageInner {
                name: self.name.into_boxed_str(),
                variables,
                throttle: self.throttle,
                cache: self.cache,
                canary,
            }),
        })
    }
}

pub(crate) fn validate_stage_name(name: &str) -> Result<(), ConfigError> {
    let valid = is_identifier(name, MAX_STAGE_NAME);
    if valid {
        Ok(())
    } else {
        Err(ConfigError::new(
            format!("stages[{}].name", name.escape_debug()),
            "a stage name is 1–128 characters of letters, digits, `-` and `_`",
        ))
    }
}

/// A stage's variables: names to values. Cheap to clone.
///
/// Reach them from a handler with the axum extractor (feature `axum`), or from any request
/// that went through the gateway with
/// `request.extensions().get::<RequestContext>().map(RequestContext::stage_variables)`, which
/// works for hyper's `http::Request` and tonic's `tonic::Request` alike.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StageVariables {
    variables: Arc<BTreeMap<Box<str>, Box<str>>>,
}

impl StageVariables {
    pub(crate) fn from_pairs(pairs: Vec<(String, String)>) -> Result<Self, ConfigError> {
        if pairs.len() > MAX_VARIABLES {
            return Err(ConfigError::new(
                "variables",
                format!("a stage has at most {MAX_VARIABLES} variables"),
            ));
        }
        let mut variables = BTreeMap::new();
        for (name, value) in pairs {
            let field = format!("variables[{}]", name.escape_debug());
            let name_ok = !name.is_empty()
                && name.len() <= MAX_VARIABLE_NAME
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !name_ok {
                return Err(ConfigError::new(
                    field,
                    "a variable name is 1–64 characters of letters, digits and `_`",
                ));
            }
            let value_ok = value.len() <= MAX_VARIABLE_VALUE
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~:/?#&=,".contains(&b));
            if !value_ok {
                return Err(ConfigError::new(
                    field,
                    "a value is at most 512 characters of `A-Za-z0-9-._~:/?#&=,`",
                ));
            }
            if variables
                .insert(name.into_boxed_str(), value.into_boxed_str())
                .is_some()
            {
                return Err(ConfigError::new(field, "the variable is defined twice"));
            }
        }
        Ok(Self {
            variables: Arc::new(variables),
        })
    }

    /// The value of `name`, if the stage defines it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.variables.get(name).map(|v| &**v)
    }

    /// The variables in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.variables.iter().map(|(k, v)| (&**k, &**v))
    }

    /// How many variables there are.
    pub fn len(&self) -> usize {
        self.variables.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.variables.is_empty()
    }

    /// Replaces every `${stageVariables.name}` in `template` with the variable's value.
    ///
    /// A name the stage does not define, or a reference that is not closed, is an error that
    /// names it; nothing else in the template is touched.
    pub fn substitute(&self, template: &str) -> Result<String, SubstitutionError> {
        const OPEN: &str = "${stageVariables.";
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(start) = rest.find(OPEN) {
            out.push_str(&rest[..start]);
            let after = &rest[start + OPEN.len()..];
            let end = after
                .find('}')
                .ok_or_else(|| SubstitutionError::Unterminated {
                    at: template.len() - rest.len() + start,
                })?;
            let name = &after[..end];
            let value = self
                .get(name)
                .ok_or_else(|| SubstitutionError::UnknownVariable(name.to_owned()))?;
            out.push_str(value);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

impl fmt::Debug for StageVariables {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for StageVariables {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

/// Why [`StageVariables::substitute`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubstitutionError {
    /// The template names a variable the stage does not define.
    UnknownVariable(String),
    /// A `${stageVariables.` at this byte offset has no closing `}`.
    Unterminated {
        /// Byte offset of the reference in the template.
        at: usize,
    },
}

impl fmt::Display for SubstitutionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownVariable(name) => {
                write!(f, "stage variable `{name}` is not defined on this stage")
            }
            Self::Unterminated { at } => {
                write!(f, "`${{stageVariables.` at byte {at} has no closing `}}`")
            }
        }
    }
}

impl std::error::Error for SubstitutionError {}

/// How a request finds its stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum StageSelection {
    /// Every request is served by this stage; paths are not changed.
    Fixed {
        /// The stage's name.
        stage: String,
    },
    /// The first path segment names the stage (`/prod/pets` → `prod`) and is removed before
    /// the request goes on (`/pets`).
    BasePath,
    /// Custom domains: the host and a base path select the stage; the base path is removed.
    Domains {
        /// The mappings; the longest base path that matches wins.
        mappings: Vec<BasePathMapping>,
    },
}

/// One custom-domain mapping: requests to `domain` whose path starts with `base_path` go to
/// `stage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasePathMapping {
    /// The host name, e.g. `api.example.com` (compared case-insensitively, port ignored).
    pub domain: String,
    /// The base path without leading or trailing `/`, e.g. `v2` or `api-two/v2`; empty maps
    /// the whole domain.
    #[serde(default)]
    pub base_path: String,
    /// The stage's name.
    pub stage: String,
}

impl BasePathMapping {
    /// A mapping of `domain` + `base_path` to `stage`.
    pub fn new(
        domain: impl Into<String>,
        base_path: impl Into<String>,
        stage: impl Into<String>,
    ) -> Self {
        Self {
            domain: domain.into(),
            base_path: base_path.into(),
            stage: stage.into(),
        }
    }
}

/// The compiled stage selection shared by [`StageLayer`] and the gateway.
#[derive(Debug)]
pub(crate) struct StageSelector {
    mode: Mode,
    default_stage: Option<Stage>,
    /// Where API keys are, for canaries sticky by API key.
    key_header: HeaderName,
}

#[derive(Debug)]
enum Mode {
    Fixed(Stage),
    /// Linear scan: stages are few, and comparing a handful of short names is cheaper than
    /// hashing one.
    BasePath(Vec<Stage>),
    /// Lower-case domain → (base path segments joined by `/`, stage), longest base path first;
    /// scanned like base paths, for the same reason.
    Domains(Vec<(Box<str>, BasePaths)>),
}

/// A domain's base paths (segments joined by `/`) with their stages, longest first.
type BasePaths = Vec<(Box<str>, Stage)>;

/// What stage selection decided for one request.
pub(crate) struct Selected {
    pub(crate) stage: Stage,
    /// How many leading bytes of the path (the base path) the inner service does not see.
    pub(crate) strip: Option<usize>,
}

impl StageSelector {
    pub(crate) fn new(
        stages: Vec<Stage>,
        selection: StageSelection,
        default_stage: Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut by_name: HashMap<Box<str>, Stage> = HashMap::with_capacity(stages.len());
        for stage in stages {
            let name: Box<str> = stage.name().into();
            if by_name.insert(name, stage.clone()).is_some() {
                return Err(ConfigError::new(
                    format!("stages[{}]", stage.name()),
                    "two stages have this name",
                ));
            }
        }
        let lookup = |field: &str, name: &str| {
            by_name.get(name).cloned().ok_or_else(|| {
                ConfigError::new(field, format!("no stage named `{name}` is declared"))
            })
        };
        let default_stage = default_stage
            .map(|name| lookup("default_stage", &name))
            .transpose()?;
        if default_stage.is_some() && matches!(selection, StageSelection::Fixed { .. }) {
            return Err(ConfigError::new(
                "default_stage",
                "a fixed stage serves every request, so a default stage would never apply",
            ));
        }
        let mode = match selection {
            StageSelection::Fixed { stage } => {
                Mode::Fixed(lookup("stage_selection.stage", &stage)?)
            }
            StageSelection::BasePath => {
                if by_name.is_empty() {
                    return Err(ConfigError::new("stages", "declare at least one stage"));
                }
                Mode::BasePath(by_name.into_values().collect())
            }
            StageSelection::Domains { mappings } => {
                if mappings.is_empty() {
                    return Err(ConfigError::new(
                        "stage_selection.mappings",
                        "declare at least one base path mapping",
                    ));
                }
                let mut domains: HashMap<Box<str>, BasePaths> = HashMap::new();
                for mapping in mappings {
                    let field = format!(
                        "stage_selection.mappings[{}/{}]",
                        mapping.domain.escape_debug(),
                        mapping.base_path.escape_debug()
                    );
                    let domain = mapping.domain.to_ascii_lowercase();
                    let domain_ok = !domain.is_empty()
                        && domain.len() <= 253
                        && domain
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
                    if !domain_ok {
                        return Err(ConfigError::new(
                            field,
                            "a domain is a host name of letters, digits, `-` and `.`",
                        ));
                    }
                    let base_path = mapping.base_path.trim_matches('/');
                    let base_ok = base_path.split('/').all(|segment| {
                        segment
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
                            && (base_path.is_empty() || !segment.is_empty())
                    });
                    if !base_ok {
                        return Err(ConfigError::new(
                            field,
                            "a base path is `/`-separated segments of letters, digits and `-._~`",
                        ));
                    }
                    let stage = lookup(&format!("{field}.stage"), &mapping.stage)?;
                    let entries = domains.entry(domain.into_boxed_str()).or_default();
                    if entries.iter().any(|(existing, _)| &**existing == base_path) {
                        return Err(ConfigError::new(
                            field,
                            "this domain and base path are mapped twice",
                        ));
                    }
                    entries.push((base_path.into(), stage));
                }
                for entries in domains.values_mut() {
                    entries.sort_by_key(|(base, _)| std::cmp::Reverse(base.len()));
                }
                Mode::Domains(domains.into_iter().collect())
            }
        };
        Ok(Self {
            mode,
            default_stage,
            key_header: HeaderName::from_static(crate::api_key::DEFAULT_HEADER),
        })
    }

    /// Canaries sticky by API key read it from `name`.
    pub(crate) fn with_key_header(mut self, name: HeaderName) -> Self {
        self.key_header = name;
        self
    }

    /// The release the request's stage's canary picks, without touching the request; `None`
    /// when its stage has no canary (or it has no stage).
    pub(crate) fn pick_release<B>(&self, request: &Request<B>) -> Option<Release> {
        let selected = self.select(request.uri(), || host_of(request))?;
        let canary = selected.stage.compiled_canary()?;
        Some(canary.picker.pick(request.headers(), &self.key_header))
    }

    /// Picks the stage for a request; `None` when no stage matches and there is no default.
    /// `host` is only asked for when the selection depends on it.
    #[inline]
    pub(crate) fn select<'h>(
        &self,
        uri: &Uri,
        host: impl FnOnce() -> Option<&'h str>,
    ) -> Option<Selected> {
        let path = uri.path();
        let found = match &self.mode {
            Mode::Fixed(stage) => Some((stage, None)),
            Mode::BasePath(stages) => {
                let (first, _) = split_first_segment(path);
                stages
                    .iter()
                    .find(|stage| stage.name() == first)
                    .map(|stage| (stage, Some(1 + first.len())))
            }
            Mode::Domains(domains) => host()
                .and_then(|host| {
                    let host = host_without_port(host);
                    domains
                        .iter()
                        .find(|(domain, _)| domain.eq_ignore_ascii_case(host))
                        .map(|(_, entries)| entries)
                })
                .and_then(|entries| {
                    entries.iter().find_map(|(base, stage)| {
                        base_path_length(path, base).map(|strip| (stage, Some(strip)))
                    })
                }),
        };
        match found {
            Some((stage, strip)) => Some(Selected {
                stage: stage.clone(),
                strip,
            }),
            None => self.default_stage.as_ref().map(|stage| Selected {
                stage: stage.clone(),
                strip: None,
            }),
        }
    }

    /// Selects the stage for `request`, rewrites its path and picks the release when the stage
    /// has a canary (unless `forced`), without a context: the gateway decides before it
    /// creates the request's context, which then starts with the decision in it.
    #[inline]
    pub(crate) fn decide<B>(
        &self,
        request: &mut Request<B>,
        forced: Option<Release>,
        decided: &mut Decided,
    ) -> Result<(), GatewayError> {
        let missing = || GatewayError::new(GatewayResponseType::MissingAuthenticationToken);
        let selected = self
            .select(request.uri(), || host_of(request))
            .ok_or_else(missing)?;
        let picked = selected.stage.compiled_canary().map(|canary| {
            forced.unwrap_or_else(|| canary.picker.pick(request.headers(), &self.key_header))
        });
        if let Some(strip) = selected.strip {
            let rewritten = strip_path(request.uri(), strip).ok_or_else(missing)?;
            decided.original_uri = Some(std::mem::replace(request.uri_mut(), rewritten));
        }
        // Written where the context is made from, not returned: a returned value is moved
        // again on its way there.
        decided.stage = Some(selected.stage);
        decided.release = picked.or(forced);
        Ok(())
    }

    /// [`decide`](Self::decide) for a request that already has its context (the stage layer
    /// used on its own), recorded in that context.
    pub(crate) fn apply<B>(
        &self,
        request: &mut Request<B>,
        context: &RequestContext,
        forced: Option<Release>,
    ) -> Result<(), GatewayError> {
        let mut decided = Decided::default();
        self.decide(request, forced, &mut decided)?;
        if let Some(release) = decided.release {
            context.set_release(release);
        }
        if let Some(stage) = decided.stage {
            context.set_stage(stage);
        }
        Ok(())
    }
}

fn host_of<B>(request: &Request<B>) -> Option<&str> {
    request.uri().host().or_else(|| {
        request
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

/// Splits `/first/rest...` into `first` and the remaining path, which always starts with `/`.
#[inline]
pub(crate) fn split_first_segment(path: &str) -> (&str, &str) {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    // A byte loop: stage names are short, and `str::find` sets up a search first.
    match trimmed.bytes().position(|b| b == b'/') {
        Some(slash) => (&trimmed[..slash], &trimmed[slash..]),
        None => (trimmed, "/"),
    }
}

/// The length of `/base` at the start of `path` (`base` has no leading or trailing `/`), if
/// `path` is under it on a segment boundary; 0 for the empty base.
fn base_path_length(path: &str, base: &str) -> Option<usize> {
    if base.is_empty() {
        return Some(0);
    }
    let rest = path.strip_prefix('/')?.strip_prefix(base)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(1 + base.len())
}

/// `uri` with the first `strip` bytes of its path removed, the query kept.
#[inline]
fn strip_path(uri: &Uri, strip: usize) -> Option<Uri> {
    let path_and_query = uri.path_and_query().map_or("/", PathAndQuery::as_str);
    // What follows the base path is the rest of the path and the query, in one piece; only a
    // path that is nothing but the base path needs its `/` put back.
    let rest = path_and_query.get(strip..)?;
    let bytes = if rest.is_empty() || rest.starts_with('?') {
        arena::concat(&[b"/", rest.as_bytes()])
    } else {
        arena::concat(&[rest.as_bytes()])
    };
    let path_and_query = PathAndQuery::from_maybe_shared(bytes).ok()?;
    if uri.scheme().is_none() && uri.authority().is_none() {
        // The origin form of every HTTP/1.1 request: only a path to replace.
        return Some(Uri::from(path_and_query));
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query);
    Uri::from_parts(parts).ok()
}

/// Builds a [`StageLayer`].
#[derive(Debug, Clone)]
#[must_use]
pub struct StageLayerBuilder {
    stages: Vec<Stage>,
    selection: Option<StageSelection>,
    default_stage: Option<String>,
    responses: GatewayResponses,
}

impl StageLayerBuilder {
    /// Declares a stage.
    pub fn stage(mut self, stage: Stage) -> Self {
        self.stages.push(stage);
        self
    }

    /// How requests find their stage. It may be left out when one stage is declared (that
    /// stage is then fixed); with several it is required.
    pub fn selection(mut self, selection: StageSelection) -> Self {
        self.selection = Some(selection);
        self
    }

    /// The stage that serves requests whose stage is unknown, instead of a 403.
    pub fn default_stage(mut self, name: impl Into<String>) -> Self {
        self.default_stage = Some(name.into());
        self
    }

    /// The gateway responses used for rejections.
    pub fn responses(mut self, responses: GatewayResponses) -> Self {
        self.responses = responses;
        self
    }

    /// Checks the stages and the selection.
    pub fn build(self) -> Result<StageLayer, ConfigError> {
        let selection = resolve_selection(self.selection, &self.stages)?;
        Ok(StageLayer {
            shared: Arc::new(StageShared {
                selector: StageSelector::new(self.stages, selection, self.default_stage)?,
                responses: self.responses,
            }),
        })
    }
}

/// The selection used when the builder was given none.
pub(crate) fn resolve_selection(
    selection: Option<StageSelection>,
    stages: &[Stage],
) -> Result<StageSelection, ConfigError> {
    match (selection, stages) {
        (Some(selection), _) => Ok(selection),
        (None, [only]) => Ok(StageSelection::Fixed {
            stage: only.name().to_owned(),
        }),
        (None, []) => Err(ConfigError::new("stages", "declare at least one stage")),
        // Choosing for the user here would change every URL the day a second stage is added.
        (None, _) => Err(ConfigError::new(
            "stage_selection",
            "several stages are declared: say how requests find theirs (base path or domains)",
        )),
    }
}

#[derive(Debug)]
struct StageShared {
    selector: StageSelector,
    responses: GatewayResponses,
}

/// Selects each request's stage, strips the base path, and records the stage (with its
/// variables) in the request's [`RequestContext`]; unknown stages get a gateway response.
pub struct StageLayer {
    shared: Arc<StageShared>,
}

impl StageLayer {
    /// Starts a stage layer.
    pub fn builder() -> StageLayerBuilder {
        StageLayerBuilder {
            stages: Vec::new(),
            selection: None,
            default_stage: None,
            responses: GatewayResponses::default(),
        }
    }
}

impl Clone for StageLayer {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl fmt::Debug for StageLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StageLayer")
            .field("selector", &self.shared.selector)
            .finish()
    }
}

impl<S> Layer<S> for StageLayer {
    type Service = StageService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StageService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service [`StageLayer`] produces.
pub struct StageService<S> {
    inner: S,
    shared: Arc<StageShared>,
}

impl<S: Clone> Clone for StageService<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for StageService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StageService")
            .field("inner", &self.inner)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for StageService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: GatewayBody,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let shared = &*self.shared;
        run_step(
            &mut self.inner,
            &shared.responses,
            request,
            |request, context| shared.selector.apply(request, context, None),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The path the inner service sees: `path` without the selected base path, and `/` when
    /// nothing is left (worked out apart from `strip_path`, to check it).
    fn inner_path<'p>(selected: &Selected, path: &'p str) -> &'p str {
        match selected.strip.map(|strip| path.get(strip..)) {
            None => path,
            Some(Some("") | None) => "/",
            Some(Some(rest)) => rest,
        }
    }

    fn stage(name: &str) -> Stage {
        Stage::builder(name).build().unwrap()
    }

    #[test]
    fn stage_names_follow_api_gateway_rules() {
        for good in ["prod", "beta-2", "v1_internal", &"a".repeat(128)] {
            assert!(Stage::builder(good).build().is_ok(), "{good}");
        }
        for bad in ["", "pr od", "prod/1", "é", &"a".repeat(129)] {
            let error = Stage::builder(bad).build().unwrap_err();
            assert!(error.field().ends_with(".name"), "{error}");
        }
    }

    #[test]
    fn variable_rules() {
        let ok = Stage::builder("prod")
            .variable("backend_url", "https://x.example.com:8443/a?b=c#d&e=f,g~h")
            .variable("empty", "")
            .build()
            .unwrap();
        assert_eq!(ok.variables().len(), 2);

        let bad_name = Stage::builder("prod")
            .variable("my-var", "x")
            .build()
            .unwrap_err();
        assert_eq!(bad_name.field(), "stages[prod].variables[my-var]");
        let long_name = Stage::builder("prod")
            .variable("a".repeat(65), "x")
            .build()
            .unwrap_err();
        assert!(long_name.rule().contains("1–64"));
        let bad_value = Stage::builder("prod")
            .variable("v", "has space")
            .build()
            .unwrap_err();
        assert!(bad_value.rule().contains("512"));
        let long_value = Stage::builder("prod")
            .variable("v", "a".repeat(513))
            .build()
            .unwrap_err();
        assert_eq!(long_value.field(), "stages[prod].variables[v]");
        let duplicate = Stage::builder("prod")
            .variable("v", "1")
            .variable("v", "2")
            .build()
            .unwrap_err();
        assert!(duplicate.rule().contains("twice"));
        let too_many = Stage::builder("prod")
            .variables((0..101).map(|i| (format!("v{i}"), "x")))
            .build()
            .unwrap_err();
        assert_eq!(too_many.field(), "stages[prod].variables");
        let hundred = Stage::builder("prod")
            .variables((0..100).map(|i| (format!("v{i}"), "x")))
            .build();
        assert!(hundred.is_ok());
    }

    #[test]
    fn substitution() {
        let stage = Stage::builder("prod")
            .variable("host", "pets.internal")
            .variable("port", "8080")
            .build()
            .unwrap();
        let vars = stage.variables();
        assert_eq!(
            vars.substitute("http://${stageVariables.host}:${stageVariables.port}/x")
                .unwrap(),
            "http://pets.internal:8080/x"
        );
        assert_eq!(
            vars.substitute("no variables ${other}").unwrap(),
            "no variables ${other}"
        );
        assert_eq!(
            vars.substitute("${stageVariables.nope}").unwrap_err(),
            SubstitutionError::UnknownVariable("nope".into())
        );
        assert_eq!(
            vars.substitute("ab${stageVariables.host").unwrap_err(),
            SubstitutionError::Unterminated { at: 2 }
        );
        assert_eq!(
            SubstitutionError::UnknownVariable("nope".into()).to_string(),
            "stage variable `nope` is not defined on this stage"
        );
    }

    #[test]
    fn base_path_selection_strips_the_stage() {
        let selector = StageSelector::new(
            vec![stage("prod"), stage("beta")],
            StageSelection::BasePath,
            None,
        )
        .unwrap();
        let cases = [
            ("/prod/pets", Some(("prod", "/pets"))),
            ("/prod/pets/1?x=1", Some(("prod", "/pets/1"))),
            ("/beta", Some(("beta", "/"))),
            ("/beta/", Some(("beta", "/"))),
            ("/gamma/pets", None),
            ("/", None),
            ("/production/pets", None),
            ("/%70rod/pets", None),
        ];
        for (path, expected) in cases {
            let uri: Uri = path.parse().unwrap();
            let selected = selector.select(&uri, || None);
            let got = selected
                .as_ref()
                .map(|s| (s.stage.name(), inner_path(s, uri.path())));
            assert_eq!(got, expected, "{path}");
        }
    }

    #[test]
    fn default_stage_keeps_the_path() {
        let selector = StageSelector::new(
            vec![stage("prod"), stage("beta")],
            StageSelection::BasePath,
            Some("prod".into()),
        )
        .unwrap();
        let selected = selector
            .select(&"/other/pets".parse().unwrap(), || None)
            .unwrap();
        assert_eq!(selected.stage.name(), "prod");
        assert!(selected.strip.is_none());
    }

    #[test]
    fn domain_selection_uses_host_and_longest_base_path() {
        let selector = StageSelector::new(
            vec![stage("prod"), stage("beta"), stage("root")],
            StageSelection::Domains {
                mappings: vec![
                    BasePathMapping::new("API.example.com", "v2", "prod"),
                    BasePathMapping::new("api.example.com", "/v2/beta/", "beta"),
                    BasePathMapping::new("api.example.com", "", "root"),
                    BasePathMapping::new("other.example.com", "x", "beta"),
                ],
            },
            None,
        )
        .unwrap();
        let cases = [
            ("api.example.com", "/v2/pets", Some(("prod", "/pets"))),
            ("API.EXAMPLE.COM:443", "/v2", Some(("prod", "/"))),
            ("api.example.com", "/v2/beta/pets", Some(("beta", "/pets"))),
            ("api.example.com", "/v22/pets", Some(("root", "/v22/pets"))),
            ("api.example.com", "/pets", Some(("root", "/pets"))),
            ("other.example.com", "/x/y", Some(("beta", "/y"))),
            ("other.example.com", "/y", None),
            ("unknown.example.com", "/v2/pets", None),
        ];
        for (host, path, expected) in cases {
            let selected = selector.select(&path.parse().unwrap(), || Some(host));
            let got = selected
                .as_ref()
                .map(|s| (s.stage.name(), inner_path(s, path)));
            assert_eq!(got, expected, "{host}{path}");
        }
        assert!(
            selector
                .select(&"/v2/pets".parse().unwrap(), || None)
                .is_none()
        );
    }

    #[test]
    fn selection_config_errors_name_the_item() {
        let unknown_fixed = StageSelector::new(
            vec![stage("prod")],
            StageSelection::Fixed {
                stage: "nope".into(),
            },
            None,
        )
        .unwrap_err();
        assert_eq!(unknown_fixed.field(), "stage_selection.stage");
        let unknown_default = StageSelector::new(
            vec![stage("prod")],
            StageSelection::BasePath,
            Some("x".into()),
        )
        .unwrap_err();
        assert_eq!(unknown_default.field(), "default_stage");
        let duplicate = StageSelector::new(
            vec![stage("prod"), stage("prod")],
            StageSelection::BasePath,
            None,
        )
        .unwrap_err();
        assert_eq!(duplicate.field(), "stages[prod]");
        let bad_domain = StageSelector::new(
            vec![stage("prod")],
            StageSelection::Domains {
                mappings: vec![BasePathMapping::new("bad domain", "", "prod")],
            },
            None,
        )
        .unwrap_err();
        assert!(bad_domain.field().starts_with("stage_selection.mappings["));
        let twice = StageSelector::new(
            vec![stage("prod")],
            StageSelection::Domains {
                mappings: vec![
                    BasePathMapping::new("a.example", "v1", "prod"),
                    BasePathMapping::new("A.example", "/v1", "prod"),
                ],
            },
            None,
        )
        .unwrap_err();
        assert!(twice.rule().contains("twice"));
        let bad_base = StageSelector::new(
            vec![stage("prod")],
            StageSelection::Domains {
                mappings: vec![BasePathMapping::new("a.example", "v1//x", "prod")],
            },
            None,
        )
        .unwrap_err();
        assert!(bad_base.rule().contains("base path"));
    }

    #[test]
    fn host_port_stripping() {
        assert_eq!(host_without_port("a.example:8080"), "a.example");
        assert_eq!(host_without_port("a.example"), "a.example");
        assert_eq!(host_without_port("[::1]:8080"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
        // Not a port: the authority is kept whole, so it matches no domain by accident.
        assert_eq!(host_without_port("a.example:http"), "a.example:http");
    }

    #[test]
    fn contradictory_or_implicit_selection_is_refused() {
        let fixed_with_default = StageSelector::new(
            vec![stage("prod")],
            StageSelection::Fixed {
                stage: "prod".into(),
            },
            Some("prod".into()),
        )
        .unwrap_err();
        assert_eq!(fixed_with_default.field(), "default_stage");
        let implicit = resolve_selection(None, &[stage("prod"), stage("beta")]).unwrap_err();
        assert_eq!(implicit.field(), "stage_selection");
        assert_eq!(
            resolve_selection(None, &[stage("prod")]).unwrap(),
            StageSelection::Fixed {
                stage: "prod".into()
            }
        );
    }

    proptest! {
        #[test]
        fn splitting_never_panics_and_reassembles(path in "/[a-z%/._~-]{0,40}") {
            let (first, rest) = split_first_segment(&path);
            prop_assert!(rest.starts_with('/'));
            prop_assert!(!first.contains('/'));
            let whole = format!("/{first}{rest}");
            let bare = format!("/{first}");
            prop_assert!(whole == path || (rest == "/" && path == bare));
        }

        #[test]
        fn selection_never_panics(
            path in "((/(prod|v1|v2|x|%2F|\\.\\.|\\PC{1,4}){0,5}/?)|\\PC{0,30})(\\?[a-z=&]{0,6})?",
            host in "(A\\.EXAMPLE|a\\.example)(:[0-9]{1,5})?|\\[::1\\](:1)?|\\PC{0,20}",
        ) {
            let selector = StageSelector::new(
                vec![stage("prod")],
                StageSelection::Domains { mappings: vec![
                    BasePathMapping::new("a.example", "v1", "prod"),
                    BasePathMapping::new("a.example", "v1/v2", "prod"),
                ] },
                None,
            ).unwrap();
            let path = if path.starts_with('/') { path } else { format!("/{path}") };
            if let Ok(uri) = path.parse::<Uri>() {
                if let Some(selected) = selector.select(&uri, || Some(&host)) {
                    prop_assert!(inner_path(&selected, uri.path()).starts_with('/'));
                }
                let by_base = StageSelector::new(vec![stage("prod")], StageSelection::BasePath, None).unwrap();
                if let Some(selected) = by_base.select(&uri, || None) {
                    prop_assert!(inner_path(&selected, uri.path()).starts_with('/'));
                    let rewritten = strip_path(&uri, selected.strip.unwrap()).unwrap();
                    prop_assert_eq!(rewritten.path(), inner_path(&selected, uri.path()));
                    prop_assert_eq!(rewritten.query(), uri.query());
                }
            }
        }
    }
}
