"""`meshpilot config put|delete|list --etcd URL`: write Istio config into etcd for
`meshpilot discovery --config-source etcd://…` (`config.etcd_source`).

    meshpilot config put reviews.yaml --etcd 'etcd://127.0.0.1:2379?prefix=/meshpilot/config'
    meshpilot config delete VirtualService default/reviews --etcd etcd://127.0.0.1:2379
    meshpilot config list --etcd etcd://127.0.0.1:2379

`put` validates every document of every file as the server will, and writes nothing when one is
rejected; the documents are then written in one transaction, each at
`<prefix>/<Kind>/<namespace>/<name>`. `etcdctl put KEY "$(cat doc.yaml)"` does the same without
the validation.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from aetcd import rpc

from meshpilot.config.etcd_source import DEFAULT_PREFIX, config_key
from meshpilot.config.filestore import format_error
from meshpilot.config.kinds import document_to_config
from meshpilot.config.validation import validate_config
from meshpilot.config.yamlsource import read_config_file
from meshpilot.etcd.client import ERRORS, EtcdAddress, describe
from meshpilot.model import Config
from meshpilot.registry.etcd import prefix_range_end

config_app = typer.Typer(help="Write Istio config into etcd (for --config-source etcd://…).",
                         no_args_is_help=True)

EtcdOption = Annotated[str, typer.Option(
    "--etcd", metavar="etcd://HOST:PORT[,HOST:PORT]?prefix=P",
    help=f"The etcd config store (prefix default {DEFAULT_PREFIX}).")]


def _address(text: str) -> tuple[EtcdAddress, str]:
    try:
        address = EtcdAddress.parse(text)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--etcd") from None
    return address, "/" + address.param("prefix", DEFAULT_PREFIX).strip("/")


def _run(address: EtcdAddress, work: Any) -> Any:
    async def main() -> Any:
        client = address.client()
        try:
            await client.connect()
            return await work(client)
        finally:
            await client.close()

    try:
        return asyncio.run(main())
    except ERRORS as error:
        typer.echo(f"error: {address.name}: {describe(error)}", err=True)
        raise typer.Exit(1) from None


@config_app.command("put")
def put(
    files: Annotated[list[Path], typer.Argument(help="YAML or JSON files (multi-document).",
                                                exists=True, dir_okay=False)],
    etcd: EtcdOption,
) -> None:
    """Validate the documents and write each one at its key."""
    address, prefix = _address(etcd)
    configs: list[tuple[Config, Any]] = []
    failed = False
    for path in files:
        parsed = read_config_file(path)
        if parsed.error is not None:
            typer.echo(format_error(parsed.error), err=True)
            failed = True
        for document in parsed.documents:
            result = document_to_config(document, str(path))
            problems = [result] if not isinstance(result, Config) else validate_config(result)
            for problem in problems:
                typer.echo(format_error(problem), err=True)
            failed = failed or bool(problems)
            if isinstance(result, Config) and not problems:
                configs.append((result, document.data))
    if failed:
        typer.echo("nothing written", err=True)
        raise typer.Exit(1)

    async def write(client: Any) -> int:
        puts = [rpc.RequestOp(request_put=rpc.PutRequest(
            key=config_key(prefix, c.kind, c.namespace, c.name).encode(),
            value=yaml.safe_dump(data, sort_keys=False).encode())) for c, data in configs]
        response = await client.kvstub.Txn(rpc.TxnRequest(success=puts),
                                           metadata=client.metadata)
        return int(response.header.revision)

    revision = _run(address, write)
    for config, _ in configs:
        typer.echo(f"put {config_key(prefix, config.kind, config.namespace, config.name)}")
    typer.echo(f"revision {revision}")


@config_app.command("delete")
def delete(
    kind: Annotated[str, typer.Argument(help="e.g. VirtualService")],
    name: Annotated[str, typer.Argument(metavar="NAMESPACE/NAME")],
    etcd: EtcdOption,
) -> None:
    """Delete one resource."""
    address, prefix = _address(etcd)
    namespace, _, short = name.rpartition("/")
    key = config_key(prefix, kind, namespace or "default", short)

    async def remove(client: Any) -> int:
        response = await client.kvstub.DeleteRange(rpc.DeleteRangeRequest(key=key.encode()),
                                                   metadata=client.metadata)
        return int(response.deleted)

    if not _run(address, remove):
        typer.echo(f"{key}: not found", err=True)
        raise typer.Exit(1)
    typer.echo(f"deleted {key}")


@config_app.command("list")
def list_(etcd: EtcdOption) -> None:
    """The keys under the prefix, with the revision each was last written at."""
    address, prefix = _address(etcd)
    start = (prefix + "/").encode()

    async def keys(client: Any) -> list[tuple[str, int]]:
        response = await client.kvstub.Range(rpc.RangeRequest(
            key=start, range_end=prefix_range_end(start), keys_only=True),
            metadata=client.metadata)
        return [(kv.key.decode(errors="replace"), int(kv.mod_revision)) for kv in response.kvs]

    for key, revision in _run(address, keys):
        typer.echo(f"{key}\t{revision}")


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
