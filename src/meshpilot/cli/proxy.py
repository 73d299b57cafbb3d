"""`meshpilot proxy sidecar|router` runs an Envoy for a workload; `meshpilot bootstrap` prints
the bootstrap such an Envoy would get.

Both turn the identity options into a `NodeInfo` and build the bootstrap from it. `proxy` then
writes the bootstrap to disk and keeps Envoy running under `EnvoyProcess` until SIGTERM or
SIGINT, when it stops Envoy and exits 0. Mistakes in the options are reported as one line on
stderr with exit code 2, the usual code for usage errors, never as a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from meshpilot.agent.bootstrap import build_bootstrap, render_bootstrap_json, write_bootstrap
from meshpilot.agent.certificates import AgentCertificates
from meshpilot.agent.envoy_process import EnvoyOptions, EnvoyProcess, find_envoy_binary
from meshpilot.agent.node import (
    DEFAULT_ADMIN_PORT,
    DEFAULT_NAMESPACE,
    DEFAULT_OUTBOUND_BIND,
    HostPort,
    NodeInfo,
    XdsVariant,
    is_ip,
    parse_host_port,
    parse_istio_node_id,
)
from meshpilot.agent.sds_server import SOCKET_NAME, SdsServer
from meshpilot.model import NodeType
from meshpilot.xds.secure_names import DEFAULT_CA_ADDRESS

logger = logging.getLogger(__name__)

USAGE_ERROR = 2
DEFAULT_DISCOVERY_ADDRESS = "127.0.0.1:15010"
_ADMIN_UP_TIMEOUT = 30.0
_READY_TIMEOUT = 60.0

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_LABEL_PREFIX = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_WORKLOAD_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


class LogLevel(enum.StrEnum):
    """Envoy's log levels; the agent's own logging follows the same choice."""

    TRACE = "trace"
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"
    OFF = "off"


_PYTHON_LOG_LEVELS = {
    LogLevel.TRACE: logging.DEBUG,
    LogLevel.DEBUG: logging.DEBUG,
    LogLevel.INFO: logging.INFO,
    LogLevel.WARNING: logging.WARNING,
    LogLevel.ERROR: logging.ERROR,
    LogLevel.CRITICAL: logging.CRITICAL,
    LogLevel.OFF: logging.CRITICAL,
}

# Option declarations, shared by every command that builds a bootstrap.
DiscoveryAddressOption = Annotated[
    str,
    typer.Option(
        "--discovery-address", metavar="HOST:PORT", help="The xDS (ADS) server to get config from."
    ),
]
NodeIdOption = Annotated[
    str | None,
    typer.Option(
        "--node-id",
        help="xDS node id. Default: <type>~<ip>~<workload>.<ns>~<ns>.svc.cluster.local",
        show_default=False,
    ),
]
NamespaceOption = Annotated[
    str | None,
    typer.Option(
        "--namespace",
        help=f"Namespace. Default: from an Istio-form --node-id, else {DEFAULT_NAMESPACE}.",
        show_default=False,
    ),
]
WorkloadNameOption = Annotated[
    str | None,
    typer.Option(
        "--workload-name",
        help="Workload name. Default: from an Istio-form --node-id, else the host name.",
        show_default=False,
    ),
]
LabelsOption = Annotated[
    str, typer.Option("--labels", metavar="K=V,...", help="Workload labels.", show_default=False)
]
IpOption = Annotated[
    list[str] | None,
    typer.Option(
        "--ip", help="Instance IP; repeat or comma-separate for several.", show_default=False
    ),
]
OutboundBindOption = Annotated[
    str, typer.Option("--outbound-bind", metavar="IP", help="Address outbound listeners bind to.")
]
AppAddressOption = Annotated[
    str,
    typer.Option(
        "--app-address",
        metavar="HOST:PORT",
        help="The application behind the inbound listener. Default: 127.0.0.1:<service port>.",
        show_default=False,
    ),
]
NetworkOption = Annotated[str, typer.Option("--network", help="Network the instance is on.")]
ClusterIdOption = Annotated[
    str, typer.Option("--cluster-id", help="Registry cluster the instance belongs to.")
]
WorkloadGroupOption = Annotated[
    str,
    typer.Option(
        "--workload-group", metavar="NAME",
        help="Register this workload in a WorkloadGroup when it connects (no WorkloadEntry "
        "file needed); it is removed again after the proxy disconnects.",
    ),
]
ServiceAccountOption = Annotated[
    str,
    typer.Option(
        "--service-account", metavar="NAME",
        help="The workload's service account: its mesh identity spiffe://<trust domain>/ns/"
        "<namespace>/sa/<NAME> when no WorkloadEntry of a service names one.",
    ),
]
LocalityOption = Annotated[
    str,
    typer.Option(
        "--locality", metavar="REGION/ZONE/SUBZONE",
        help="Where the proxy runs, for locality-aware load balancing.",
    ),
]
AdminPortOption = Annotated[
    int, typer.Option("--admin-port", metavar="PORT", help="Envoy admin port on 127.0.0.1.")
]
XdsVariantOption = Annotated[
    XdsVariant, typer.Option("--xds-variant", help="State-of-the-world or incremental ADS.")
]


@dataclass(frozen=True, slots=True)
class IdentityArgs:
    """The identity options as typed; `node_info` validates them."""

    node_id: str | None = None
    namespace: str | None = None
    workload_name: str | None = None
    labels: str = ""
    ips: tuple[str, ...] = ()
    outbound_bind: str = DEFAULT_OUTBOUND_BIND
    app_address: str = ""
    network: str = ""
    cluster_id: str = ""
    locality: str = ""
    workload_group: str = ""
    admin_port: int = DEFAULT_ADMIN_PORT
    xds_variant: XdsVariant = XdsVariant.SOTW
    service_account: str = ""

    def node_info(self, proxy_type: NodeType, hostname: str) -> NodeInfo:
        """Validate and fill defaults; raise ValueError with a user-facing message."""
        from_id = parse_istio_node_id(self.node_id) if self.node_id else None
        ips = parse_ips(self.ips) or ((from_id.ip,) if from_id and from_id.ip else ())
        return NodeInfo(
            workload_name=_check_workload_name(
                self.workload_name or (from_id.workload_name if from_id else "") or _host(hostname)
            ),
            namespace=_check_namespace(
                self.namespace or (from_id.namespace if from_id else "") or DEFAULT_NAMESPACE
            ),
            proxy_type=proxy_type,
            node_id=_check_node_id(self.node_id),
            labels=parse_labels(self.labels),
            instance_ips=ips,
            network=self.network,
            cluster_id=self.cluster_id,
            locality=_check_locality(self.locality),
            workload_group=self.workload_group,
            service_account=self.service_account,
            outbound_bind=_check_ip(self.outbound_bind, "--outbound-bind"),
            app_address=_app_address(self.app_address),
            admin_address=str(HostPort("127.0.0.1", _check_port(self.admin_port))),
            xds_variant=self.xds_variant,
        )


@dataclass(frozen=True, slots=True)
class AgentArgs:
    """The CSR flow: the agent makes its key, gets it signed, serves it to Envoy over SDS."""

    token_file: Path | None = None
    root_cert: Path | None = None
    ca_address: str = ""
    cert_ttl: float = 0.0


@dataclass(frozen=True, slots=True)
class RunArgs:
    """How to run Envoy, as opposed to who it is."""

    log_level: LogLevel
    envoy_binary: Path | None
    config_path: Path | None
    envoy_log_file: Path | None
    concurrency: int


def _check_locality(text: str) -> str:
    parts = text.split("/") if text else []
    if len(parts) > 3 or (parts and not parts[0]):
        raise ValueError(f"--locality: {text!r} is not region[/zone[/subzone]]")
    return text


def parse_labels(text: str) -> dict[str, str]:
    """`k=v,k2=v2` into a dict, checking Kubernetes label syntax."""
    labels: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ValueError(f"--labels: {item!r} is not KEY=VALUE")
        if not _is_label_key(key):
            raise ValueError(f"--labels: {key!r} is not a valid label key")
        if value and not _LABEL_NAME.fullmatch(value):
            raise ValueError(f"--labels: {value!r} (for {key}) is not a valid label value")
        if key in labels:
            raise ValueError(f"--labels: {key!r} is given twice")
        labels[key] = value
    return labels


def parse_ips(values: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Flatten repeated and comma-separated `--ip` values, checking each is an IP."""
    ips = [ip.strip() for value in values for ip in value.split(",") if ip.strip()]
    return tuple(_check_ip(ip, "--ip") for ip in ips)


def _is_label_key(key: str) -> bool:
    prefix, slash, name = key.rpartition("/")
    if slash and not _LABEL_PREFIX.fullmatch(prefix):
        return False
    return _LABEL_NAME.fullmatch(name) is not None


def _address(value: str, option: str) -> HostPort:
    try:
        return parse_host_port(value)
    except ValueError as err:
        raise ValueError(f"{option}: {err}") from None


def _app_address(value: str) -> str:
    # Normalised (IPv6 bracketed) because the server splits it back into host and port.
    return str(_address(value, "--app-address")) if value else ""


def _check_ip(value: str, option: str) -> str:
    if not is_ip(value):
        raise ValueError(f"{option}: {value!r} is not an IP address")
    return value


def _check_port(port: int) -> int:
    if not 0 < port < 65536:
        raise ValueError(f"--admin-port: {port} is not between 1 and 65535")
    return port


def _check_namespace(namespace: str) -> str:
    if not _DNS_LABEL.fullmatch(namespace):
        raise ValueError(f"--namespace: {namespace!r} is not a DNS label (a-z, 0-9, '-')")
    return namespace


def _check_workload_name(name: str) -> str:
    if not _WORKLOAD_NAME.fullmatch(name):
        raise ValueError(f"--workload-name: {name!r} is not a valid name (A-Z, a-z, 0-9, '-_.')")
    return name


def _check_node_id(node_id: str | None) -> str:
    if node_id is None:
        return ""
    if not node_id or any(char.isspace() for char in node_id):
        raise ValueError(f"--node-id: {node_id!r} must be non-empty without spaces")
    return node_id


def _host(hostname: str) -> str:
    """The first label of the host name, as a default workload name."""
    return hostname.split(".", 1)[0].lower()


def _print_error(message: str) -> None:
    # soft_wrap keeps the message on one line whatever the terminal width.
    Console(stderr=True, soft_wrap=True, highlight=False).print(
        f"[bold red]error:[/] {escape(message)}"
    )


def _fail(message: str, code: int) -> NoReturn:
    _print_error(message)
    raise typer.Exit(code)


@contextlib.contextmanager
def _usage_errors() -> Iterator[None]:
    """Turn the ValueErrors of option validation into a one-line message and exit code 2."""
    try:
        yield
    except ValueError as err:
        _fail(str(err), USAGE_ERROR)


def _resolve_inputs(
    proxy_type: NodeType, identity: IdentityArgs, discovery_address: str
) -> tuple[NodeInfo, HostPort]:
    with _usage_errors():
        node = identity.node_info(proxy_type, socket.gethostname())
        discovery = _address(discovery_address, "--discovery-address")
    return node, discovery


def _resolve_binary(explicit: Path | None) -> Path:
    if explicit is not None:
        if not explicit.is_file():
            _fail(f"--envoy-binary: {explicit} does not exist", USAGE_ERROR)
        return explicit
    try:
        return find_envoy_binary()
    except FileNotFoundError as err:
        _fail(f"{err} (--envoy-binary)", 1)


def _configure_logging(level: LogLevel) -> None:
    handler = RichHandler(console=Console(stderr=True), show_path=False)
    logging.basicConfig(
        level=_PYTHON_LOG_LEVELS[level], format="%(message)s", datefmt="[%X]", handlers=[handler]
    )


@contextlib.contextmanager
def _config_directory(explicit: Path | None) -> Iterator[Path]:
    if explicit is not None:
        yield explicit
        return
    with tempfile.TemporaryDirectory(prefix="meshpilot-") as directory:
        yield Path(directory)


def _agent(agent: AgentArgs, discovery: HostPort, directory: Path) -> AgentCertificates | None:
    if agent.token_file is None:
        return None
    if agent.root_cert is None:
        _fail("--token-file needs --root-cert (the mesh root that the server's certificate "
              "chains to)", USAGE_ERROR)
    try:
        token = agent.token_file.read_text(encoding="utf-8").strip()
        root = agent.root_cert.read_bytes()
    except OSError as err:
        _fail(f"cannot read the token or root: {err}", USAGE_ERROR)
    try:
        ca_address = str(_address(agent.ca_address, "--ca-address")) if agent.ca_address else \
            f"{discovery.host}:{parse_host_port(DEFAULT_CA_ADDRESS).port}"
    except ValueError as err:
        _fail(str(err), USAGE_ERROR)
    return AgentCertificates(directory / "security", root, token, ca_address, str(discovery),
                             agent.cert_ttl)


def _run_proxy(
    proxy_type: NodeType, identity: IdentityArgs, discovery_address: str, run: RunArgs,
    agent_args: AgentArgs | None = None,
) -> None:
    node, discovery = _resolve_inputs(proxy_type, identity, discovery_address)
    binary = _resolve_binary(run.envoy_binary)
    _configure_logging(run.log_level)
    with _config_directory(run.config_path) as directory:
        agent = _agent(agent_args or AgentArgs(), discovery, directory)
        socket = directory / SOCKET_NAME if agent is not None else None
        try:
            config = write_bootstrap(build_bootstrap(node, discovery, socket), directory)
        except OSError as err:
            _fail(f"cannot write the bootstrap: {err}", 1)
        logger.info("proxy %s: bootstrap written to %s", node.effective_node_id, config)
        options = EnvoyOptions(
            binary=binary,
            config_path=config,
            admin_address=parse_host_port(node.admin_address),
            log_level=run.log_level,
            log_file=run.envoy_log_file,
            concurrency=run.concurrency,
        )
        code = asyncio.run(_serve(options, discovery, agent, socket))
    if code:
        raise typer.Exit(code)


async def _serve(
    options: EnvoyOptions, discovery: HostPort, agent: AgentCertificates | None = None,
    socket: Path | None = None,
) -> int:
    """Run Envoy until SIGTERM/SIGINT; the exit code for the process."""
    loop = asyncio.get_running_loop()
    shutdown = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, shutdown.set)
    sds: SdsServer | None = None
    renewals: asyncio.Task[None] | None = None
    if agent is not None and socket is not None:
        # The certificate before Envoy: its xDS connection needs it.
        first = asyncio.create_task(agent.first())
        stop = asyncio.create_task(shutdown.wait())
        await asyncio.wait({first, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not first.done():
            first.cancel()
            return 0
        stop.cancel()
        sds = SdsServer(first.result())
        try:
            await sds.start(socket)
        except OSError as err:
            _print_error(str(err))
            return 1
        renewals = asyncio.create_task(agent.run(sds.update))
    envoy = EnvoyProcess(options)
    try:
        await envoy.start()
    except OSError as err:
        _print_error(f"cannot start envoy: {err}")
        return 1
    readiness = asyncio.create_task(_report_readiness(envoy, options.admin_address, discovery))
    await shutdown.wait()
    logger.info("shutting down")
    readiness.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await readiness
    await envoy.stop()
    if renewals is not None:
        renewals.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewals
    if sds is not None:
        await sds.stop()
    return 0


async def _report_readiness(envoy: EnvoyProcess, admin: HostPort, discovery: HostPort) -> None:
    if not await envoy.wait_admin(_ADMIN_UP_TIMEOUT):
        logger.warning("envoy admin at %s is not answering", admin)
        return
    logger.info("envoy admin is up at http://%s", admin)
    if await envoy.wait_ready(_READY_TIMEOUT):
        logger.info("envoy is LIVE")
    else:
        logger.warning("envoy is not LIVE yet: is the discovery server at %s serving?", discovery)


proxy_app = typer.Typer(help="Run an Envoy proxy configured by meshpilot.", no_args_is_help=True)


def _proxy_command(proxy_type: NodeType) -> Callable[..., None]:
    """One command per proxy type; they differ only in the type they announce."""

    def command(
        discovery_address: DiscoveryAddressOption = DEFAULT_DISCOVERY_ADDRESS,
        node_id: NodeIdOption = None,
        namespace: NamespaceOption = None,
        workload_name: WorkloadNameOption = None,
        labels: LabelsOption = "",
        ip: IpOption = None,
        outbound_bind: OutboundBindOption = DEFAULT_OUTBOUND_BIND,
        app_address: AppAddressOption = "",
        network: NetworkOption = "",
        cluster_id: ClusterIdOption = "",
        locality: LocalityOption = "",
        workload_group: WorkloadGroupOption = "",
        service_account: ServiceAccountOption = "",
        admin_port: AdminPortOption = DEFAULT_ADMIN_PORT,
        xds_variant: XdsVariantOption = XdsVariant.SOTW,
        log_level: Annotated[
            LogLevel, typer.Option("--log-level", help="Envoy's (and the agent's) log level.")
        ] = LogLevel.INFO,
        envoy_binary: Annotated[
            Path | None,
            typer.Option("--envoy-binary", help="Envoy to run. Default: the bundled one."),
        ] = None,
        config_path: Annotated[
            Path | None,
            typer.Option(
                "--config-path",
                metavar="DIR",
                help="Where to write the bootstrap. Default: a temporary directory.",
            ),
        ] = None,
        envoy_log_file: Annotated[
            Path | None,
            typer.Option("--envoy-log-file", help="Append Envoy's output here, not to stderr."),
        ] = None,
        concurrency: Annotated[
            int, typer.Option("--concurrency", min=1, help="Envoy worker threads.")
        ] = 2,
        token_file: Annotated[
            Path | None,
            typer.Option("--token-file", help="Bootstrap token (meshpilot token create): make "
                         "the key here, get it signed by CSR, serve it to Envoy by local SDS "
                         "and use the secure xDS port (--discovery-address HOST:15012)."),
        ] = None,
        root_cert: Annotated[
            Path | None,
            typer.Option("--root-cert", help="The mesh root (the CA dir's root-cert.pem) that "
                         "the discovery server's certificate must chain to."),
        ] = None,
        ca_address: Annotated[
            str,
            typer.Option("--ca-address", metavar="HOST:PORT", help="Where the first certificate "
                         "request goes. Default: the discovery host, port 15013."),
        ] = "",
        cert_ttl: Annotated[
            float, typer.Option("--cert-ttl", min=0, help="Certificate lifetime to ask for, in "
                                "seconds (the server caps it; 0: the server's).")
        ] = 0.0,
    ) -> None:
        identity = IdentityArgs(
            node_id=node_id,
            namespace=namespace,
            workload_name=workload_name,
            labels=labels,
            ips=tuple(ip or ()),
            outbound_bind=outbound_bind,
            app_address=app_address,
            network=network,
            cluster_id=cluster_id,
            locality=locality,
            workload_group=workload_group,
            service_account=service_account,
            admin_port=admin_port,
            xds_variant=xds_variant,
        )
        run = RunArgs(log_level, envoy_binary, config_path, envoy_log_file, concurrency)
        agent = AgentArgs(token_file, root_cert, ca_address, cert_ttl)
        _run_proxy(proxy_type, identity, discovery_address, run, agent)

    return command


proxy_app.command("sidecar", help="Run Envoy as one workload's sidecar until SIGTERM/SIGINT.")(
    _proxy_command(NodeType.SIDECAR)
)
proxy_app.command("router", help="Run Envoy as a gateway (router) until SIGTERM/SIGINT.")(
    _proxy_command(NodeType.ROUTER)
)


def bootstrap_command(
    proxy_type: Annotated[
        NodeType, typer.Option("--type", help="The kind of proxy the bootstrap is for.")
    ] = NodeType.SIDECAR,
    discovery_address: DiscoveryAddressOption = DEFAULT_DISCOVERY_ADDRESS,
    node_id: NodeIdOption = None,
    namespace: NamespaceOption = None,
    workload_name: WorkloadNameOption = None,
    labels: LabelsOption = "",
    ip: IpOption = None,
    outbound_bind: OutboundBindOption = DEFAULT_OUTBOUND_BIND,
    app_address: AppAddressOption = "",
    network: NetworkOption = "",
    cluster_id: ClusterIdOption = "",
    locality: LocalityOption = "",
    workload_group: WorkloadGroupOption = "",
    service_account: ServiceAccountOption = "",
    admin_port: AdminPortOption = DEFAULT_ADMIN_PORT,
    xds_variant: XdsVariantOption = XdsVariant.SOTW,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write to this file instead of stdout."),
    ] = None,
) -> None:
    """Print the Envoy bootstrap (JSON) that `meshpilot proxy` would run Envoy with."""
    identity = IdentityArgs(
        node_id=node_id,
        namespace=namespace,
        workload_name=workload_name,
        labels=labels,
        ips=tuple(ip or ()),
        outbound_bind=outbound_bind,
        app_address=app_address,
        network=network,
        cluster_id=cluster_id,
        locality=locality,
        workload_group=workload_group,
        service_account=service_account,
        admin_port=admin_port,
        xds_variant=xds_variant,
    )
    node, discovery = _resolve_inputs(proxy_type, identity, discovery_address)
    text = render_bootstrap_json(build_bootstrap(node, discovery))
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as err:
        _fail(f"cannot write {output}: {err}", 1)


def register(app: typer.Typer) -> None:
    app.add_typer(proxy_app, name="proxy")
    app.command("bootstrap")(bootstrap_command)
