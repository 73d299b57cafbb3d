"""`meshpilot install manifests`: the YAML that runs meshpilot discovery on Kubernetes.

    meshpilot install manifests --namespace istio-system --replicas 2 | kubectl apply -f -

What it prints, and why the RBAC holds exactly those verbs, is in `kube/manifests.py`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from meshpilot.kube.manifests import DEFAULT_IMAGE, InstallOptions, manifests, to_yaml

install_app = typer.Typer(help="Install meshpilot on Kubernetes.", no_args_is_help=True)


@install_app.command("manifests")
def print_manifests(
    namespace: Annotated[str, typer.Option("--namespace", "-n")] = "istio-system",
    name: Annotated[str, typer.Option(help="Name of the Deployment, Service, "
                                      "ServiceAccount and RBAC objects.")] = "meshpilot",
    replicas: Annotated[int, typer.Option(min=1, help="Discovery replicas; more than one "
                                          "elect a leader on a Lease to write status.")] = 1,
    image: Annotated[str, typer.Option(help="The meshpilot container image.")] = DEFAULT_IMAGE,
    config_source: Annotated[list[str] | None, typer.Option(
        "--config-source", help="Config sources (repeatable).")] = None,
    registry: Annotated[list[str] | None, typer.Option(
        "--registry", help="Service registries (repeatable).")] = None,
    write_status: Annotated[bool, typer.Option("--write-status/--no-write-status")] = True,
    crds: Annotated[bool, typer.Option("--crds/--no-crds", help="Print minimal CRDs for "
                                       "every kind read (leave out where the projects' own "
                                       "CRDs are installed).")] = True,
    ca_secret: Annotated[str, typer.Option(help="A Secret with a plug-in CA (Istio's "
                                           "cacerts layout), mounted as --ca-dir.")] = "",
    signing_rotation: Annotated[float, typer.Option(
        min=0, help="With --replicas > 1 and a self-signed root in --ca-secret: the leader "
        "rotates a workload-signing intermediate every this many seconds, kept in the Secret "
        "meshpilot-signing-ca (0: sign with the CA itself).")] = 0.0,
    discovery_arg: Annotated[list[str] | None, typer.Option(
        "--discovery-arg", help="An extra argument for `meshpilot discovery` (repeatable).")
    ] = None,
) -> None:
    """Print Kubernetes YAML: CRDs, Namespace, ServiceAccount, RBAC, Service, Deployment."""
    options = InstallOptions(
        namespace=namespace,
        name=name,
        replicas=replicas,
        image=image,
        config_sources=tuple(config_source or ("kube://",)),
        registries=tuple(registry or ("kube://",)),
        write_status=write_status,
        crds=crds,
        ca_secret=ca_secret,
        signing_rotation=signing_rotation,
        extra_args=tuple(discovery_arg or ()),
    )
    try:
        objects = manifests(options)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    typer.echo(to_yaml(objects), nl=False)


def register(app: typer.Typer) -> None:
    app.add_typer(install_app, name="install")
