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
//!
//! Strand over ClickHouse — compose's `clickhouse` profile and
//! `deploy/k8s/clickhouse/` — is checked the same way, and further: the
//! nodes' settings must parse to `--storage clickhouse` naming the ClickHouse
//! that is deployed (its service, HTTP port, user and password); the nodes
//! must share settings and tokens (those of the default Strand) but not a
//! write-ahead log, and be given time for their last flush when stopped; what
//! balances over them (nginx's `stream` config in compose, the Service in
//! Kubernetes) must reach the same listener on every node and keep each OTLP
//! client on one node; the autoscaler must scale the Deployment that exists.
//! Besides Strand's and the shop's images only ClickHouse's and nginx's may
//! run. Then two Strands run with a node's settings over a real ClickHouse
//! (Debian's 18.16, [`strand_testkit::ClickHouse`]), and a span sent to one
//! must be read back from the other.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{
    Container, PersistentVolumeClaim, PodSpec, Probe, Secret, Service,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use strand::config::Storage;
use strand_testkit::{ClickHouse, DEADLINE, Strand, eventually};

/// Variables the services read through `strand-sdk` (the OpenTelemetry
/// exporter), not through their flags. Only services (subcommands with a
/// `--listen`) set up telemetry.
const SDK_ENV: [&str; 2] = ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_HEADERS"];
/// Strand's settings that say which tokens it accepts.
const TOKEN_FLAGS: [&str; 4] = ["ingest-token", "read-token", "admin-token", "token-file"];
/// `shop demo` starts Strand and the services itself as local processes; it
/// is no container of its own.
const NOT_DEPLOYED: [&str; 1] = ["demo"];
/// Strand's listener flags and data directory: what the test harness sets
/// itself when it runs a deployment's Strand (loopback port 0, a temporary
/// directory).
const HARNESS_FLAGS: [&str; 5] = ["listen", "otlp-grpc", "otlp-http", "http", "data-dir"];
/// The profile of docker-compose.yml that runs Strand over ClickHouse.
const CLICKHOUSE_PROFILE: &str = "clickhouse";
/// ClickHouse's HTTP interface in its image (`http_port` of the image's
/// config.xml): what `--clickhouse-url` names and `/ping` answers on.
const CLICKHOUSE_HTTP_PORT: u16 = 8123;
/// Where the ClickHouse image keeps its data.
const CLICKHOUSE_DATA: &str = "/var/lib/clickhouse";
/// The variables the ClickHouse image's entrypoint reads. Without a user or
/// password of its own it lets its `default` user in from localhost only,
/// so Strand, in another container, must log in as the one it creates.
const CLICKHOUSE_IMAGE_ENV: [&str; 4] = [
    "CLICKHOUSE_USER",
    "CLICKHOUSE_PASSWORD",
    "CLICKHOUSE_DB",
    "CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT",
];
/// Seconds Strand over ClickHouse may need between SIGTERM and its exit:
/// `SHUTDOWN_GRACE` (5 s, collector/src/lib.rs) for requests in flight, then
/// the last flush of spans, logs and metrics (`Pipeline::run_flusher`), a
/// ClickHouse request each of up to `REQUEST_TIMEOUT` (30 s,
/// collector/src/store/clickhouse/mod.rs).
const CLICKHOUSE_STOP_SECONDS: u64 = 5 + 3 * 30;
/// Compose's and Kubernetes' time between SIGTERM and SIGKILL when a
/// deployment does not set it.
const COMPOSE_DEFAULT_STOP_SECONDS: u64 = 10;
const K8S_DEFAULT_GRACE_SECONDS: i64 = 30;

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

/// What a container runs, told by its image: Strand's and the shop's own
/// images, and the only two others a deployment may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Strand,
    Shop,
    ClickHouse,
    /// nginx balancing TCP over Strand nodes.
    Balancer,
}

fn role_of(unit: &str, image: &str) -> Role {
    let (name, tag) = image
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{unit}: image {image} names no version"));
    assert!(
        !tag.is_empty() && tag != "latest",
        "{unit}: image {image} names no version"
    );
    match name {
        "strand" => Role::Strand,
        "strand-shop" => Role::Shop,
        "clickhouse/clickhouse-server" => Role::ClickHouse,
        "nginx" => Role::Balancer,
        _ => panic!(
            "{unit}: image {image}: besides Strand's and the shop's, only ClickHouse's and nginx's images are deployed"
        ),
    }
}

/// One container as deployed.
struct Unit {
    /// Compose service name, or Kubernetes workload name.
    name: String,
    image: String,
    role: Role,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    /// Container ports other containers can reach.
    ports: BTreeSet<u16>,
    /// Directories backed by a persistent volume.
    persistent: BTreeSet<PathBuf>,
    /// Directories on a volume that lives as long as the pod (emptyDir).
    scratch: BTreeSet<PathBuf>,
    /// `(path, container port)` of each health check.
    health: Vec<(String, u16)>,
    /// Files mounted from secrets: path in the container -> content.
    secret_files: BTreeMap<PathBuf, String>,
    /// Files mounted from the repository: path in the container -> content.
    config_files: BTreeMap<PathBuf, String>,
    /// Seconds the process gets between SIGTERM and SIGKILL (a Kubernetes
    /// preStop hook's pause taken off).
    stop_seconds: u64,
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
    for unit in units {
        assert!(
            matches!(unit.role, Role::Strand | Role::Shop),
            "{what}: {} is neither Strand nor the shop",
            unit.name
        );
    }
    let strands: Vec<&Unit> = units.iter().filter(|u| u.role == Role::Strand).collect();
    assert_eq!(strands.len(), 1, "{what}: one Strand");
    let strand_unit = strands[0];
    let strand = parse_strand(&strand_unit.name, &strand_unit.args, &strand_unit.env);
    assert!(
        matches!(strand.storage, Storage::Embedded),
        "{what}: the one Strand keeps its data in its data directory"
    );
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
    let shop_image = units
        .iter()
        .find(|u| u.role == Role::Shop)
        .map(|u| u.image.clone());
    for unit in units.iter().filter(|u| u.role == Role::Shop) {
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

/// Strand's command line for the test harness from `unit`'s environment:
/// `rewrite(flag, value)` gives each flag's value for the harness (`None`
/// leaves the flag out); a token file is written into `dir` from the secret
/// mounted where the deployment says.
fn harness_args(
    what: &str,
    unit: &Unit,
    dir: &Path,
    rewrite: impl Fn(&str, &str) -> Option<String>,
) -> Vec<String> {
    let cli = strand::config::Cli::command();
    let serve = cli.find_subcommand("serve").expect("strand serve");
    let mut args = Vec::new();
    for (name, value) in &unit.env {
        let long = flag_for_env(serve, name).expect("checked by parse_strand");
        let Some(value) = rewrite(&long, value) else {
            continue;
        };
        let value = if long == "token-file" {
            let content = unit.secret_files.get(Path::new(&value)).unwrap_or_else(|| {
                panic!(
                    "{what}: {}'s token file {value} comes from no secret",
                    unit.name
                )
            });
            let path = dir.join("tokens");
            std::fs::write(&path, content).unwrap();
            path.display().to_string()
        } else {
            value
        };
        args.push(format!("--{long}={value}"));
    }
    args
}

/// Runs Strand with the deployment's tokens (its secret files written out)
/// and asks it for each of the health `paths` (open, without a token);
/// then sends an OTLP/HTTP export of no spans with each service's
/// `OTEL_EXPORTER_OTLP_HEADERS`, which must be accepted, and one without,
/// which must be refused.
async fn check_running_strand(what: &str, units: &[Unit], paths: &BTreeSet<String>) {
    let strand_unit = units
        .iter()
        .find(|u| u.role == Role::Strand)
        .expect("Strand");
    let dir = tempfile::tempdir().unwrap();
    let args = harness_args(what, strand_unit, dir.path(), |long, value| {
        TOKEN_FLAGS.contains(&long).then(|| value.to_string())
    });
    assert!(
        !args.is_empty(),
        "{what}: Strand listens beyond its container with no token"
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let strand = Strand::start(&dir.path().join("data"), &args).await;
    check_health_paths(what, &strand, paths).await;
    let senders: Vec<&Unit> = units.iter().collect();
    check_tokens(what, &strand, &senders).await;
}

/// Asks a running Strand for each of the health `paths`, without a token.
async fn check_health_paths(what: &str, strand: &Strand, paths: &BTreeSet<String>) {
    for path in paths {
        let response = reqwest::get(strand.url(path))
            .await
            .expect("strand answers");
        assert!(
            response.status().is_success(),
            "{what}: Strand answers {path} with {}",
            response.status()
        );
    }
}

/// Sends an OTLP/HTTP export of no spans to a running Strand with the
/// `OTEL_EXPORTER_OTLP_HEADERS` of each of `senders` that sends telemetry,
/// which must be accepted, and one without a token, which must be refused.
async fn check_tokens(what: &str, strand: &Strand, senders: &[&Unit]) {
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
    for unit in senders
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
// Strand over ClickHouse, in compose and in Kubernetes

/// Strand's three listeners.
fn listeners(strand: &strand::Config) -> [SocketAddr; 3] {
    [strand.otlp_grpc, strand.otlp_http, strand.http]
}

/// The checks of Strand nodes over one ClickHouse that compose and
/// Kubernetes share: `nodes` (compose services, or the Deployment once)
/// are configured alike for `--storage clickhouse`, each listens beyond its
/// container, keeps its write-ahead log on a volume and gets time for its
/// last flush; their ClickHouse URL reaches `clickhouse`'s HTTP port, as the
/// user the ClickHouse image creates. Returns Strand's health paths
/// (checked against running nodes by the caller).
fn check_clickhouse_nodes(
    what: &str,
    nodes: &[&Unit],
    clickhouse: &Unit,
    network: &dyn Network,
) -> BTreeSet<String> {
    let first = *nodes.first().expect("a node");
    for node in nodes {
        assert_eq!(node.role, Role::Strand, "{what}: {} runs Strand", node.name);
        // Behind one address every node must answer alike.
        assert_eq!(node.image, first.image, "{what}: {}'s image", node.name);
        assert_eq!(node.args, first.args, "{what}: {}'s command", node.name);
        assert_eq!(
            node.env, first.env,
            "{what}: {} and {} are configured alike",
            node.name, first.name
        );
        assert_eq!(
            node.secret_files, first.secret_files,
            "{what}: {} and {} read the same tokens",
            node.name, first.name
        );
    }
    let strand = parse_strand(&first.name, &first.args, &first.env);
    let Storage::ClickHouse(settings) = &strand.storage else {
        panic!(
            "{what}: {} keeps its data in its data directory, not in ClickHouse",
            first.name
        );
    };
    let mut health = BTreeSet::new();
    for node in nodes {
        for listener in listeners(&strand) {
            assert!(
                listener.ip().is_unspecified(),
                "{what}: {} must listen on 0.0.0.0, not {listener}",
                node.name
            );
            assert!(
                node.ports.contains(&listener.port()),
                "{what}: {}'s port {} is not exposed",
                node.name,
                listener.port()
            );
        }
        assert!(
            node.persistent.contains(&strand.data_dir) || node.scratch.contains(&strand.data_dir),
            "{what}: {}'s write-ahead log ({}) is on no volume",
            node.name,
            strand.data_dir.display()
        );
        assert!(
            !node.health.is_empty(),
            "{what}: {} has no health check",
            node.name
        );
        for (path, port) in &node.health {
            assert_eq!(
                *port,
                strand.http.port(),
                "{what}: {}'s health port",
                node.name
            );
            health.insert(path.clone());
        }
        assert!(
            node.stop_seconds >= CLICKHOUSE_STOP_SECONDS,
            "{what}: {} gets {} s to stop, its last flush into ClickHouse may need {CLICKHOUSE_STOP_SECONDS} s",
            node.name,
            node.stop_seconds
        );
    }

    assert_eq!(clickhouse.role, Role::ClickHouse);
    let name = &clickhouse.name;
    assert!(
        clickhouse.args.is_empty(),
        "{what}: {name} runs the image's own command"
    );
    for variable in clickhouse.env.keys() {
        assert!(
            CLICKHOUSE_IMAGE_ENV.contains(&variable.as_str()),
            "{what}: the ClickHouse image reads no variable {variable}"
        );
    }
    assert!(
        clickhouse.ports.contains(&CLICKHOUSE_HTTP_PORT),
        "{what}: {name}'s HTTP port {CLICKHOUSE_HTTP_PORT} is not exposed"
    );
    assert!(
        clickhouse.persistent.contains(Path::new(CLICKHOUSE_DATA)),
        "{what}: {name}'s data ({CLICKHOUSE_DATA}) is on no persistent volume"
    );
    assert!(
        !clickhouse.health.is_empty(),
        "{what}: {name} has no health check"
    );
    for check in &clickhouse.health {
        assert_eq!(
            check,
            &("/ping".to_string(), CLICKHOUSE_HTTP_PORT),
            "{what}: {name}'s health check"
        );
    }
    assert!(
        settings.cluster.is_none() && settings.urls.len() == 1,
        "{what}: one ClickHouse server, no cluster"
    );
    for url in &settings.urls {
        let (host, port) = host_port(url);
        assert_eq!(
            network.resolve(&host, port),
            Some((name.clone(), CLICKHOUSE_HTTP_PORT)),
            "{what}: Strand's ClickHouse URL {url} is not {name}'s HTTP port"
        );
    }
    let user = clickhouse.env.get("CLICKHOUSE_USER").unwrap_or_else(|| {
        panic!(
            "{what}: without CLICKHOUSE_USER the ClickHouse image lets its `default` user in from localhost only"
        )
    });
    let password = clickhouse
        .env
        .get("CLICKHOUSE_PASSWORD")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| panic!("{what}: {name}'s user {user} has no password"));
    assert_eq!(
        settings.user.as_ref(),
        Some(user),
        "{what}: Strand logs in as the user {name} creates"
    );
    assert_eq!(
        settings
            .password
            .as_ref()
            .map(strand::config::Secret::expose),
        Some(password.as_str()),
        "{what}: Strand's ClickHouse password is {name}'s"
    );
    health
}

/// The token of `scope` (`ingest`, `read`, `admin`) that a Strand with
/// `config` accepts: from its flags, or else from its token file (one
/// `<scope> <token>` line each).
fn token_of(config: &strand::Config, scope: &str) -> String {
    let from_flags = match scope {
        "ingest" => &config.auth.ingest_tokens,
        "read" => &config.auth.read_tokens,
        _ => &config.auth.admin_tokens,
    };
    if let Some(token) = from_flags.first() {
        return token.expose().to_string();
    }
    let file = config.auth.token_file.as_ref().expect("a token file");
    read(file)
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once(char::is_whitespace))
        .find(|(name, _)| *name == scope)
        .map(|(_, token)| token.trim().to_string())
        .unwrap_or_else(|| panic!("no {scope} token in {}", file.display()))
}

/// Runs each of `nodes` (the same unit twice for a Deployment's replicas)
/// as a Strand with the deployment's settings — listeners on loopback, a
/// temporary data directory — over one real ClickHouse (the harness's; its
/// passwordless `default` user stands in for the deployed user and
/// password, which `check_clickhouse_nodes` checked against ClickHouse's).
/// Each must answer its health `paths`, take `senders`' telemetry and refuse
/// it without a token; a span sent to each node must be read back from the
/// next one, which never saw it: it came from ClickHouse.
async fn check_running_clickhouse_nodes(
    what: &str,
    nodes: &[&Unit],
    senders: &[&Unit],
    paths: &BTreeSet<String>,
) {
    assert!(nodes.len() >= 2, "{what}: two nodes or more");
    let clickhouse = ClickHouse::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut running = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let node_dir = dir.path().join(format!("node-{i}"));
        std::fs::create_dir_all(&node_dir).unwrap();
        let args = harness_args(what, node, &node_dir, |long, value| match long {
            _ if HARNESS_FLAGS.contains(&long) => None,
            "clickhouse-user" | "clickhouse-password" => None,
            "clickhouse-url" => Some(clickhouse.url.clone()),
            _ => Some(value.to_string()),
        });
        let data_dir = node_dir.join("data");
        let mut argv = vec![
            "strand".to_string(),
            "serve".to_string(),
            format!("--data-dir={}", data_dir.display()),
        ];
        argv.extend(args.iter().cloned());
        let config = strand::Config::from_command_line(&argv)
            .unwrap_or_else(|e| panic!("{what}: {argv:?}: {e:#}"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut strand = Strand::start(&data_dir, &args).await;
        check_health_paths(what, &strand, paths).await;
        check_tokens(what, &strand, senders).await;
        strand.set_read_token(&token_of(&config, "read"));
        running.push((strand, config));
    }
    let Storage::ClickHouse(settings) = &running[0].1.storage else {
        unreachable!("checked by check_clickhouse_nodes")
    };
    let databases = clickhouse.query("SELECT name FROM system.databases").await;
    assert!(
        databases.lines().any(|db| db == settings.database),
        "{what}: the nodes made no database {} in ClickHouse: {databases}",
        settings.database
    );

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    for (i, (strand, config)) in running.iter().enumerate() {
        let trace_id = format!("{:016x}{:016x}", now as u64, i + 1);
        let body = format!(
            r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"deploy-check"}}}}]}},"scopeSpans":[{{"spans":[{{"traceId":"{trace_id}","spanId":"00000000000000{:02x}","name":"sent to node {i}","kind":2,"startTimeUnixNano":"{}","endTimeUnixNano":"{}"}}]}}]}}]}}"#,
            i + 1,
            now - 1_000_000,
            now
        );
        let status = reqwest::Client::new()
            .post(strand.otlp_http_url("/v1/traces"))
            .bearer_auth(token_of(config, "ingest"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("strand answers")
            .status();
        assert_eq!(status, 200, "{what}: node {i} refuses a span");
        let (other, _) = &running[(i + 1) % running.len()];
        let found = eventually(DEADLINE, || async {
            let (status, trace) = other.get_json(&format!("/api/traces/{trace_id}")).await;
            let name = &trace["data"][0]["spans"][0]["operationName"];
            (status == 200 && *name == format!("sent to node {i}")).then_some(())
        })
        .await;
        assert!(
            found.is_some(),
            "{what}: a span sent to node {i} is not read back from node {}:\n{}",
            (i + 1) % running.len(),
            clickhouse.log()
        );
    }
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
    /// Started only by `docker compose --profile <name>`; none: always.
    #[serde(default)]
    profiles: Vec<String>,
    /// Strand's and the shop's images are built here; others are pulled.
    build: Option<Build>,
    image: String,
    /// Empty: the image's own command.
    #[serde(default)]
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
    #[serde(default)]
    ulimits: BTreeMap<String, Ulimit>,
    healthcheck: Option<Healthcheck>,
    stop_grace_period: Option<String>,
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
struct Ulimit {
    soft: u64,
    hard: u64,
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
    /// Restart this service when Compose restarts or recreates that one.
    #[serde(default)]
    restart: bool,
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

fn load_compose() -> Compose {
    serde_norway::from_str(&read(&repo_root().join("docker-compose.yml")))
        .expect("docker-compose.yml parses")
}

/// Where nginx reads its config.
const NGINX_CONF: &str = "/etc/nginx/nginx.conf";

/// Every service of docker-compose.yml as a [`Unit`], each checked on its
/// own: how its image is made, its variables (env files included), volumes,
/// published ports and health check.
fn compose_units(compose: &Compose) -> Vec<Unit> {
    let root = repo_root();
    let stages = dockerfile_stages(&read(&root.join("Dockerfile")));
    let mut units = Vec::new();
    for (name, service) in &compose.services {
        let role = role_of(name, &service.image);
        match (&service.build, role) {
            (Some(build), Role::Strand | Role::Shop) => {
                assert_eq!(
                    build.context, ".",
                    "{name}: builds from the repository root"
                );
                assert!(
                    stages.contains(&build.target),
                    "{name}: no such Dockerfile stage"
                );
                let target = if role == Role::Strand {
                    "strand"
                } else {
                    "shop"
                };
                assert_eq!(build.target, target, "{name}: builds the image it runs");
            }
            (None, Role::ClickHouse | Role::Balancer) => {
                assert!(
                    service.command.is_empty(),
                    "{name}: runs the image's own command"
                );
            }
            (Some(_), _) => panic!("{name}: {} is pulled, not built here", service.image),
            (None, _) => panic!("{name}: {} is built here: no `build`", service.image),
        }
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
        let mut config_files = BTreeMap::new();
        for volume in &service.volumes {
            let parts: Vec<&str> = volume.split(':').collect();
            let (source, target, mode) = match parts.as_slice() {
                [source, target] => (*source, *target, None),
                [source, target, mode] => (*source, *target, Some(*mode)),
                _ => panic!("{name}: {volume} is no source:path[:mode]"),
            };
            if let Some(file) = source.strip_prefix("./") {
                assert_eq!(mode, Some("ro"), "{name}: mounts {source} read-only");
                config_files.insert(PathBuf::from(target), read(&root.join(file)));
            } else {
                assert!(
                    compose.volumes.contains_key(source),
                    "{name}: {source} is no named volume"
                );
                assert!(
                    mode.is_none(),
                    "{name}: {volume}: a volume for data is writable"
                );
                persistent.insert(PathBuf::from(target));
            }
        }
        let ports: BTreeSet<u16> = match role {
            Role::Strand => listeners(&parse_strand(name, &service.command, &environment))
                .iter()
                .map(SocketAddr::port)
                .collect(),
            Role::Shop => parse_shop(name, &service.command, &environment)
                .listen
                .map(|l| l.port())
                .into_iter()
                .collect(),
            Role::ClickHouse => BTreeSet::from([CLICKHOUSE_HTTP_PORT]),
            Role::Balancer => {
                let config = config_files
                    .get(Path::new(NGINX_CONF))
                    .unwrap_or_else(|| panic!("{name}: no {NGINX_CONF} from the repository"));
                nginx_stream(name, config)
                    .servers
                    .iter()
                    .map(|(port, _)| *port)
                    .collect()
            }
        };
        for published in &service.ports {
            let (_, container) = published.rsplit_once(':').expect("host:container");
            let container: u16 = container.parse().expect("a port");
            assert!(
                ports.contains(&container),
                "{name}: publishes {container}, where nothing listens"
            );
        }
        if let Some(restart) = &service.restart {
            assert!(
                ["no", "always", "on-failure", "unless-stopped"].contains(&restart.as_str()),
                "{name}: restart: {restart}"
            );
        }
        for (limit, value) in &service.ulimits {
            assert_eq!(limit, "nofile", "{name}: ulimit {limit}");
            assert!(value.soft <= value.hard, "{name}: ulimit {limit}");
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
            let test: Vec<&str> = check.test.iter().map(String::as_str).collect();
            let url = match (role, test.as_slice()) {
                // curl is in both images of the Dockerfile (checked above),
                // wget in ClickHouse's.
                (Role::Strand | Role::Shop, ["CMD", "curl", "-fsS", url]) => *url,
                (Role::ClickHouse, ["CMD", "wget", "--spider", "-q", url]) => *url,
                (_, other) => panic!("{name}: unexpected health check {other:?}"),
            };
            let (host, port) = host_port(url);
            assert!(
                host == "127.0.0.1" || host == "localhost",
                "{name}: the health check asks the container itself"
            );
            let path = url.splitn(4, '/').nth(3).unwrap_or_default();
            health.push((format!("/{path}"), port));
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
            assert!(
                compose.services[dependency].healthcheck.is_some(),
                "{name} waits for {dependency}, which has no health check"
            );
        }
        units.push(Unit {
            name: name.clone(),
            image: service.image.clone(),
            role,
            args: service.command.clone(),
            env: environment,
            ports,
            persistent,
            scratch: BTreeSet::new(),
            health,
            secret_files,
            config_files,
            stop_seconds: service
                .stop_grace_period
                .as_deref()
                .map_or(COMPOSE_DEFAULT_STOP_SECONDS, seconds),
        });
    }
    units
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_file_matches_the_code() {
    let compose = load_compose();
    let units = compose_units(&compose);
    let mut host_ports = BTreeMap::new();
    let mut volume_owners: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, service) in &compose.services {
        for profile in &service.profiles {
            assert_eq!(profile, CLICKHOUSE_PROFILE, "{name}: unknown profile");
        }
        // A service starts with the services it waits for.
        for dependency in service.depends_on.keys() {
            let theirs = &compose.services[dependency].profiles;
            assert!(
                theirs.is_empty() || theirs.iter().all(|p| service.profiles.contains(p)),
                "{name} waits for {dependency}, which its profiles do not start"
            );
        }
        // Whichever profiles run, no two services take one host port.
        for published in &service.ports {
            let (host, _) = published.rsplit_once(':').expect("host:container");
            if let Some(other) = host_ports.insert(host.to_string(), name) {
                panic!("{name} and {other} both publish host port {host}");
            }
        }
        // Each database and write-ahead log has one owner.
        for volume in &service.volumes {
            let (source, _) = volume.split_once(':').expect("source:path");
            if compose.volumes.contains_key(source)
                && let Some(other) = volume_owners.insert(source, name)
            {
                panic!("{name} and {other} both mount volume {source}");
            }
        }
    }
    for volume in compose.volumes.keys() {
        assert!(
            volume_owners.contains_key(volume.as_str()),
            "volume {volume} is unused"
        );
    }
    // What `docker compose up` starts: the shop and its Strand.
    let default: Vec<Unit> = units
        .into_iter()
        .filter(|u| compose.services[&u.name].profiles.is_empty())
        .collect();
    let paths = check_units("docker-compose.yml", &default, &ComposeNetwork(&compose));
    check_running_strand("docker-compose.yml", &default, &paths).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_clickhouse_profile_matches_the_code() {
    const WHAT: &str = "docker-compose.yml --profile clickhouse";
    let compose = load_compose();
    let units = compose_units(&compose);
    let network = ComposeNetwork(&compose);
    let in_profile = |unit: &&Unit| {
        compose.services[&unit.name]
            .profiles
            .iter()
            .any(|p| p == CLICKHOUSE_PROFILE)
    };
    let of_role = |role: Role| -> Vec<&Unit> {
        units
            .iter()
            .filter(in_profile)
            .filter(|u| u.role == role)
            .collect()
    };
    let nodes = of_role(Role::Strand);
    assert!(nodes.len() >= 2, "{WHAT}: two Strand nodes or more");
    let [clickhouse] = of_role(Role::ClickHouse)[..] else {
        panic!("{WHAT}: one ClickHouse");
    };
    let [balancer] = of_role(Role::Balancer)[..] else {
        panic!("{WHAT}: one balancer");
    };
    assert!(
        of_role(Role::Shop).is_empty(),
        "{WHAT}: the shop runs once, without a profile"
    );
    let default_strand = units
        .iter()
        .find(|u| u.role == Role::Strand && !in_profile(u))
        .expect("the default Strand");

    let paths = check_clickhouse_nodes(WHAT, &nodes, clickhouse, &network);
    for node in &nodes {
        let service = &compose.services[&node.name];
        assert!(
            service.ports.is_empty(),
            "{WHAT}: {} publishes ports: the nodes are reached through {}",
            node.name,
            balancer.name
        );
        assert_eq!(
            node.image, default_strand.image,
            "{WHAT}: {} runs the default Strand's image",
            node.name
        );
        assert_eq!(
            node.secret_files, default_strand.secret_files,
            "{WHAT}: {} reads the default Strand's tokens",
            node.name
        );
        let dependency = balancer_dependency(&compose, &balancer.name, &node.name);
        assert_eq!(
            dependency.condition, "service_healthy",
            "{WHAT}: {} waits until {} is ready",
            balancer.name, node.name
        );
        assert!(
            dependency.restart,
            "{WHAT}: nginx resolves {} once: restart {} with it",
            node.name, balancer.name
        );
    }
    check_balancer(
        WHAT,
        balancer,
        &compose.services[&balancer.name].ports,
        &nodes,
        &network,
    );

    let senders: Vec<&Unit> = units.iter().filter(|u| !in_profile(u)).collect();
    check_running_clickhouse_nodes(WHAT, &nodes, &senders, &paths).await;
}

fn balancer_dependency<'a>(compose: &'a Compose, balancer: &str, node: &str) -> &'a DependsOn {
    compose.services[balancer]
        .depends_on
        .get(node)
        .unwrap_or_else(|| panic!("{balancer} does not wait for {node}"))
}

/// One nginx directive: `name args...;` or `name args... { block }`.
#[derive(Debug)]
struct NginxDirective {
    name: String,
    args: Vec<String>,
    block: Option<Vec<NginxDirective>>,
}

/// An nginx config file as directives (comments dropped; no quoting, which
/// the balancer's config does not use).
fn parse_nginx(file: &str, text: &str) -> Vec<NginxDirective> {
    let mut tokens = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default();
        assert!(
            !line.contains('"') && !line.contains('\''),
            "{file}: no quotes expected: {line}"
        );
        let mut word = String::new();
        for c in line.chars() {
            if c.is_whitespace() || matches!(c, '{' | '}' | ';') {
                if !word.is_empty() {
                    tokens.push(std::mem::take(&mut word));
                }
                if !c.is_whitespace() {
                    tokens.push(c.to_string());
                }
            } else {
                word.push(c);
            }
        }
        if !word.is_empty() {
            tokens.push(word);
        }
    }
    let mut tokens = tokens.into_iter();
    let directives = nginx_block(file, &mut tokens, false);
    assert!(tokens.next().is_none(), "{file}: text after the last block");
    directives
}

fn nginx_block(
    file: &str,
    tokens: &mut impl Iterator<Item = String>,
    nested: bool,
) -> Vec<NginxDirective> {
    let mut directives = Vec::new();
    let mut words: Vec<String> = Vec::new();
    while let Some(token) = tokens.next() {
        match token.as_str() {
            ";" | "{" => {
                assert!(!words.is_empty(), "{file}: `{token}` without a directive");
                let name = words.remove(0);
                let block = (token == "{").then(|| nginx_block(file, tokens, true));
                directives.push(NginxDirective {
                    name,
                    args: std::mem::take(&mut words),
                    block,
                });
            }
            "}" => {
                assert!(nested && words.is_empty(), "{file}: unbalanced `}}`");
                return directives;
            }
            _ => words.push(token),
        }
    }
    assert!(!nested, "{file}: a block is not closed");
    assert!(words.is_empty(), "{file}: a directive without `;`");
    directives
}

/// What nginx's `stream {}` block does: its upstreams and which port
/// passes to which.
struct NginxStream {
    upstreams: BTreeMap<String, NginxUpstream>,
    /// Each `server {}`: the port it listens on and its `proxy_pass`.
    servers: Vec<(u16, String)>,
}

struct NginxUpstream {
    /// `host:port` of each `server`.
    servers: Vec<(String, u16)>,
    /// The `hash` key: each client (by that key) to one server.
    hash: Option<String>,
}

fn nginx_stream(unit: &str, text: &str) -> NginxStream {
    let file = format!("{unit}'s {NGINX_CONF}");
    let top = parse_nginx(&file, text);
    assert!(
        top.iter().any(|d| d.name == "events" && d.block.is_some()),
        "{file}: nginx needs an events block"
    );
    let mut streams = top.iter().filter(|d| d.name == "stream");
    let stream = streams
        .next()
        .and_then(|d| d.block.as_ref())
        .unwrap_or_else(|| panic!("{file}: no stream block: the balancer passes TCP through"));
    assert!(streams.next().is_none(), "{file}: one stream block");
    let mut result = NginxStream {
        upstreams: BTreeMap::new(),
        servers: Vec::new(),
    };
    for directive in stream {
        match (directive.name.as_str(), &directive.block) {
            ("upstream", Some(block)) => {
                let [name] = &directive.args[..] else {
                    panic!("{file}: an upstream has one name");
                };
                let mut upstream = NginxUpstream {
                    servers: Vec::new(),
                    hash: None,
                };
                for entry in block {
                    match entry.name.as_str() {
                        "server" => {
                            let address = entry.args.first().expect("an address");
                            let (host, port) = address
                                .rsplit_once(':')
                                .unwrap_or_else(|| panic!("{file}: {address} names no port"));
                            upstream
                                .servers
                                .push((host.to_string(), port.parse().expect("a port")));
                        }
                        "hash" => upstream.hash = entry.args.first().cloned(),
                        _ => {}
                    }
                }
                assert!(
                    result.upstreams.insert(name.clone(), upstream).is_none(),
                    "{file}: upstream {name} twice"
                );
            }
            ("server", Some(block)) => {
                let arg = |name: &str| {
                    let found: Vec<&NginxDirective> =
                        block.iter().filter(|d| d.name == name).collect();
                    let [directive] = found[..] else {
                        panic!("{file}: each server has one {name}");
                    };
                    directive.args.first().expect("an argument").clone()
                };
                let listen = arg("listen");
                let port = listen
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| panic!("{file}: listen {listen} names no port"));
                result.servers.push((port, arg("proxy_pass")));
            }
            (name, Some(_)) => panic!("{file}: unexpected block {name} in stream"),
            _ => {}
        }
    }
    result
}

/// The balancer in front of the Strand `nodes`: each port it listens on
/// passes to one listener of every node (all three are served), the OTLP
/// ports keep each client on one node (a node keeps the running total of the
/// delta series it takes), and each port is published to the host.
fn check_balancer(
    what: &str,
    balancer: &Unit,
    published: &[String],
    nodes: &[&Unit],
    network: &dyn Network,
) {
    let name = &balancer.name;
    let stream = nginx_stream(name, &balancer.config_files[Path::new(NGINX_CONF)]);
    let strand = parse_strand(&nodes[0].name, &nodes[0].args, &nodes[0].env);
    let node_names: BTreeSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    let mut served = BTreeMap::new();
    for (listen, pass) in &stream.servers {
        let upstream = stream.upstreams.get(pass).unwrap_or_else(|| {
            panic!("{what}: {name}'s port {listen} passes to no upstream {pass}")
        });
        let mut reached = BTreeSet::new();
        let mut node_ports = BTreeSet::new();
        for (host, port) in &upstream.servers {
            let (unit, container_port) = network
                .resolve(host, *port)
                .unwrap_or_else(|| panic!("{what}: {name}'s {host}:{port} reaches nothing"));
            assert!(
                node_names.contains(unit.as_str()),
                "{what}: {name}'s {host}:{port} is no Strand node"
            );
            assert!(
                reached.insert(unit.clone()),
                "{what}: {name}'s upstream {pass} names {unit} twice"
            );
            node_ports.insert(container_port);
        }
        assert_eq!(
            reached.iter().map(String::as_str).collect::<BTreeSet<_>>(),
            node_names,
            "{what}: {name}'s port {listen} balances over every node"
        );
        let [node_port] = node_ports.iter().copied().collect::<Vec<_>>()[..] else {
            panic!(
                "{what}: {name}'s port {listen} reaches one listener on every node: {node_ports:?}"
            );
        };
        assert!(
            listeners(&strand).iter().any(|l| l.port() == node_port),
            "{what}: {name}'s port {listen} passes to {node_port}, where Strand does not listen"
        );
        if node_port != strand.http.port() {
            assert_eq!(
                upstream.hash.as_deref(),
                Some("$remote_addr"),
                "{what}: {name}'s OTLP port {listen} must send each client to one node (`hash $remote_addr`): OTLP delta metrics need it"
            );
        }
        assert!(
            served.insert(node_port, *listen).is_none(),
            "{what}: {name} serves Strand's port {node_port} twice"
        );
    }
    let all: BTreeSet<u16> = listeners(&strand).iter().map(SocketAddr::port).collect();
    assert_eq!(
        served.keys().copied().collect::<BTreeSet<_>>(),
        all,
        "{what}: {name} serves each of Strand's listeners"
    );
    let published: BTreeSet<u16> = published
        .iter()
        .map(|p| {
            p.rsplit_once(':')
                .expect("host:container")
                .1
                .parse()
                .expect("a port")
        })
        .collect();
    assert_eq!(
        published, balancer.ports,
        "{what}: {name} publishes every port it listens on"
    );
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

#[derive(Clone, Default)]
struct Manifests {
    services: Vec<Service>,
    deployments: Vec<Deployment>,
    stateful_sets: Vec<StatefulSet>,
    claims: Vec<PersistentVolumeClaim>,
    secrets: Vec<Secret>,
    autoscalers: Vec<HorizontalPodAutoscaler>,
}

impl Manifests {
    /// `(kind, name)` of every object.
    fn ids(&self) -> Vec<(&'static str, String)> {
        fn ids_of<T>(
            kind: &'static str,
            items: &[T],
            meta: fn(&T) -> &ObjectMeta,
        ) -> Vec<(&'static str, String)> {
            items.iter().map(|i| (kind, name_of(meta(i)))).collect()
        }
        [
            ids_of("Service", &self.services, |o| &o.metadata),
            ids_of("Deployment", &self.deployments, |o| &o.metadata),
            ids_of("StatefulSet", &self.stateful_sets, |o| &o.metadata),
            ids_of("PersistentVolumeClaim", &self.claims, |o| &o.metadata),
            ids_of("Secret", &self.secrets, |o| &o.metadata),
            ids_of("HorizontalPodAutoscaler", &self.autoscalers, |o| {
                &o.metadata
            }),
        ]
        .concat()
    }

    /// Both sets of objects, as applied into one namespace.
    fn merged(&self, other: &Manifests) -> Manifests {
        let mut all = self.clone();
        all.services.extend(other.services.iter().cloned());
        all.deployments.extend(other.deployments.iter().cloned());
        all.stateful_sets
            .extend(other.stateful_sets.iter().cloned());
        all.claims.extend(other.claims.iter().cloned());
        all.secrets.extend(other.secrets.iter().cloned());
        all.autoscalers.extend(other.autoscalers.iter().cloned());
        all
    }

    /// Each Secret's `stringData`.
    fn secret_data(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        self.secrets
            .iter()
            .map(|s| {
                (
                    name_of(&s.metadata),
                    s.string_data.clone().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Every StatefulSet's and Deployment's pod.
    fn workloads(&self) -> Vec<Workload<'_>> {
        let standalone: BTreeSet<String> =
            self.claims.iter().map(|c| name_of(&c.metadata)).collect();
        let sets = self.stateful_sets.iter().map(|set| {
            let spec = set.spec.as_ref().expect("a spec");
            let templates = spec
                .volume_claim_templates
                .iter()
                .flatten()
                .map(|c| name_of(&c.metadata))
                .collect();
            (name_of(&set.metadata), &spec.template, templates)
        });
        let deployments = self.deployments.iter().map(|d| {
            let spec = d.spec.as_ref().expect("a spec");
            (name_of(&d.metadata), &spec.template, standalone.clone())
        });
        sets.chain(deployments)
            .map(|(name, template, claims)| {
                let labels = template
                    .metadata
                    .as_ref()
                    .and_then(|m| m.labels.clone())
                    .unwrap_or_default();
                Workload {
                    name,
                    labels,
                    pod: template.spec.as_ref().expect("a pod spec"),
                    claims,
                }
            })
            .collect()
    }
}

/// A StatefulSet's or a Deployment's pod.
struct Workload<'a> {
    name: String,
    labels: BTreeMap<String, String>,
    pod: &'a PodSpec,
    /// The volume claims its pods may mount: a StatefulSet's templates, a
    /// Deployment's standalone claims.
    claims: BTreeSet<String>,
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

/// Every manifest in `dir` (of the repository), which its
/// kustomization.yaml lists.
fn load_manifests(dir: &str) -> Manifests {
    let dir = repo_root().join(dir);
    let kustomization: Kustomization =
        serde_norway::from_str(&read(&dir.join("kustomization.yaml"))).expect("kustomization");
    let mut files: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
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
    assert_eq!(
        listed,
        files,
        "{}/kustomization.yaml lists every manifest",
        dir.display()
    );

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
                (Some("autoscaling/v2"), Some("HorizontalPodAutoscaler")) => {
                    manifests.autoscalers.push(typed(file, &doc))
                }
                other => panic!("{file}: unexpected kind {other:?}"),
            }
        }
    }
    manifests
}

fn name_of(meta: &ObjectMeta) -> String {
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
    let scratch = container
        .volume_mounts
        .iter()
        .flatten()
        .filter(|mount| {
            pod.volumes
                .iter()
                .flatten()
                .any(|v| v.name == mount.name && v.empty_dir.is_some())
        })
        .map(|mount| PathBuf::from(&mount.mount_path))
        .collect();
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
    let grace = pod
        .termination_grace_period_seconds
        .unwrap_or(K8S_DEFAULT_GRACE_SECONDS);
    Unit {
        name: name.to_string(),
        role: role_of(name, &image),
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
        scratch,
        health,
        secret_files,
        config_files: BTreeMap::new(),
        stop_seconds: u64::try_from(grace).expect("a grace period")
            - pre_stop_seconds(name, container),
    }
}

/// How long a container's preStop hook pauses (a pause before SIGTERM,
/// which the grace period includes).
fn pre_stop_seconds(name: &str, container: &Container) -> u64 {
    let Some(hook) = container
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
    else {
        return 0;
    };
    if let Some(sleep) = &hook.sleep {
        return u64::try_from(sleep.seconds).expect("seconds");
    }
    match hook.exec.as_ref().and_then(|e| e.command.as_deref()) {
        Some([sleep, seconds]) if sleep == "sleep" => seconds
            .parse()
            .unwrap_or_else(|_| panic!("{name}: preStop sleeps {seconds:?}")),
        other => panic!("{name}: unexpected preStop hook {other:?}"),
    }
}

/// A Kubernetes quantity of bytes (`2Gi`, `1536Mi`, `500M`, `1073741824`).
fn bytes_of(quantity: &Quantity) -> u64 {
    let text = quantity.0.as_str();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .unwrap_or_else(|_| panic!("{text} is no whole quantity"));
    let factor: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => panic!("{text}: unexpected unit"),
    };
    number * factor
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_manifests_match_the_code() {
    let manifests = load_manifests("deploy/k8s");
    assert!(
        manifests.autoscalers.is_empty(),
        "deploy/k8s: one Strand, not scaled"
    );
    let secrets = manifests.secret_data();
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
        assert_eq!(
            unit.role,
            Role::Strand,
            "{name}: the StatefulSet runs Strand"
        );
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
    let strand = units
        .iter()
        .find(|u| u.role == Role::Strand)
        .expect("Strand");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_clickhouse_manifests_match_the_code() {
    const WHAT: &str = "deploy/k8s/clickhouse";
    let base = load_manifests("deploy/k8s");
    let variant = load_manifests(WHAT);
    // Applied next to deploy/k8s, into its namespace: nothing may collide,
    // and each Service must still select one workload.
    let all = base.merged(&variant);
    let mut seen = BTreeSet::new();
    for (kind, name) in all.ids() {
        assert!(
            seen.insert((kind, name.clone())),
            "{WHAT}: {kind} {name} twice in the namespace"
        );
    }
    let secrets = all.secret_data();
    let network = K8sNetwork {
        manifests: &all,
        pods: all
            .workloads()
            .into_iter()
            .map(|w| (w.name, w.labels, w.pod.containers[0].clone()))
            .collect(),
    };
    for service in &all.services {
        let name = name_of(&service.metadata);
        for port in service
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .expect("ports")
        {
            assert!(
                network
                    .resolve(&name, u16::try_from(port.port).expect("a port"))
                    .is_some(),
                "{WHAT}: Service {name}'s port {} reaches no container port",
                port.port
            );
        }
    }
    let [deployment] = &variant.deployments[..] else {
        panic!("{WHAT}: one Deployment, Strand's");
    };
    let [clickhouse_set] = &variant.stateful_sets[..] else {
        panic!("{WHAT}: one StatefulSet, ClickHouse's");
    };
    let [autoscaler] = &variant.autoscalers[..] else {
        panic!("{WHAT}: one HorizontalPodAutoscaler");
    };
    assert!(
        variant.claims.is_empty(),
        "{WHAT}: no volume claims of its own"
    );

    // Strand: a Deployment of interchangeable pods.
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
        !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
        "{WHAT}: {name}'s selector matches its pods"
    );
    let node = unit_of(&name, pod, &BTreeSet::new(), &secrets);
    let replicas = spec.replicas.unwrap_or(1);
    assert!(replicas >= 2, "{WHAT}: {name} runs two pods or more");
    assert!(
        node.persistent.is_empty(),
        "{WHAT}: {name}'s pods cannot share a volume claim"
    );
    assert_ne!(
        spec.strategy.as_ref().and_then(|s| s.type_.as_deref()),
        Some("Recreate"),
        "{WHAT}: {name} keeps serving while it rolls"
    );
    let config = parse_strand(&name, &node.args, &node.env);
    let container = &pod.containers[0];
    let wal = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| Path::new(&m.mount_path) == config.data_dir)
        .and_then(|m| pod.volumes.iter().flatten().find(|v| v.name == m.name))
        .and_then(|v| v.empty_dir.as_ref())
        .unwrap_or_else(|| panic!("{WHAT}: {name}'s write-ahead log is on no emptyDir"));
    let room = wal.size_limit.as_ref().map(bytes_of).unwrap_or_else(|| {
        panic!("{WHAT}: {name}'s emptyDir has no sizeLimit, the write-ahead log no bound there")
    });
    assert!(
        room > config.limits.wal_max_bytes,
        "{WHAT}: {name}'s write-ahead log may grow to {} bytes while ClickHouse is down, its emptyDir holds {room}: the pod would be evicted",
        config.limits.wal_max_bytes
    );
    let memory = container
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))
        .map(bytes_of)
        .expect("checked by unit_of");
    let budget = config
        .memory
        .as_ref()
        .map(|m| m.limit)
        .unwrap_or_else(|| panic!("{WHAT}: {name} has no --memory-limit"));
    assert!(
        budget < memory,
        "{WHAT}: {name}'s --memory-limit is not below its container's"
    );
    let service = all
        .services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(name.as_str()))
        .unwrap_or_else(|| panic!("{WHAT}: no Service {name}"));
    for port in &node.ports {
        assert_eq!(
            network.resolve(&name, *port),
            Some((name.clone(), *port)),
            "{WHAT}: Service {name} exposes {port}"
        );
    }
    assert_eq!(
        service
            .spec
            .as_ref()
            .and_then(|s| s.session_affinity.as_deref()),
        Some("ClientIP"),
        "{WHAT}: Service {name} must keep each client on one pod: OTLP delta metrics need it"
    );
    // The tokens of deploy/k8s's Strand.
    let base_secrets = base.secret_data();
    let base_units: Vec<Unit> = base
        .workloads()
        .into_iter()
        .map(|w| unit_of(&w.name, w.pod, &w.claims, &base_secrets))
        .collect();
    let base_strand = base_units
        .iter()
        .find(|u| u.role == Role::Strand)
        .expect("deploy/k8s's Strand");
    let tokens = |unit: &Unit| {
        let config = parse_strand(&unit.name, &unit.args, &unit.env);
        config
            .auth
            .token_file
            .and_then(|file| unit.secret_files.get(&file).cloned())
    };
    assert!(tokens(&node).is_some(), "{WHAT}: {name} reads a token file");
    assert_eq!(
        tokens(&node),
        tokens(base_strand),
        "{WHAT}: {name} reads deploy/k8s's Strand's tokens"
    );

    // ClickHouse: one server as a StatefulSet with its volume.
    let clickhouse_name = name_of(&clickhouse_set.metadata);
    let set_spec = clickhouse_set.spec.as_ref().expect("a spec");
    assert_eq!(
        set_spec.replicas,
        Some(1),
        "{WHAT}: one ClickHouse server (more pods of {clickhouse_name} would be servers of their own, not replicas)"
    );
    let governing = set_spec
        .service_name
        .as_deref()
        .expect("a governing Service");
    assert_eq!(
        all.services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(governing))
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.cluster_ip.as_deref()),
        Some("None"),
        "{WHAT}: {clickhouse_name}'s governing Service {governing} exists and is headless"
    );
    let templates = set_spec
        .volume_claim_templates
        .iter()
        .flatten()
        .map(|c| name_of(&c.metadata))
        .collect();
    let clickhouse = unit_of(
        &clickhouse_name,
        set_spec.template.spec.as_ref().expect("a pod spec"),
        &templates,
        &secrets,
    );
    let paths = check_clickhouse_nodes(WHAT, &[&node], &clickhouse, &network);

    // The autoscaler scales that Deployment on CPU.
    let scaling = autoscaler.spec.as_ref().expect("a spec");
    let target = &scaling.scale_target_ref;
    assert_eq!(
        (
            target.api_version.as_deref(),
            target.kind.as_str(),
            target.name.as_str()
        ),
        (Some("apps/v1"), "Deployment", name.as_str()),
        "{WHAT}: the autoscaler scales Deployment {name}"
    );
    let min = scaling.min_replicas.unwrap_or(1);
    assert!(
        min >= 2 && scaling.max_replicas > min,
        "{WHAT}: the autoscaler keeps two pods or more, and may add some"
    );
    assert!(
        (min..=scaling.max_replicas).contains(&replicas),
        "{WHAT}: {name}'s replicas are within the autoscaler's range"
    );
    let cpu = scaling
        .metrics
        .iter()
        .flatten()
        .filter(|m| m.type_ == "Resource")
        .filter_map(|m| m.resource.as_ref())
        .find(|r| r.name == "cpu")
        .unwrap_or_else(|| panic!("{WHAT}: the autoscaler follows CPU"));
    assert_eq!(
        cpu.target.type_, "Utilization",
        "{WHAT}: a share of the CPU request"
    );
    assert!(
        cpu.target
            .average_utilization
            .is_some_and(|u| (1..=100).contains(&u)),
        "{WHAT}: a CPU utilisation target in percent of the request"
    );

    // Two pods with the Deployment's settings over one ClickHouse, taking
    // the telemetry of deploy/k8s's shop.
    let senders: Vec<&Unit> = base_units.iter().collect();
    check_running_clickhouse_nodes(WHAT, &[&node, &node], &senders, &paths).await;
}
