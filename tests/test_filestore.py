"""FileConfigStore: real files in a temporary directory, loaded, reloaded and watched."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from meshpilot.config import filestore
from meshpilot.config.filestore import FileConfigStore, format_error, is_config_name
from meshpilot.config.store import Event
from meshpilot.model import Config, ConfigError, ConfigKey, Kind

REVIEWS_VS = ConfigKey(Kind.VIRTUAL_SERVICE, "default", "reviews")
REVIEWS_DR = ConfigKey(Kind.DESTINATION_RULE, "default", "reviews")
RATINGS_DR = ConfigKey(Kind.DESTINATION_RULE, "default", "ratings")


def virtual_service(weight_v1: int = 75, weight_v2: int = 25, name: str = "reviews") -> str:
    # Line numbers matter to the tests: `weight_v2` is on line 14.
    return textwrap.dedent(f"""\
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata:
          name: {name}
        spec:
          hosts: [reviews]
          http:
          - route:
            - destination:
                host: reviews
                subset: v1
              weight: {weight_v1}
            - destination: {{host: reviews, subset: v2}}
              weight: {weight_v2}
        """)


def destination_rule(name: str = "reviews", lb: str = "ROUND_ROBIN",
                     version: str = "v1") -> str:
    return textwrap.dedent(f"""\
        apiVersion: networking.istio.io/{version}
        kind: DestinationRule
        metadata:
          name: {name}
        spec:
          host: {name}
          trafficPolicy:
            loadBalancer: {{simple: {lb}}}
        """)


def documents(*texts: str) -> str:
    return "---\n".join(texts)


class Recorder:
    """A config handler that remembers every event."""

    def __init__(self) -> None:
        self.events: list[tuple[Event, Config | None, Config | None]] = []

    def __call__(self, old: Config | None, new: Config | None, event: Event) -> None:
        self.events.append((event, old, new))

    def take(self) -> list[tuple[Event, Config | None, Config | None]]:
        events, self.events = self.events, []
        return events


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "config"
    directory.mkdir()
    return directory


def loaded(directory: Path) -> tuple[FileConfigStore, Recorder]:
    store = FileConfigStore([directory])
    recorder = Recorder()
    store.register_handler(recorder)
    store.load()
    return store, recorder


def lb_of(store: FileConfigStore, key: ConfigKey) -> str:
    config = store.get(key)
    assert config is not None
    return str(config.spec["trafficPolicy"]["loadBalancer"]["simple"])


class TestInitialLoad:
    def test_loads_yaml_files_recursively_and_marks_synced(self, config_dir: Path) -> None:
        (config_dir / "vs.yaml").write_text(virtual_service())
        (config_dir / "nested" / "deeper").mkdir(parents=True)
        (config_dir / "nested" / "deeper" / "dr.yml").write_text(destination_rule())
        store, recorder = loaded(config_dir)
        assert store.has_synced()
        assert {c.key for c in store.all()} == {REVIEWS_VS, REVIEWS_DR}
        assert store.errors() == []
        assert sorted((e, old, new.key if new else None) for e, old, new in recorder.take()) \
            == [(Event.ADD, None, REVIEWS_DR), (Event.ADD, None, REVIEWS_VS)]
        config = store.get(REVIEWS_DR)
        assert config is not None
        assert config.source_file == str(config_dir / "nested" / "deeper" / "dr.yml")
        assert config.source_line == 1

    def test_ignores_hidden_temporary_and_other_files(self, config_dir: Path) -> None:
        (config_dir / ".hidden.yaml").write_text(destination_rule("a"))
        (config_dir / "dr.yaml~").write_text(destination_rule("b"))
        (config_dir / ".#dr.yaml").write_text(destination_rule("c"))
        (config_dir / "#dr.yaml#").write_text(destination_rule("d"))
        (config_dir / "notes.txt").write_text(destination_rule("e"))
        (config_dir / ".git").mkdir()
        (config_dir / ".git" / "dr.yaml").write_text(destination_rule("f"))
        (config_dir / "real.YAML").write_text(destination_rule("ratings"))
        store, _ = loaded(config_dir)
        assert [c.key for c in store.all()] == [RATINGS_DR]

    def test_is_config_name(self) -> None:
        assert is_config_name("a.yaml") and is_config_name("a.yml") and is_config_name("a.json")
        assert not is_config_name("a.yaml.swp")
        assert not is_config_name(".a.yaml")
        assert not is_config_name("a.yaml~")

    def test_v1alpha3_and_v1beta1_are_accepted(self, config_dir: Path) -> None:
        (config_dir / "a.yaml").write_text(documents(
            destination_rule("reviews", version="v1alpha3"),
            destination_rule("ratings", version="v1beta1"),
        ))
        store, _ = loaded(config_dir)
        assert store.errors() == []
        assert store.get(REVIEWS_DR) is not None
        assert store.get(RATINGS_DR) is not None
        assert {c.version for c in store.all()} == {"v1alpha3", "v1beta1"}

    def test_json_file_and_list_kind(self, config_dir: Path) -> None:
        (config_dir / "list.json").write_text(
            '{"apiVersion": "v1", "kind": "List", "items": [\n'
            '  {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",\n'
            '   "metadata": {"name": "reviews"}, "spec": {"host": "reviews"}},\n'
            '  {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",\n'
            '   "metadata": {"name": "ratings"},\n'
            '   "spec": {"host": "ratings", "subsets": [{"name": "V_1"}]}}\n'
            ']}\n'
        )
        (config_dir / "list.yaml").write_text(textwrap.dedent("""\
            apiVersion: v1
            kind: List
            items:
            - apiVersion: networking.istio.io/v1
              kind: WorkloadEntry
              metadata: {name: vm-1, namespace: vms}
              spec: {address: 10.0.0.1}
            """))
        store, _ = loaded(config_dir)
        assert {c.key for c in store.all()} == {
            REVIEWS_DR, ConfigKey(Kind.WORKLOAD_ENTRY, "vms", "vm-1"),
        }
        [error] = store.errors()
        assert error.file == str(config_dir / "list.json")
        assert error.line == 6
        assert error.field == "spec.subsets[0].name"
        assert error.key == RATINGS_DR

    def test_invalid_weight_is_reported_at_its_line(self, config_dir: Path) -> None:
        (config_dir / "vs.yaml").write_text(virtual_service(weight_v2=-5))
        store, _ = loaded(config_dir)
        assert store.get(REVIEWS_VS) is None
        [error] = store.errors()
        assert (error.file, error.line) == (str(config_dir / "vs.yaml"), 14)
        assert error.field == "spec.http[0].route[1].weight"
        assert error.key == REVIEWS_VS

    def test_missing_directory_is_empty_not_fatal(self, tmp_path: Path) -> None:
        store, _ = loaded(tmp_path / "absent")
        assert store.has_synced()
        assert store.all() == []


class TestReload:
    def test_handlers_see_add_update_delete_with_old_and_new(self, config_dir: Path) -> None:
        path = config_dir / "dr.yaml"
        path.write_text(destination_rule(lb="ROUND_ROBIN"))
        store, recorder = loaded(config_dir)
        [(event, old, new)] = recorder.take()
        assert (event, old) == (Event.ADD, None)
        assert new is not None and new.key == REVIEWS_DR

        path.write_text(destination_rule(lb="RANDOM"))
        store.reload_paths([path])
        [(event, old, new)] = recorder.take()
        assert event is Event.UPDATE
        assert old is not None and old.spec["trafficPolicy"]["loadBalancer"]["simple"] \
            == "ROUND_ROBIN"
        assert new is not None and new.spec["trafficPolicy"]["loadBalancer"]["simple"] \
            == "RANDOM"

        path.write_text("# emptied\n")
        store.reload_paths([path])
        [(event, old, new)] = recorder.take()
        assert event is Event.DELETE
        assert old is not None and old.key == REVIEWS_DR
        assert new is None
        assert store.all() == []

    def test_unchanged_reload_fires_nothing(self, config_dir: Path) -> None:
        path = config_dir / "dr.yaml"
        path.write_text(destination_rule())
        store, recorder = loaded(config_dir)
        recorder.take()
        path.write_text("# moved down a line\n" + destination_rule())
        store.reload_paths([path])
        assert recorder.take() == []
        config = store.get(REVIEWS_DR)
        assert config is not None and config.source_line == 2

    def test_resource_removed_from_a_file_is_deleted(self, config_dir: Path) -> None:
        path = config_dir / "drs.yaml"
        path.write_text(documents(destination_rule("reviews"), destination_rule("ratings")))
        store, recorder = loaded(config_dir)
        recorder.take()
        path.write_text(destination_rule("ratings"))
        store.reload_paths([path])
        assert [(e, old.key if old else None, new) for e, old, new in recorder.take()] \
            == [(Event.DELETE, REVIEWS_DR, None)]
        assert [c.key for c in store.all()] == [RATINGS_DR]

    def test_deleted_file_deletes_its_resources_only(self, config_dir: Path) -> None:
        (config_dir / "a.yaml").write_text(destination_rule("reviews"))
        (config_dir / "b.yaml").write_text(destination_rule("ratings"))
        store, recorder = loaded(config_dir)
        recorder.take()
        (config_dir / "a.yaml").unlink()
        store.reload_paths([config_dir / "a.yaml"])
        assert [(e, old.key if old else None) for e, old, _ in recorder.take()] \
            == [(Event.DELETE, REVIEWS_DR)]
        assert [c.key for c in store.all()] == [RATINGS_DR]

    def test_rejected_document_keeps_last_good_until_fixed(self, config_dir: Path) -> None:
        path = config_dir / "vs.yaml"
        path.write_text(documents(virtual_service(), destination_rule()))
        store, recorder = loaded(config_dir)
        recorder.take()

        path.write_text(documents(virtual_service(weight_v2=-5), destination_rule(lb="RANDOM")))
        store.reload_paths([path])
        vs = store.get(REVIEWS_VS)
        assert vs is not None and vs.spec["http"][0]["route"][1]["weight"] == 25
        assert lb_of(store, REVIEWS_DR) == "RANDOM"  # the good document still applies
        [error] = store.errors()
        assert error.line == 14 and error.key == REVIEWS_VS
        assert [(e, new.key if new else None) for e, _, new in recorder.take()] \
            == [(Event.UPDATE, REVIEWS_DR)]

        path.write_text(documents(virtual_service(weight_v1=50, weight_v2=50),
                                  destination_rule(lb="RANDOM")))
        store.reload_paths([path])
        assert store.errors() == []
        vs = store.get(REVIEWS_VS)
        assert vs is not None and vs.spec["http"][0]["route"][1]["weight"] == 50
        [(event, old, new)] = recorder.take()
        assert event is Event.UPDATE and old is not None and new is not None
        assert old.spec["http"][0]["route"][1]["weight"] == 25

    def test_rejected_new_resource_is_just_an_error(self, config_dir: Path) -> None:
        (config_dir / "vs.yaml").write_text(virtual_service(weight_v2=-1))
        store, recorder = loaded(config_dir)
        assert store.all() == [] and recorder.take() == []
        assert len(store.errors()) == 1

    def test_syntax_error_keeps_everything_the_file_defined(self, config_dir: Path) -> None:
        path = config_dir / "drs.yaml"
        path.write_text(documents(destination_rule("reviews"), destination_rule("ratings")))
        store, recorder = loaded(config_dir)
        recorder.take()

        broken = documents(destination_rule("reviews"), destination_rule("ratings"))
        broken = broken.replace("loadBalancer: {simple: ROUND_ROBIN}",
                                "loadBalancer: {simple: ROUND_ROBIN", 1)
        path.write_text(broken)
        store.reload_paths([path])
        assert {c.key for c in store.all()} == {REVIEWS_DR, RATINGS_DR}
        assert recorder.take() == []
        [error] = store.errors()
        assert error.file == str(path)
        assert error.line == 9  # the next line, where PyYAML notices the missing brace
        assert "YAML syntax error" in error.message
        assert error.key is None

        path.write_text(destination_rule("ratings"))
        store.reload_paths([path])
        assert store.errors() == []
        assert [c.key for c in store.all()] == [RATINGS_DR]

    def test_unidentifiable_document_keeps_the_files_resources(self, config_dir: Path) -> None:
        path = config_dir / "drs.yaml"
        path.write_text(documents(destination_rule("reviews"), destination_rule("ratings")))
        store, _ = loaded(config_dir)
        # Mid-edit: the name of one resource is gone, so which resource it was is unknown.
        nameless = destination_rule("reviews").replace("name: reviews", "namespace: default")
        path.write_text(documents(nameless,
                                  destination_rule("ratings", lb="RANDOM")))
        store.reload_paths([path])
        assert {c.key for c in store.all()} == {REVIEWS_DR, RATINGS_DR}
        assert lb_of(store, RATINGS_DR) == "RANDOM"
        [error] = store.errors()
        assert error.field == "metadata.name" and error.line == 3

    def test_one_bad_file_does_not_affect_others(self, config_dir: Path) -> None:
        (config_dir / "good.yaml").write_text(destination_rule("ratings"))
        (config_dir / "bad.yaml").write_text("kind: [\n")
        store, _ = loaded(config_dir)
        assert [c.key for c in store.all()] == [RATINGS_DR]
        [error] = store.errors()
        assert error.file == str(config_dir / "bad.yaml")

    def test_unsupported_kind_is_an_error_beside_good_documents(self, config_dir: Path) -> None:
        service = "apiVersion: v1\nkind: Service\nmetadata: {name: reviews}\nspec: {}\n"
        (config_dir / "mixed.yaml").write_text(documents(destination_rule(), service))
        store, _ = loaded(config_dir)
        assert [c.key for c in store.all()] == [REVIEWS_DR]
        [error] = store.errors()
        assert error.line == 11 and "unsupported kind Service" in error.message

    def test_duplicate_across_files_first_path_wins(self, config_dir: Path) -> None:
        (config_dir / "a.yaml").write_text(destination_rule(lb="RANDOM"))
        (config_dir / "b.yaml").write_text(destination_rule(lb="LEAST_CONN"))
        store, recorder = loaded(config_dir)
        recorder.take()
        assert lb_of(store, REVIEWS_DR) == "RANDOM"
        [error] = store.errors()
        assert error.file == str(config_dir / "b.yaml")
        assert str(config_dir / "a.yaml") in error.message
        assert error.key == REVIEWS_DR

        (config_dir / "a.yaml").unlink()
        store.reload_paths([config_dir / "a.yaml"])
        assert lb_of(store, REVIEWS_DR) == "LEAST_CONN"
        assert store.errors() == []
        assert [e for e, _, _ in recorder.take()] == [Event.UPDATE]

    def test_duplicate_within_a_file(self, config_dir: Path) -> None:
        path = config_dir / "twice.yaml"
        path.write_text(documents(destination_rule(lb="RANDOM"), destination_rule()))
        store, _ = loaded(config_dir)
        assert lb_of(store, REVIEWS_DR) == "RANDOM"
        [error] = store.errors()
        assert error.line == 10 and "line 1" in error.message

    def test_errors_are_sorted_and_logged_once(
        self, config_dir: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, logger="meshpilot.config")
        (config_dir / "b.yaml").write_text(destination_rule(lb="NOPE"))
        (config_dir / "a.yaml").write_text("\n\n" + virtual_service(weight_v2=-200))
        store, _ = loaded(config_dir)
        assert [(Path(e.file).name, e.line) for e in store.errors()] \
            == [("a.yaml", 16), ("b.yaml", 8)]
        store.reload_paths([config_dir / "a.yaml", config_dir / "b.yaml"])
        store.load()
        messages = [r.getMessage() for r in caplog.records]
        assert messages == [
            f"{config_dir / 'a.yaml'}:16: VirtualService default/reviews: "
            "spec.http[0].route[1].weight: weight -200 < 0",
            f"{config_dir / 'b.yaml'}:8: DestinationRule default/reviews: "
            "spec.trafficPolicy.loadBalancer.simple: unknown value 'NOPE'; expected one of "
            "UNSPECIFIED, RANDOM, PASSTHROUGH, ROUND_ROBIN, LEAST_REQUEST, LEAST_CONN",
        ]

    def test_format_error_leaves_out_unknown_parts(self) -> None:
        assert format_error(ConfigError("f.yaml", 3, "YAML syntax error: x")) \
            == "f.yaml:3: YAML syntax error: x"
        assert format_error(ConfigError("f.yaml", 0, "cannot read file")) \
            == "f.yaml: cannot read file"

    def test_deleted_and_recreated_subdirectory(self, config_dir: Path) -> None:
        sub = config_dir / "team"
        sub.mkdir()
        (sub / "dr.yaml").write_text(destination_rule())
        store, _ = loaded(config_dir)
        shutil.rmtree(sub)
        store.reload_paths([sub])
        assert store.all() == []
        sub.mkdir()
        (sub / "dr.yaml").write_text(destination_rule("ratings"))
        store.reload_paths([sub])
        assert [c.key for c in store.all()] == [RATINGS_DR]

    def test_kubernetes_configmap_swap_rereads_visible_files(self, config_dir: Path) -> None:
        # A mounted ConfigMap: visible symlinks into `..data`, which is swapped atomically.
        first = config_dir / "..2024_01"
        first.mkdir()
        (first / "dr.yaml").write_text(destination_rule(lb="RANDOM"))
        (config_dir / "..data").symlink_to(first.name)
        (config_dir / "dr.yaml").symlink_to(Path("..data") / "dr.yaml")
        store, _ = loaded(config_dir)
        assert lb_of(store, REVIEWS_DR) == "RANDOM"

        second = config_dir / "..2024_02"
        second.mkdir()
        (second / "dr.yaml").write_text(destination_rule(lb="LEAST_CONN"))
        (config_dir / "..data_tmp").symlink_to(second.name)
        os.replace(config_dir / "..data_tmp", config_dir / "..data")
        store.reload_paths([config_dir / "..data"])
        assert lb_of(store, REVIEWS_DR) == "LEAST_CONN"

    def test_paths_outside_the_directories_are_ignored(
        self, config_dir: Path, tmp_path: Path
    ) -> None:
        outside = tmp_path / "elsewhere.yaml"
        outside.write_text(destination_rule())
        store, _ = loaded(config_dir)
        store.reload_paths([outside])
        assert store.all() == []

    def test_unreadable_file_keeps_last_good(
        self, config_dir: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = config_dir / "dr.yaml"
        path.write_text(destination_rule())
        store, _ = loaded(config_dir)

        def denied(_: Path) -> None:
            raise PermissionError(13, "Permission denied")

        # Simulated: permission bits do not stop a test that runs as root.
        monkeypatch.setattr(filestore, "read_config_file", denied)
        store.reload_paths([path])
        assert store.get(REVIEWS_DR) is not None
        [error] = store.errors()
        assert error.message == "cannot read file: Permission denied"

        monkeypatch.undo()
        path.write_text(destination_rule("ratings"))
        store.reload_paths([path])
        assert store.errors() == []
        assert [c.key for c in store.all()] == [RATINGS_DR]


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait until `condition()` holds, polling briefly; TimeoutError after 10 seconds."""
    async with asyncio.timeout(10):
        # Polling on purpose: the state changes in reaction to the file system, not an event.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


class TestWatch:
    async def test_run_follows_writes_modifications_and_deletes(self, config_dir: Path) -> None:
        store = FileConfigStore([config_dir])
        recorder = Recorder()
        store.register_handler(recorder)
        task = asyncio.create_task(store.run())
        try:
            await eventually(store.has_synced)
            path = config_dir / "dr.yaml"
            path.write_text(destination_rule(lb="RANDOM"))
            await eventually(lambda: store.get(REVIEWS_DR) is not None)

            path.write_text(destination_rule(lb="LEAST_CONN"))
            await eventually(lambda: lb_of(store, REVIEWS_DR) == "LEAST_CONN")

            path.write_text(destination_rule(lb="BROKEN"))
            await eventually(lambda: len(store.errors()) == 1)
            assert lb_of(store, REVIEWS_DR) == "LEAST_CONN"

            path.unlink()
            await eventually(lambda: store.get(REVIEWS_DR) is None)
            assert store.errors() == []
            kinds = [e for e, _, _ in recorder.events]
            assert kinds[0] is Event.ADD and kinds[-1] is Event.DELETE
            assert Event.UPDATE in kinds
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=5)

    async def test_watched_directory_deleted_and_recreated(self, tmp_path: Path) -> None:
        root = tmp_path / "config"
        root.mkdir()
        (root / "dr.yaml").write_text(destination_rule())
        store = FileConfigStore([root])
        task = asyncio.create_task(store.run())
        try:
            await eventually(lambda: store.get(REVIEWS_DR) is not None)
            shutil.rmtree(root)
            await eventually(lambda: store.all() == [])
            root.mkdir()
            (root / "dr.yaml").write_text(destination_rule("ratings"))
            await eventually(lambda: store.get(RATINGS_DR) is not None)
            # The new directory is watched, not just scanned once.
            (root / "more.yaml").write_text(destination_rule("reviews"))
            await eventually(lambda: store.get(REVIEWS_DR) is not None)
            assert not task.done()
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=5)
