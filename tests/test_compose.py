"""docker-compose.yml and Dockerfile, checked by parsing: no Docker engine runs here."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from indexer.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
NODES = ["qdrant-1", "qdrant-2", "qdrant-3"]
APPS = ["api", "ui", "indexer"]
P2P_PORT = 6335


@pytest.fixture(scope="module")
def raw() -> str:
    return (ROOT / "docker-compose.yml").read_text()


@pytest.fixture(scope="module")
def compose(raw) -> dict:
    return yaml.safe_load(raw)


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _command(service: dict) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def _flag(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def _resolve(value: str) -> str:
    """Replace each ${VAR:-default} by its default, as compose does when VAR is unset."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))


def _published(service: dict) -> set[str]:
    return {str(p).split(":")[-2] if str(p).count(":") else str(p) for p in service.get("ports", [])}


def test_services(services):
    assert set(services) == {*NODES, *APPS}


def test_qdrant_nodes_run_in_cluster_mode(services):
    images = {services[n]["image"] for n in NODES}
    assert len(images) == 1
    (image,) = images
    assert re.fullmatch(r"qdrant/qdrant:v\d+\.\d+\.\d+", image), f"pin a release tag, got {image}"
    for name in NODES:
        env = services[name]["environment"]
        assert str(env["QDRANT__CLUSTER__ENABLED"]).lower() == "true"
        assert int(env["QDRANT__CLUSTER__P2P__PORT"]) == P2P_PORT


def test_first_node_founds_the_cluster_and_the_others_bootstrap_from_it(services):
    first = _command(services["qdrant-1"])
    assert first[0] == "./qdrant"
    assert _flag(first, "--uri") == f"http://qdrant-1:{P2P_PORT}"
    assert "--bootstrap" not in first
    for name in NODES[1:]:
        args = _command(services[name])
        assert args[0] == "./qdrant"
        assert _flag(args, "--bootstrap") == f"http://qdrant-1:{P2P_PORT}"
        # Each node announces its own address, never another's.
        assert _flag(args, "--uri") in (None, f"http://{name}:{P2P_PORT}")


def test_peer_addresses_name_real_services_on_the_p2p_port(services):
    for name in NODES:
        args = _command(services[name])
        for flag in ("--uri", "--bootstrap"):
            if (value := _flag(args, flag)) is not None:
                url = urlparse(value)
                assert url.hostname in NODES and url.port == P2P_PORT, f"{name} {flag} {value}"


def test_only_the_first_node_publishes_http(services):
    assert _published(services["qdrant-1"]) == {"6333"}
    for name in NODES[1:]:
        assert not services[name].get("ports"), f"{name} should not publish ports"


def test_each_node_has_its_own_named_volume(compose, services):
    sources = []
    for name in NODES:
        mounts = [v for v in services[name]["volumes"] if v.endswith(":/qdrant/storage")]
        assert len(mounts) == 1, name
        source = mounts[0].split(":")[0]
        assert source in compose["volumes"], f"{source} is not a named volume"
        sources.append(source)
    assert len(set(sources)) == len(NODES)


def test_nodes_have_readiness_healthchecks(services):
    for name in NODES:
        check = services[name]["healthcheck"]
        test = check["test"]
        assert test[0] == "CMD"
        script = " ".join(test[1:])
        assert "/readyz" in script and "6333" in script
        # Compose interpolates a lone $; shell variables must be written $$.
        assert not re.search(r"(?<!\$)\$(?!\$)", script.replace("$$", "")), script
        assert check["retries"] >= 3


def test_depends_on_waits_for_healthy_nodes(services):
    for name in NODES[1:]:
        assert services[name]["depends_on"] == {"qdrant-1": {"condition": "service_healthy"}}
    for name in APPS:
        deps = services[name]["depends_on"]
        assert set(deps) == set(NODES), name
        assert all(d["condition"] == "service_healthy" for d in deps.values())


def setting_fields() -> set[str]:
    from generation import GeneratorSettings
    from ui.app import UISettings
    from vlm import VLMSettings

    return {f for cls in (UISettings, VLMSettings, GeneratorSettings) for f in cls.model_fields}


def test_apps_are_configured_by_env_vars(services):
    fields = setting_fields()
    for name in APPS:
        env = services[name]["environment"]
        for key in (
            "LOOKALIKE_STORE",
            "LOOKALIKE_CLIP_MODEL",
            "LOOKALIKE_DEVICE",
            "LOOKALIKE_DATA_DIR",
            "LOOKALIKE_QDRANT_API_KEY",
        ):
            assert key in env, f"{name} lacks {key}"
        for key in env:
            if key.startswith("LOOKALIKE_"):
                assert key.removeprefix("LOOKALIKE_").lower() in fields, f"{key} is no setting"
        kind, _, url = env["LOOKALIKE_STORE"].partition(":")
        parsed = urlparse(url)
        assert kind == "qdrant" and parsed.hostname in NODES and parsed.port == 6333
        data_mounts = [v for v in services[name]["volumes"] if v.endswith(":" + env["LOOKALIKE_DATA_DIR"])]
        assert data_mounts, f"{name}: the data dir is not on a volume"


def test_env_defaults_parse_as_settings(services):
    """The values compose would hand over, with ${VAR:-default} resolved, are valid settings."""
    env = {}
    for key, value in services["api"]["environment"].items():
        if key.startswith("LOOKALIKE_"):
            env[key.removeprefix("LOOKALIKE_").lower()] = _resolve(value)
    settings = Settings(**env)
    assert settings.store_spec() == "qdrant:http://qdrant-1:6333"


def test_writes_need_the_token_and_server_catalogs_are_fenced(services, monkeypatch):
    """Both servers listen on all interfaces: the admin token comes from the host's env, unset means no
    writes at all, and server-side catalogs are read from the read-only /catalog mount only."""
    from search import SearchSettings
    from search.access import WriteGuard

    for name in ("api", "ui"):
        service = services[name]
        env = service["environment"]
        assert env["LOOKALIKE_ADMIN_TOKEN"] == "${LOOKALIKE_ADMIN_TOKEN:-}", name
        assert env["LOOKALIKE_CORS_ORIGINS"].startswith("${LOOKALIKE_CORS_ORIGINS"), name
        root = env["LOOKALIKE_CATALOG_ROOT"]
        mounted = [_resolve(v).split(":")[1:] for v in service["volumes"]]
        assert [root, "ro"] in mounted, f"{name}: {root} is not mounted read-only"
        command = _command(service)
        host = command[command.index("--host") + 1]
        for key, value in env.items():
            monkeypatch.setenv(key, _resolve(value))  # as the container's environment, read as settings
        unset = SearchSettings(host=host)
        assert unset.admin_token is None and unset.cors_origins == [] and str(unset.catalog_root) == root
        assert WriteGuard(unset.admin_token, unset.host).public  # so writes are refused until a token is set


def test_interpolations_are_well_formed(raw):
    for match in re.finditer(r"(?<!\$)\$\{([^}]*)\}", raw):
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*(:?[-?][^}]*)?", match.group(1)), match.group(0)


def test_apps_reserve_gpus(services):
    for name in APPS:
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), name


def test_app_commands_and_ports(services):
    api = _command(services["api"])
    assert api[0] == "serve" and _flag(api, "--host") == "0.0.0.0"
    assert _published(services["api"]) == {_flag(api, "--port")} == {"8000"}
    ui = _command(services["ui"])
    assert ui[0] == "ui" and _flag(ui, "--host") == "0.0.0.0"
    assert _published(services["ui"]) == {_flag(ui, "--port")} == {"7860"}
    for name in APPS:
        assert _flag(_command(services[name]), "--data-dir") == services[name]["environment"]["LOOKALIKE_DATA_DIR"]


def test_indexer_is_a_one_shot_under_a_profile(services):
    indexer = services["indexer"]
    assert indexer["profiles"] == ["index"]
    assert indexer["restart"] == "no"
    args = _command(indexer)
    assert args[:2] == ["index", "/catalog/catalog.jsonl"]
    mounts = [_resolve(v).split(":") for v in indexer["volumes"]]
    catalog = [m for m in mounts if m[1] == "/catalog"]
    assert catalog == [["./catalog", "/catalog", "ro"]]
    for name in ("api", "ui"):
        assert "profiles" not in services[name]


def test_apps_build_from_the_dockerfile(services):
    for name in APPS:
        build = services[name]["build"]
        assert (ROOT / build["context"] / build["dockerfile"]).is_file()


def test_dockerfile_installs_every_package():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\s*$", text, re.M)
    assert re.search(r'^RUN pip install "\.\[all\]"', text, re.M)
    assert re.search(r'^ENTRYPOINT \["lookalike"\]', text, re.M)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    copied = set(re.findall(r"^COPY (\S+) ", text, re.M))
    for package in packages:
        assert package in copied, f"Dockerfile does not copy {package}/"
    assert project["project"]["scripts"]["lookalike"]


@pytest.mark.parametrize("name", APPS)
def test_app_commands_parse_with_the_cli(services, name):
    """Each service's command is accepted by the real `lookalike` CLI (parsed, not run)."""
    import typer.main

    from ui.cli import app

    group = typer.main.get_command(app)
    args = _command(services[name])
    with group.make_context("lookalike", list(args), resilient_parsing=False) as ctx:
        command = group.get_command(ctx, args[0])
        assert command is not None, f"`lookalike {args[0]}` (service {name}) is not a CLI command"
        command.make_context(args[0], list(args[1:]), parent=ctx)
