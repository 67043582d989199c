//! The deployment files checked against the code. No container engine or
//! Kubernetes cluster runs here, so `docker-compose.yml`, the `Dockerfile` and
//! every manifest in `deploy/k8s/` are parsed (the manifests into the typed
//! Kubernetes API structs of `k8s-openapi`) and each container's command line
//! and environment are fed to the real argument parsers of `shop` and
//! `strand`: every variable must be one the program reads, every listener
//! must be reachable from other containers, every upstream URL must name a
//! service and port that exist, every database must live on a volume, and
//! every health check must use a path the program serves (Strand's are asked
//! of a running Strand). That Strand runs with the deployment's tokens
//! (secret files included), and every service's OTLP headers must get its
//! telemetry accepted.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    Container, PersistentVolumeClaim, PodSpec, Probe, Secret, Service,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use strand_testkit::Strand;

/// Variables the services read through `strand-sdk` (the OpenTelemetry
/// exporter), not through their flags. Only services (subcommands with a
/// `--listen`) set up telemetry.
const SDK_ENV: [&str; 2] = ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_HEADERS"];
/// Strand's settings that say which tokens it accepts.
const TOKEN_FLAGS: [&str; 4] = ["ingest-token", "read-token", "admin-token", "token-file"];
/// `shop demo` starts Strand and the services itself as local processes; it
/// is no container of its own.
const NOT_DEPLOYED: [&str; 1] = ["demo"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// What the code says

/// The shop's subcommands, from its real clap definition.
fn shop_subcommands() -> BTreeSet<String> {
    shop::Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect()
}

fn shop_subcommand(name: &str) -> clap::Command {
    shop::Cli::command()
        .find_subcommand(name)
        .unwrap_or_else(|| panic!("`shop {name}` is no subcommand of the shop"))
        .clone()
}

/// The flag (`--long`) that `env` sets for `command`, if any.
fn flag_for_env(command: &clap::Command, env: &str) -> Option<String> {
    command
        .get_arguments()
        .find(|arg| arg.get_env().and_then(|e| e.to_str()) == Some(env))
        .and_then(|arg| arg.get_long().map(str::to_string))
}

fn env_of_arg(command: &clap::Command, id: &str) -> Option<String> {
    command
        .get_arguments()
        .find(|arg| arg.get_id() == id)
        .and_then(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned())
}

/// A subcommand's default value of `id`.
fn default_of(command: &clap::Command, id: &str) -> Option<String> {
    command
        .get_arguments()
        .find(|arg| arg.get_id() == id)
        .and_then(|arg| arg.get_default_values().first())
        .map(|value| value.to_string_lossy().into_owned())
}

/// Which subcommand listens on `port` by default: what a URL flag's default
/// (e.g. `http://127.0.0.1:8081`) points at.
fn subcommand_listening_on(port: u16) -> Option<String> {
    shop::Cli::command().get_subcommands().find_map(|command| {
        let listen: SocketAddr = default_of(command, "listen")?.parse().ok()?;
        (listen.port() == port).then(|| command.get_name().to_string())
    })
}

/// A shop container's configuration, parsed by the shop's own parser.
struct ShopRun {
    subcommand: String,
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    /// Upstream URL flags: env var, value, subcommand the flag's default points at.
    upstreams: Vec<(String, String, String)>,
    sdk_env: BTreeMap<String, String>,
}

/// Feeds `args` (the container's command) and `env` to the shop's parser.
/// Panics on a variable the subcommand does not read.
fn parse_shop(unit: &str, args: &[String], env: &BTreeMap<String, String>) -> ShopRun {
    let subcommand = args
        .first()
        .unwrap_or_else(|| panic!("{unit}: no shop subcommand"))
        .clone();
    assert!(
        shop_subcommands().contains(&subcommand),
        "{unit}: `shop {subcommand}` does not exist"
    );
    let command = shop_subcommand(&subcommand);
    let is_service = command.get_arguments().any(|a| a.get_id() == "listen");
    let mut argv = vec!["shop".to_string()];
    argv.extend(args.iter().cloned());
    let mut sdk_env = BTreeMap::new();
    for (name, value) in env {
        match flag_for_env(&command, name) {
            Some(long) => argv.push(format!("--{long}={value}")),
            None if is_service && SDK_ENV.contains(&name.as_str()) => {
                sdk_env.insert(name.clone(), value.clone());
            }
            None => panic!("{unit}: `shop {subcommand}` reads no variable {name}"),
        }
    }
    let matches = shop::Cli::command()
        .try_get_matches_from(&argv)
        .unwrap_or_else(|e| panic!("{unit}: {argv:?} does not parse: {e}"));
    let (_, sub) = matches.subcommand().expect("a subcommand");
    let mut upstreams = Vec::new();
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        let Some(default) = default_of(&command, id) else {
            continue;
        };
        let Some(default_port) = default
            .strip_prefix("http://127.0.0.1:")
            .and_then(|p| p.parse::<u16>().ok())
        else {
            continue;
        };
        let target = subcommand_listening_on(default_port)
            .unwrap_or_else(|| panic!("{id}'s default {default} points at no subcommand"));
        let env_name = env_of_arg(&command, id).expect("URL flags have an env var");
        let value = sub.get_one::<String>(id).expect("a URL").clone();
        upstreams.push((env_name, value, target));
    }
    ShopRun {
        listen: sub
            .try_get_one::<SocketAddr>("listen")
            .ok()
            .flatten()
            .copied(),
        data_dir: sub
            .try_get_one::<PathBuf>("data_dir")
            .ok()
            .flatten()
            .cloned(),
        subcommand,
        upstreams,
        sdk_env,
    }
}

/// Strand's configuration for a container's command and environment, from
/// Strand's own parser and config merge.
fn parse_strand(unit: &str, args: &[String], env: &BTreeMap<String, String>) -> strand::Config {
    let cli = strand::config::Cli::command();
    let serve = cli.find_subcommand("serve").expect("strand serve");
    assert_eq!(args, ["serve"], "{unit}: strand runs `strand serve`");
    let mut argv = vec!["strand".to_string(), "serve".to_string()];
    for (name, value) in env {
        let long = flag_for_env(serve, name)
            .unwrap_or_else(|| panic!("{unit}: `strand serve` reads no variable {name}"));
        argv.push(format!("--{long}={value}"));
    }
    strand::Config::from_command_line(&argv)
        .unwrap_or_else(|e| panic!("{unit}: {argv:?} is not a valid strand config: {e:#}"))
}

// ---------------------------------------------------------------------------
// One model of a deployment, filled from compose or from the manifests

/// One container as deployed.
struct Unit {
    /// Compose service name, or Kubernetes workload name.
    name: String,
    image: String,
    is_strand: bool,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    /// Container ports other containers can reach.
    ports: BTreeSet<u16>,
    /// Directories backed by a persistent volume.
    persistent: BTreeSet<PathBuf>,
    /// `(path, container port)` of each health check.
    health: Vec<(String, u16)>,
    /// Files mounted from secrets: path in the container -> content.
    secret_files: BTreeMap<PathBuf, String>,
}

/// How a deployment turns `host:port` of a URL into a unit and container port.
trait Network {
    fn resolve(&self, host: &str, port: u16) -> Option<(String, u16)>;
}

/// `http://host:port` → `(host, port)`.
fn host_port(url: &str) -> (String, u16) {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("{url} is no http:// URL"));
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = authority
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{url} names no port"));
    (host.to_string(), port.parse().expect("a port number"))
}

/// The checks compose and Kubernetes share. Returns Strand's health paths
/// (checked against a running Strand by the caller).
fn check_units(what: &str, units: &[Unit], network: &dyn Network) -> BTreeSet<String> {
    let by_name: BTreeMap<&str, &Unit> = units.iter().map(|u| (u.name.as_str(), u)).collect();
    let strands: Vec<&Unit> = units.iter().filter(|u| u.is_strand).collect();
    assert_eq!(strands.len(), 1, "{what}: one Strand");
    let strand_unit = strands[0];
    let strand = parse_strand(&strand_unit.name, &strand_unit.args, &strand_unit.env);
    for listener in [strand.otlp_grpc, strand.otlp_http, strand.http] {
        assert!(
            listener.ip().is_unspecified(),
            "{what}: Strand must listen on 0.0.0.0, not {listener}"
        );
        assert!(
            strand_unit.ports.contains(&listener.port()),
            "{what}: Strand's port {} is not exposed",
            listener.port()
        );
    }
    assert!(
        strand_unit.persistent.contains(&strand.data_dir),
        "{what}: Strand's data dir {} is on no volume",
        strand.data_dir.display()
    );
    let mut strand_health = BTreeSet::new();
    assert!(
        !strand_unit.health.is_empty(),
        "{what}: Strand has no health check"
    );
    for (path, port) in &strand_unit.health {
        assert_eq!(
            *port,
            strand.http.port(),
            "{what}: Strand's health check port"
        );
        strand_health.insert(path.clone());
    }

    let mut deployed = BTreeSet::new();
    let shop_image = units.iter().find(|u| !u.is_strand).map(|u| u.image.clone());
    for unit in units.iter().filter(|u| !u.is_strand) {
        assert_eq!(
            Some(&unit.image),
            shop_image.as_ref(),
            "{what}: one shop image"
        );
        let run = parse_shop(&unit.name, &unit.args, &unit.env);
        assert_eq!(
            unit.name, run.subcommand,
            "{what}: name each unit after its subcommand (other units use it as host name)"
        );
        deployed.insert(run.subcommand.clone());
        if let Some(listen) = run.listen {
            assert!(
                listen.ip().is_unspecified(),
                "{what}: {} listens on {listen}: other containers cannot reach it",
                unit.name
            );
            assert!(
                unit.ports.contains(&listen.port()),
                "{what}: {}'s port {} is not exposed",
                unit.name,
                listen.port()
            );
            assert!(
                !unit.health.is_empty(),
                "{what}: {} has no health check",
                unit.name
            );
            for (path, port) in &unit.health {
                assert_eq!(path, shop::HEALTH_PATH, "{what}: {}", unit.name);
                assert_eq!(*port, listen.port(), "{what}: {}'s health port", unit.name);
            }
            // Telemetry goes to Strand's OTLP/gRPC listener (the SDK's default protocol).
            let endpoint = run
                .sdk_env
                .get("OTEL_EXPORTER_OTLP_ENDPOINT")
                .unwrap_or_else(|| panic!("{what}: {} sets no OTLP endpoint", unit.name));
            let (host, port) = host_port(endpoint);
            assert_eq!(
                network.resolve(&host, port),
                Some((strand_unit.name.clone(), strand.otlp_grpc.port())),
                "{what}: {}'s OTLP endpoint {endpoint} is not Strand's OTLP/gRPC port",
                unit.name
            );
        } else {
            assert!(
                unit.ports.is_empty(),
                "{what}: {} listens on nothing",
                unit.name
            );
        }
        if shop_subcommand(&run.subcommand)
            .get_arguments()
            .any(|a| a.get_id() == "data_dir")
        {
            let dir = run
                .data_dir
                .unwrap_or_else(|| panic!("{what}: {} keeps its database in the image", unit.name));
            assert!(
                unit.persistent.contains(&dir),
                "{what}: {}'s database {} is on no volume",
                unit.name,
                dir.display()
            );
        }
        for (env, url, target) in &run.upstreams {
            assert!(
                unit.env.contains_key(env),
                "{what}: {} leaves {env} at its localhost default",
                unit.name
            );
            let (host, port) = host_port(url);
            let (resolved, container_port) = network
                .resolve(&host, port)
                .unwrap_or_else(|| panic!("{what}: {}'s {env}={url} reaches nothing", unit.name));
            assert_eq!(&resolved, target, "{what}: {}'s {env}={url}", unit.name);
            let target_unit = by_name[resolved.as_str()];
            let listen = parse_shop(&target_unit.name, &target_unit.args, &target_unit.env)
                .listen
                .expect("the target listens");
            assert_eq!(
                container_port,
                listen.port(),
                "{what}: {}'s {env}={url} misses {target}'s port",
                unit.name
            );
        }
    }
    let expected: BTreeSet<String> = shop_subcommands()
        .into_iter()
        .filter(|s| !NOT_DEPLOYED.contains(&s.as_str()))
        .collect();
    assert_eq!(deployed, expected, "{what}: every shop subcommand once");
    strand_health
}

/// Runs Strand with the deployment's tokens (its secret files written out)
/// and asks it for each of the health `paths` (open, without a token);
/// then sends an OTLP/HTTP export of no spans with each service's
/// `OTEL_EXPORTER_OTLP_HEADERS`, which must be accepted, and one without,
/// which must be refused.
async fn check_running_strand(what: &str, units: &[Unit], paths: &BTreeSet<String>) {
    let strand_unit = units.iter().find(|u| u.is_strand).expect("Strand");
    let cli = strand::config::Cli::command();
    let serve = cli.find_subcommand("serve").expect("strand serve");
    let dir = tempfile::tempdir().unwrap();
    let mut args = Vec::new();
    for (name, value) in &strand_unit.env {
        let long = flag_for_env(serve, name).expect("checked by parse_strand");
        if !TOKEN_FLAGS.contains(&long.as_str()) {
            continue;
        }
        let value = if long == "token-file" {
            let content = strand_unit
                .secret_files
                .get(Path::new(value))
                .unwrap_or_else(|| {
                    panic!("{what}: Strand's token file {value} comes from no secret")
                });
            let path = dir.path().join("tokens");
            std::fs::write(&path, content).unwrap();
            path.display().to_string()
        } else {
            value.clone()
        };
        args.push(format!("--{long}={value}"));
    }
    assert!(
        !args.is_empty(),
        "{what}: Strand listens beyond its container with no token"
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let strand = Strand::start(&dir.path().join("data"), &args).await;
    for path in paths {
        let response = reqwest::get(strand.url(path))
            .await
            .expect("strand answers");
        assert!(
            response.status().is_success(),
            "Strand answers {path} with {}",
            response.status()
        );
    }
    let export = |headers: &[(String, String)]| {
        let mut request = reqwest::Client::new()
            .post(strand.otlp_http_url("/v1/traces"))
            .header("content-type", "application/json")
            .body(r#"{"resourceSpans":[]}"#);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        async move { request.send().await.expect("strand answers").status() }
    };
    assert_eq!(
        export(&[]).await,
        401,
        "{what}: Strand takes telemetry without a token"
    );
    for unit in units
        .iter()
        .filter(|u| u.env.contains_key("OTEL_EXPORTER_OTLP_ENDPOINT"))
    {
        let headers = unit
            .env
            .get("OTEL_EXPORTER_OTLP_HEADERS")
            .unwrap_or_else(|| panic!("{what}: {} sends telemetry without a token", unit.name));
        let status = export(&otlp_headers(headers)).await;
        assert_eq!(
            status, 200,
            "{what}: Strand refuses {}'s telemetry",
            unit.name
        );
    }
}

/// `OTEL_EXPORTER_OTLP_HEADERS` (`key=value,...`, values percent-encoded)
/// as the exporter turns it into headers.
fn otlp_headers(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .map(|pair| {
            let (name, value) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("{pair:?} is no key=value"));
            let value = percent_encoding::percent_decode_str(value.trim())
                .decode_utf8()
                .expect("UTF-8");
            (name.trim().to_string(), value.into_owned())
        })
        .collect()
}

// ---------------------------------------------------------------------------
// docker-compose.yml

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Compose {
    services: BTreeMap<String, ComposeService>,
    #[serde(default)]
    volumes: BTreeMap<String, Option<serde_json::Value>>,
    #[serde(default)]
    secrets: BTreeMap<String, ComposeSecret>,
}

/// A file-based compose secret, mounted at `/run/secrets/<name>`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ComposeSecret {
    file: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ComposeService {
    build: Build,
    image: String,
    command: Vec<String>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    #[serde(default)]
    env_file: Vec<String>,
    #[serde(default)]
    secrets: Vec<String>,
    #[serde(default)]
    ports: Vec<String>,
    #[serde(default)]
    volumes: Vec<String>,
    healthcheck: Option<Healthcheck>,
    #[serde(default)]
    depends_on: BTreeMap<String, DependsOn>,
    restart: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Build {
    context: String,
    target: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Healthcheck {
    test: Vec<String>,
    interval: String,
    timeout: String,
    retries: u32,
    start_period: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DependsOn {
    condition: String,
}

/// A compose duration in whole seconds (`10s`).
fn seconds(duration: &str) -> u64 {
    duration
        .strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{duration:?} is no duration in seconds"))
}

struct ComposeNetwork<'a>(&'a Compose);

impl Network for ComposeNetwork<'_> {
    fn resolve(&self, host: &str, port: u16) -> Option<(String, u16)> {
        self.0
            .services
            .contains_key(host)
            .then(|| (host.to_string(), port))
    }
}

/// The stages the Dockerfile builds, by `FROM ... AS name`.
fn dockerfile_stages(dockerfile: &str) -> BTreeSet<String> {
    dockerfile
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["FROM", _, as_, name] if as_.eq_ignore_ascii_case("as") => Some(name.to_string()),
                _ => None,
            }
        })
        .collect()
}

#[test]
fn the_dockerfile_builds_both_images_for_a_non_root_user_with_curl() {
    let dockerfile = read(&repo_root().join("Dockerfile"));
    let stages = dockerfile_stages(&dockerfile);
    for stage in ["builder", "strand", "shop"] {
        assert!(stages.contains(stage), "no `{stage}` stage: {stages:?}");
    }
    assert!(dockerfile.contains("FROM rust:1-bookworm AS builder"));
    assert!(dockerfile.contains("cargo build --release --locked -p strand -p shop"));
    assert!(dockerfile.contains("FROM debian:bookworm-slim AS runtime"));
    let install = dockerfile
        .lines()
        .find(|line| line.contains("apt-get install"))
        .expect("the runtime installs packages");
    assert!(install.contains(" curl"), "the health checks need curl");
    assert!(dockerfile.contains("USER 10001:10001"));
    assert!(!dockerfile.contains("USER root"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_file_matches_the_code() {
    let root = repo_root();
    let compose: Compose = serde_norway::from_str(&read(&root.join("docker-compose.yml")))
        .expect("docker-compose.yml parses");
    let stages = dockerfile_stages(&read(&root.join("Dockerfile")));

    let mut units = Vec::new();
    for (name, service) in &compose.services {
        assert_eq!(
            service.build.context, ".",
            "{name}: builds from the repository root"
        );
        assert!(
            stages.contains(&service.build.target),
            "{name}: no such Dockerfile stage"
        );
        let is_strand = service.build.target == "strand";
        let mut environment = service.environment.clone();
        for file in &service.env_file {
            for line in read(&root.join(file)).lines() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (name, value) = line.split_once('=').expect("NAME=value");
                assert!(
                    environment
                        .insert(name.to_string(), value.to_string())
                        .is_none(),
                    "{name}: set twice"
                );
            }
        }
        let mut secret_files = BTreeMap::new();
        for secret in &service.secrets {
            let source = compose
                .secrets
                .get(secret)
                .unwrap_or_else(|| panic!("{name}: no secret {secret}"));
            secret_files.insert(
                PathBuf::from(format!("/run/secrets/{secret}")),
                read(&root.join(&source.file)),
            );
        }
        let mut persistent = BTreeSet::new();
        for volume in &service.volumes {
            let (source, target) = volume.split_once(':').expect("volume:path");
            assert!(
                compose.volumes.contains_key(source),
                "{name}: {source} is no named volume"
            );
            persistent.insert(PathBuf::from(target));
        }
        for published in &service.ports {
            let (_, container) = published.rsplit_once(':').expect("host:container");
            let container: u16 = container.parse().expect("a port");
            let exposed = if is_strand {
                let strand = parse_strand(name, &service.command, &environment);
                [strand.otlp_grpc, strand.otlp_http, strand.http]
                    .iter()
                    .any(|l| l.port() == container)
            } else {
                parse_shop(name, &service.command, &environment)
                    .listen
                    .is_some_and(|l| l.port() == container)
            };
            assert!(
                exposed,
                "{name}: publishes {container}, where nothing listens"
            );
        }
        if let Some(restart) = &service.restart {
            assert!(
                ["no", "always", "on-failure", "unless-stopped"].contains(&restart.as_str()),
                "{name}: restart: {restart}"
            );
        }
        let mut health = Vec::new();
        if let Some(check) = &service.healthcheck {
            let interval = seconds(&check.interval);
            assert!(
                seconds(&check.timeout) < interval,
                "{name}: timeout < interval"
            );
            assert!(
                seconds(&check.start_period) <= 60 && check.retries > 0,
                "{name}"
            );
            match check
                .test
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .as_slice()
            {
                ["CMD", "curl", "-fsS", url] => {
                    let (host, port) = host_port(url);
                    assert!(
                        host == "127.0.0.1" || host == "localhost",
                        "{name}: the health check asks the container itself"
                    );
                    let path = url.splitn(4, '/').nth(3).unwrap_or_default();
                    health.push((format!("/{path}"), port));
                }
                other => panic!("{name}: unexpected health check {other:?}"),
            }
        }
        // Everything but the container's own health check reaches other
        // containers by service name.
        for (env, value) in &service.environment {
            assert!(
                !value.contains("localhost") && !value.contains("127.0.0.1"),
                "{name}: {env}={value} points at the container itself"
            );
            if value.starts_with("http://") {
                let (host, _) = host_port(value);
                let dependency = service
                    .depends_on
                    .get(&host)
                    .unwrap_or_else(|| panic!("{name}: does not wait for {host}"));
                assert_eq!(dependency.condition, "service_healthy");
            }
        }
        for dependency in service.depends_on.keys() {
            assert!(compose.services[dependency].healthcheck.is_some());
        }
        let ports = if is_strand {
            let strand = parse_strand(name, &service.command, &environment);
            [strand.otlp_grpc, strand.otlp_http, strand.http]
                .iter()
                .map(SocketAddr::port)
                .collect()
        } else {
            parse_shop(name, &service.command, &environment)
                .listen
                .map(|l| l.port())
                .into_iter()
                .collect()
        };
        units.push(Unit {
            name: name.clone(),
            image: service.image.clone(),
            is_strand,
            args: service.command.clone(),
            env: environment,
            ports,
            persistent,
            health,
            secret_files,
        });
    }
    let used: BTreeSet<&str> = compose
        .services
        .values()
        .flat_map(|s| {
            s.volumes
                .iter()
                .filter_map(|v| v.split_once(':'))
                .map(|(v, _)| v)
        })
        .collect();
    for volume in compose.volumes.keys() {
        assert!(used.contains(volume.as_str()), "volume {volume} is unused");
    }
    let paths = check_units("docker-compose.yml", &units, &ComposeNetwork(&compose));
    check_running_strand("docker-compose.yml", &units, &paths).await;
}

// ---------------------------------------------------------------------------
// deploy/k8s

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Kustomization {
    #[serde(rename = "apiVersion")]
    _api_version: String,
    #[serde(rename = "kind")]
    _kind: String,
    resources: Vec<String>,
}

#[derive(Default)]
struct Manifests {
    services: Vec<Service>,
    deployments: Vec<Deployment>,
    stateful_sets: Vec<StatefulSet>,
    claims: Vec<PersistentVolumeClaim>,
    secrets: Vec<Secret>,
}

/// Deserialises into the typed struct and requires that serialising it again
/// gives the document back: a misspelt or misplaced field, which the typed
/// struct would silently drop, fails here.
fn typed<T: DeserializeOwned + serde::Serialize>(file: &str, doc: &serde_json::Value) -> T {
    let value: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{file}: {} does not deserialise: {e}", doc["kind"]));
    let back = serde_json::to_value(&value).expect("serialises");
    if let Some(path) = first_difference(doc, &back, String::new()) {
        panic!(
            "{file}: {} at {path} does not survive the typed struct (unknown or misplaced field?)",
            doc["kind"]
        );
    }
    value
}

/// Where `a` and `b` first differ, as a JSON pointer.
fn first_difference(a: &serde_json::Value, b: &serde_json::Value, at: String) -> Option<String> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            a.keys()
                .chain(b.keys())
                .find_map(|key| match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => first_difference(x, y, format!("{at}/{key}")),
                    _ => Some(format!("{at}/{key}")),
                })
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (x, y))| first_difference(x, y, format!("{at}/{i}"))),
        _ => (a != b).then_some(at),
    }
}

fn load_manifests() -> Manifests {
    let dir = repo_root().join("deploy/k8s");
    let kustomization: Kustomization =
        serde_norway::from_str(&read(&dir.join("kustomization.yaml"))).expect("kustomization");
    let mut files: BTreeSet<String> = std::fs::read_dir(&dir)
        .expect("deploy/k8s")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|f| f.ends_with(".yaml") || f.ends_with(".yml"))
        .collect();
    files.remove("kustomization.yaml");
    let listed: BTreeSet<String> = kustomization.resources.iter().cloned().collect();
    assert_eq!(listed, files, "kustomization.yaml lists every manifest");

    let mut manifests = Manifests::default();
    for file in &files {
        let text = read(&dir.join(file));
        for document in serde_norway::Deserializer::from_str(&text) {
            let doc =
                serde_json::Value::deserialize(document).unwrap_or_else(|e| panic!("{file}: {e}"));
            if doc.is_null() {
                continue;
            }
            match (doc["apiVersion"].as_str(), doc["kind"].as_str()) {
                (Some("v1"), Some("Service")) => manifests.services.push(typed(file, &doc)),
                (Some("apps/v1"), Some("Deployment")) => {
                    manifests.deployments.push(typed(file, &doc))
                }
                (Some("apps/v1"), Some("StatefulSet")) => {
                    manifests.stateful_sets.push(typed(file, &doc))
                }
                (Some("v1"), Some("PersistentVolumeClaim")) => {
                    manifests.claims.push(typed(file, &doc))
                }
                (Some("v1"), Some("Secret")) => manifests.secrets.push(typed(file, &doc)),
                other => panic!("{file}: unexpected kind {other:?}"),
            }
        }
    }
    manifests
}

fn name_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.name.clone().expect("every object has a name")
}

/// A container's port by number or by name.
fn container_port(container: &Container, port: &IntOrString) -> Option<u16> {
    container
        .ports
        .iter()
        .flatten()
        .find(|p| match port {
            IntOrString::Int(n) => p.container_port == *n,
            IntOrString::String(name) => p.name.as_deref() == Some(name),
        })
        .map(|p| u16::try_from(p.container_port).expect("a port"))
}

struct K8sNetwork<'a> {
    manifests: &'a Manifests,
    /// Workload name, pod labels and container.
    pods: Vec<(String, BTreeMap<String, String>, Container)>,
}

impl Network for K8sNetwork<'_> {
    fn resolve(&self, host: &str, port: u16) -> Option<(String, u16)> {
        let service = self
            .manifests
            .services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(host))?;
        let spec = service.spec.as_ref()?;
        let service_port = spec
            .ports
            .iter()
            .flatten()
            .find(|p| p.port == i32::from(port))?;
        let target = service_port
            .target_port
            .clone()
            .unwrap_or(IntOrString::Int(service_port.port));
        let selector = spec.selector.as_ref()?;
        let mut matching = self
            .pods
            .iter()
            .filter(|(_, labels, _)| selector.iter().all(|(k, v)| labels.get(k) == Some(v)));
        let (workload, _, container) = matching.next()?;
        assert!(
            matching.next().is_none(),
            "Service {host} selects several workloads"
        );
        Some((workload.clone(), container_port(container, &target)?))
    }
}

fn probe_of(name: &str, container: &Container, probe: Option<&Probe>, kind: &str) -> (String, u16) {
    let get = probe
        .and_then(|p| p.http_get.as_ref())
        .unwrap_or_else(|| panic!("{name}: no HTTP {kind} probe"));
    let port = container_port(container, &get.port)
        .unwrap_or_else(|| panic!("{name}: the {kind} probe's port is no container port"));
    (get.path.clone().expect("a probe path"), port)
}

/// A pod's single container as a [`Unit`].
fn unit_of(
    name: &str,
    pod: &PodSpec,
    claims: &BTreeSet<String>,
    secrets: &BTreeMap<String, BTreeMap<String, String>>,
) -> Unit {
    assert_eq!(pod.containers.len(), 1, "{name}: one container");
    let container = &pod.containers[0];
    let security = pod
        .security_context
        .as_ref()
        .expect("a pod security context");
    assert_eq!(
        security.run_as_non_root,
        Some(true),
        "{name}: runs as non-root"
    );
    let resources = container
        .resources
        .as_ref()
        .unwrap_or_else(|| panic!("{name}: no resources"));
    for (kind, map) in [
        ("requests", &resources.requests),
        ("limits", &resources.limits),
    ] {
        let map = map.as_ref().unwrap_or_else(|| panic!("{name}: no {kind}"));
        assert!(
            map.contains_key("cpu") && map.contains_key("memory"),
            "{name}: {kind} for cpu and memory"
        );
    }
    let mut env = BTreeMap::new();
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), None) => value.clone(),
            (None, Some(from)) => {
                let key = from
                    .secret_key_ref
                    .as_ref()
                    .unwrap_or_else(|| panic!("{name}: {} comes from a Secret", var.name));
                secrets
                    .get(&key.name)
                    .and_then(|data| data.get(&key.key))
                    .unwrap_or_else(|| panic!("{name}: no Secret {}/{}", key.name, key.key))
                    .clone()
            }
            _ => panic!("{name}: {} has no value", var.name),
        };
        assert!(
            env.insert(var.name.clone(), value).is_none(),
            "{name}: {} twice",
            var.name
        );
    }
    let mut persistent = BTreeSet::new();
    let mut secret_files = BTreeMap::new();
    for mount in container.volume_mounts.iter().flatten() {
        let secret_volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .and_then(|v| v.secret.as_ref());
        if let Some(volume) = secret_volume {
            let secret_name = volume.secret_name.clone().expect("a secret name");
            let data = secrets
                .get(&secret_name)
                .unwrap_or_else(|| panic!("{name}: no Secret {secret_name}"));
            let items: Vec<(String, String)> = match &volume.items {
                Some(items) => items
                    .iter()
                    .map(|i| (i.key.clone(), i.path.clone()))
                    .collect(),
                None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
            };
            for (key, path) in items {
                let content = data
                    .get(&key)
                    .unwrap_or_else(|| panic!("{name}: no key {key} in Secret {secret_name}"));
                secret_files.insert(Path::new(&mount.mount_path).join(path), content.clone());
            }
        }
    }
    for mount in container.volume_mounts.iter().flatten() {
        let on_claim = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .and_then(|v| v.persistent_volume_claim.as_ref())
            .map(|c| c.claim_name.clone())
            .or_else(|| claims.contains(&mount.name).then(|| mount.name.clone()));
        if let Some(claim) = on_claim {
            assert!(claims.contains(&claim), "{name}: no claim {claim}");
            persistent.insert(PathBuf::from(&mount.mount_path));
        }
    }
    let mut health = Vec::new();
    if container.ports.as_ref().is_some_and(|p| !p.is_empty()) {
        health.push(probe_of(
            name,
            container,
            container.readiness_probe.as_ref(),
            "readiness",
        ));
        health.push(probe_of(
            name,
            container,
            container.liveness_probe.as_ref(),
            "liveness",
        ));
    }
    let image = container.image.clone().expect("an image");
    Unit {
        name: name.to_string(),
        is_strand: image.starts_with("strand:"),
        image,
        args: container.args.clone().unwrap_or_default(),
        env,
        ports: container
            .ports
            .iter()
            .flatten()
            .map(|p| u16::try_from(p.container_port).expect("a port"))
            .collect(),
        persistent,
        health,
        secret_files,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_manifests_match_the_code() {
    let manifests = load_manifests();
    let secrets: BTreeMap<String, BTreeMap<String, String>> = manifests
        .secrets
        .iter()
        .map(|s| {
            (
                name_of(&s.metadata),
                s.string_data.clone().unwrap_or_default(),
            )
        })
        .collect();
    let standalone_claims: BTreeSet<String> = manifests
        .claims
        .iter()
        .map(|c| name_of(&c.metadata))
        .collect();

    let mut units = Vec::new();
    let mut pods = Vec::new();
    assert_eq!(
        manifests.stateful_sets.len(),
        1,
        "Strand is the one StatefulSet"
    );
    for set in &manifests.stateful_sets {
        let name = name_of(&set.metadata);
        let spec = set.spec.as_ref().expect("a spec");
        let templates: BTreeSet<String> = spec
            .volume_claim_templates
            .iter()
            .flatten()
            .map(|c| name_of(&c.metadata))
            .collect();
        let governing = spec.service_name.as_deref().expect("a governing Service");
        let headless = manifests
            .services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(governing))
            .expect("the governing Service exists");
        assert_eq!(
            headless.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()),
            Some("None"),
            "the governing Service is headless"
        );
        let pod = spec.template.spec.as_ref().expect("a pod spec");
        let labels = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone());
        let unit = unit_of(&name, pod, &templates, &secrets);
        assert!(unit.is_strand, "{name}: the StatefulSet runs Strand");
        pods.push((name, labels.unwrap_or_default(), pod.containers[0].clone()));
        units.push(unit);
    }
    for deployment in &manifests.deployments {
        let name = name_of(&deployment.metadata);
        let spec = deployment.spec.as_ref().expect("a spec");
        let pod = spec.template.spec.as_ref().expect("a pod spec");
        let labels = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let selector = spec.selector.match_labels.clone().unwrap_or_default();
        assert!(
            selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
            "{name}: the selector matches the pod"
        );
        let unit = unit_of(&name, pod, &standalone_claims, &secrets);
        if !unit.persistent.is_empty() {
            assert_eq!(
                spec.strategy.as_ref().and_then(|s| s.type_.as_deref()),
                Some("Recreate"),
                "{name}: one pod at a time may open the database"
            );
        }
        if !unit.ports.is_empty() {
            // Each service is reachable under its own name on its own port.
            let service = manifests
                .services
                .iter()
                .find(|s| s.metadata.name.as_deref() == Some(name.as_str()))
                .unwrap_or_else(|| panic!("{name}: no Service"));
            for port in service
                .spec
                .as_ref()
                .and_then(|s| s.ports.as_ref())
                .expect("ports")
            {
                assert!(
                    unit.ports
                        .contains(&u16::try_from(port.port).expect("a port"))
                );
            }
        }
        pods.push((name, labels, pod.containers[0].clone()));
        units.push(unit);
    }
    let network = K8sNetwork {
        manifests: &manifests,
        pods,
    };
    // Strand's Service exposes all three listeners under their own ports.
    let strand = units.iter().find(|u| u.is_strand).expect("Strand");
    for port in &strand.ports {
        assert_eq!(
            network.resolve("strand", *port),
            Some((strand.name.clone(), *port)),
            "Service strand exposes {port}"
        );
    }
    let paths = check_units("deploy/k8s", &units, &network);
    check_running_strand("deploy/k8s", &units, &paths).await;
}
