//! Deployments: the configurations a running gateway can serve, switched atomically.

use std::collections::VecDeque;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

use super::{GatewayBuilder, GatewayConfig, GatewayShared};
use crate::cache::StageCache;
use crate::error::ConfigError;

/// How many deployments [`Deployments::switch`] and [`Deployments::rollback`] can return to.
const KEPT_DEPLOYMENTS: usize = 32;

/// Identifies a deployment of a gateway: 1 for the configuration it was built with, then one
/// more for each deployment made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeploymentId(pub(crate) u64);

impl DeploymentId {
    /// The number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl From<u64> for DeploymentId {
    fn from(id: u64) -> Self {
        Self(id)
    }
}

impl fmt::Display for DeploymentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What serves requests now.
pub(crate) struct Active {
    pub(crate) baseline: Arc<GatewayShared>,
    /// The canary deployment: it admits the requests its stages' canaries pick.
    pub(crate) canary: Option<Arc<GatewayShared>>,
}

/// The gateway's state behind every clone of it: the active deployments, swapped whole.
pub(crate) struct Live {
    pub(crate) active: ArcSwap<Active>,
    changes: Mutex<Changes>,
}

struct Changes {
    next_id: u64,
    /// Deployments made, oldest first: the configurations to rebuild on a switch.
    made: VecDeque<(DeploymentId, GatewayBuilder)>,
    /// What served before each change (baseline, canary), for rollbacks.
    before: Vec<(DeploymentId, Option<DeploymentId>)>,
}

impl Live {
    pub(crate) fn start(first: GatewayShared) -> Self {
        let id = first.id;
        Self {
            changes: Mutex::new(Changes {
                next_id: id.0 + 1,
                made: VecDeque::from([(id, first.source.clone())]),
                before: Vec::new(),
            }),
            active: ArcSwap::from_pointee(Active {
                baseline: Arc::new(first),
                canary: None,
            }),
        }
    }

    fn changes(&self) -> MutexGuard<'_, Changes> {
        // A change either swaps in its deployments or leaves them; a panic leaves nothing half
        // written.
        self.changes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Changes {
    fn source(&self, id: DeploymentId) -> Result<GatewayBuilder, ConfigError> {
        self.made
            .iter()
            .find(|(made, _)| *made == id)
            .map(|(_, source)| source.clone())
            .ok_or_else(|| {
                ConfigError::new(
                    format!("deployments[{id}]"),
                    "no deployment has this id (or it is older than the last 32)",
                )
            })
    }

    fn record(&mut self, source: GatewayBuilder) -> DeploymentId {
        let id = DeploymentId(self.next_id);
        self.next_id += 1;
        self.made.push_back((id, source));
        if self.made.len() > KEPT_DEPLOYMENTS {
            self.made.pop_front();
            // A rollback to a deployment no longer kept could never be made.
            let made = &self.made;
            let kept = |id: &DeploymentId| made.iter().any(|(made, _)| made == id);
            self.before
                .retain(|(baseline, canary)| kept(baseline) && canary.as_ref().is_none_or(kept));
        }
        id
    }
}

/// Changes what a running [`Gateway`](crate::Gateway) serves: get it from
/// [`Gateway::deployments`](crate::Gateway::deployments). Cheap to clone.
///
/// A deployment is an immutable snapshot of the gateway's configuration (a
/// [`GatewayBuilder`]: stages with their variables and canaries, routes, settings). Every
/// change builds what it activates first and then swaps it in atomically: a request is
/// admitted by one deployment from start to end, requests in flight finish on the one that
/// admitted them, and a change that does not build leaves the running deployment serving and
/// says why. The stage selection of the serving deployment decides which stage a request is
/// for.
///
/// Deployments are gateway-wide: every stage of a gateway is served by the current
/// deployment, and a canary deployment serves the share of each stage's traffic that the
/// stage's canary settings (in the current deployment) pick. API Gateway points each stage at
/// a deployment of its own; give each stage a gateway of its own for that.
///
/// What carries over from one deployment to the next: the usage of each API key in each
/// usage plan (by plan id). A plan with the same keys and quota shares its keys' buckets and
/// counts with the deployment before it (and with a canary deployment), so nothing is lost;
/// otherwise its counts are copied when the new deployment is swapped in (requests the old
/// one admits during the swap itself are not) and its buckets start full, and a canary
/// deployment's plan counts apart from the baseline's. Stage and method throttles start full.
/// Response caches in memory start empty (the new deployment's responses may differ; entries
/// on [Redis](crate::cache#entries-on-redis) stay until flushed or expired), except that a
/// canary deployment shares the caches of stages whose canary sets
/// [`use_stage_cache`](crate::canary::CanarySettings::use_stage_cache), and that rolling back
/// a canary deployment leaves the baseline as it is. Rollbacks and switches rebuild a
/// deployment from its configuration. A canary deployment's stages take their canary
/// settings (release header, cache sharing) from the serving deployment's stages, whose
/// canary picks the requests, and keep their own variable overrides. API keys live in the
/// key store: a key store given to the builders (one [`InMemoryApiKeyStore`] cloned into
/// each) keeps the keys added at runtime; a configuration's `api_keys` are loaded into a new
/// store. The [access log and metrics](crate::observe) are part of a deployment's
/// configuration too: a request is logged and counted as the deployment that admitted it
/// says, so give every deployment's builder the same `access_log` (a canary deployment
/// without one leaves its share of the traffic unlogged).
///
/// [`InMemoryApiKeyStore`]: crate::api_key::InMemoryApiKeyStore
///
/// # Example
///
/// ```
/// use http::Method;
/// use tower_gateway::canary::CanarySettings;
/// use tower_gateway::{GatewayBuilder, Route, Stage};
///
/// let configuration = |greeting: &str| {
///     GatewayBuilder::new()
///         .stage(Stage::builder("prod").variable("greeting", greeting).build().unwrap())
///         .route(Route::new(Method::GET, "/greet"))
/// };
/// let gateway = configuration("hello").build().unwrap();
/// let deployments = gateway.deployments();
///
/// let second = deployments.deploy(configuration("hi")).unwrap();
/// assert_eq!(deployments.current(), second);
/// deployments.rollback().unwrap();
/// assert_eq!(deployments.current().get(), 1);
///
/// // A bad configuration leaves the running deployment serving.
/// let bad = GatewayBuilder::new().route(Route::new(Method::GET, "/greet"));
/// assert!(deployments.deploy(bad).is_err());
/// assert_eq!(deployments.current().get(), 1);
/// ```
#[derive(Clone)]
pub struct Deployments {
    pub(crate) live: Arc<Live>,
}

impl fmt::Debug for Deployments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deployments")
            .field("current", &self.current())
            .field("canary", &self.canary())
            .finish()
    }
}

impl Deployments {
    /// The deployment serving the stages.
    pub fn current(&self) -> DeploymentId {
        self.live.active.load().baseline.id
    }

    /// The canary deployment, when one is running.
    pub fn canary(&self) -> Option<DeploymentId> {
        self.live
            .active
            .load()
            .canary
            .as_ref()
            .map(|canary| canary.id)
    }

    /// Builds `configuration` and serves it instead of the current deployment. A canary
    /// deployment in progress ends; the new configuration's stages say what canaries run.
    pub fn deploy(&self, configuration: GatewayBuilder) -> Result<DeploymentId, ConfigError> {
        let mut changes = self.live.changes();
        let id = DeploymentId(changes.next_id);
        let baseline = {
            let active = self.live.active.load();
            configuration
                .clone()
                .build_deployment(id, Some(&active.baseline), &[], false)?
        };
        changes.record(configuration);
        self.activate(&mut changes, baseline, None, true);
        Ok(id)
    }

    /// Builds `configuration` and deploys it (see [`deploy`](Self::deploy)).
    pub fn deploy_config(&self, configuration: GatewayConfig) -> Result<DeploymentId, ConfigError> {
        self.deploy(GatewayBuilder::from_config(configuration)?)
    }

    /// Reads a declarative configuration (JSON) from `path` and deploys it. A file that cannot
    /// be read or parsed, or does not build, changes nothing.
    pub fn reload(&self, path: impl AsRef<Path>) -> Result<DeploymentId, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|error| {
            ConfigError::new(
                "configuration",
                format!("cannot read {}: {error}", path.display()),
            )
        })?;
        self.deploy_config(GatewayConfig::from_json(&text)?)
    }

    /// Builds `configuration` as the canary deployment: it admits the requests that the
    /// current deployment's stage canaries pick, with its own routes, settings and stage
    /// variables (and its stages' variable overrides). It must declare every stage that has a
    /// canary, and some stage must have one.
    pub fn deploy_canary(
        &self,
        configuration: GatewayBuilder,
    ) -> Result<DeploymentId, ConfigError> {
        let mut changes = self.live.changes();
        let id = DeploymentId(changes.next_id);
        let active = self.live.active.load_full();
        let canary = build_canary(configuration.clone(), id, &active.baseline)?;
        changes.record(configuration);
        self.activate(
            &mut changes,
            Arc::clone(&active.baseline),
            Some(canary),
            true,
        );
        Ok(id)
    }

    /// Serves an earlier deployment (one of the last 32) again, rebuilt from its
    /// configuration; a canary deployment in progress ends.
    pub fn switch(&self, id: DeploymentId) -> Result<(), ConfigError> {
        let mut changes = self.live.changes();
        let source = changes.source(id)?;
        let baseline = {
            let active = self.live.active.load();
            source.build_deployment(id, Some(&active.baseline), &[], false)?
        };
        self.activate(&mut changes, baseline, None, true);
        Ok(())
    }

    /// Returns to what served before the last change (a deploy, canary deployment, switch or
    /// promotion); called again, to what served before the change before that, and so on.
    pub fn rollback(&self) -> Result<(), ConfigError> {
        let mut changes = self.live.changes();
        let Some(&(baseline_id, canary_id)) = changes.before.last() else {
            return Err(ConfigError::new(
                "deployments",
                "there is no earlier deployment to roll back to",
            ));
        };
        let active = self.live.active.load_full();
        // Undoing a canary deployment keeps the baseline serving as it is (its caches and
        // buckets); any other baseline is rebuilt from its configuration.
        let baseline = if baseline_id == active.baseline.id {
            Arc::clone(&active.baseline)
        } else {
            Arc::new(changes.source(baseline_id)?.build_deployment(
                baseline_id,
                Some(&active.baseline),
                &[],
                false,
            )?)
        };
        let canary = canary_id
            .map(|id| build_canary(changes.source(id)?, id, &baseline))
            .transpose()?;
        changes.before.pop();
        self.activate(&mut changes, baseline, canary, false);
        Ok(())
    }

    /// Promotes the canary: the canary deployment (or, without one, the current deployment)
    /// becomes the stages' deployment, with each stage's canary variable overrides made its
    /// own variables and its canary's share set to 0. The promoted configuration is a new
    /// deployment. Without a canary deployment and with no stage canary, there is nothing to
    /// promote.
    pub fn promote(&self) -> Result<DeploymentId, ConfigError> {
        let mut changes = self.live.changes();
        let active = self.live.active.load_full();
        let has_stage_canary = active
            .baseline
            .source
            .stages
            .iter()
            .any(crate::Stage::has_live_canary);
        if active.canary.is_none() && !has_stage_canary {
            return Err(ConfigError::new(
                "canary",
                "there is no canary to promote: no canary deployment, and no stage canary with \
                 a share of the traffic or variable overrides",
            ));
        }
        let mut source = active
            .canary
            .as_ref()
            .map_or(&active.baseline.source, |canary| &canary.source)
            .clone();
        source.stages = source
            .stages
            .iter()
            .map(crate::Stage::promoted)
            .collect::<Result<_, _>>()?;
        let id = DeploymentId(changes.next_id);
        let shared_with = active.canary.as_ref().unwrap_or(&active.baseline);
        let promoted = source
            .clone()
            .build_deployment(id, Some(shared_with), &[], false)?;
        changes.record(source);
        self.activate(&mut changes, promoted, None, true);
        Ok(id)
    }

    /// Swaps in what serves next, after the incoming baseline has taken over the outgoing
    /// one's key usage for plans they do not share.
    fn activate(
        &self,
        changes: &mut Changes,
        baseline: impl Into<Arc<GatewayShared>>,
        canary: Option<Arc<GatewayShared>>,
        remember: bool,
    ) {
        let baseline = baseline.into();
        let outgoing = self.live.active.load_full();
        if let (Some(incoming), Some(from)) = (&baseline.throttles, &outgoing.baseline.throttles)
            && !Arc::ptr_eq(&baseline, &outgoing.baseline)
        {
            incoming.adopt_usage(from);
        }
        self.live
            .active
            .store(Arc::new(Active { baseline, canary }));
        if remember {
            changes.before.push((
                outgoing.baseline.id,
                outgoing.canary.as_ref().map(|canary| canary.id),
            ));
            if changes.before.len() > KEPT_DEPLOYMENTS {
                changes.before.remove(0);
            }
        }
    }
}

/// Builds a canary deployment for `baseline`'s stage canaries.
fn build_canary(
    configuration: GatewayBuilder,
    id: DeploymentId,
    baseline: &GatewayShared,
) -> Result<Arc<GatewayShared>, ConfigError> {
    let canaried: Vec<_> = baseline
        .source
        .stages
        .iter()
        .filter_map(|stage| Some((stage, stage.canary()?)))
        .collect();
    if canaried.is_empty() {
        return Err(ConfigError::new(
            "canary",
            "no stage of the current deployment has canary settings, so a canary deployment \
             would serve nothing (StageBuilder::canary)",
        ));
    }
    let mut configuration = configuration;
    for (stage, settings) in &canaried {
        let declared = configuration
            .stages
            .iter_mut()
            .find(|declared| declared.name() == stage.name())
            .ok_or_else(|| {
                ConfigError::new(
                    format!("canary.stages[{}]", stage.name()),
                    "the stage has a canary, and the canary deployment does not declare it",
                )
            })?;
        // The serving stage's canary picked the request, so its settings (the release
        // header, the cache sharing) hold for it; the candidate keeps its variable overrides.
        *declared = declared
            .with_canary_settings(settings)
            .map_err(|error| error.within("canary"))?;
    }
    let shared_caches: Vec<(Box<str>, Arc<StageCache>)> = canaried
        .iter()
        .filter(|(_, canary)| canary.use_stage_cache)
        .filter_map(|(stage, _)| {
            let cache = baseline.cache.as_ref()?.stage_named(stage.name())?;
            Some((stage.name().into(), Arc::clone(cache)))
        })
        .collect();
    Ok(Arc::new(configuration.build_deployment(
        id,
        Some(baseline),
        &shared_caches,
        true,
    )?))
}
