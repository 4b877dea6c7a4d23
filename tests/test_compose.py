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
RAY = ["ray-head", "ray-worker", "ray-indexer"]
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
    assert set(services) == {*NODES, *APPS, *RAY}


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


def _lookalike_args(service: dict) -> list[str]:
    """The service's `lookalike` arguments; a shell command line runs them last, as `exec lookalike ...`."""
    if service.get("entrypoint") == ["bash", "-c"]:
        last = _command(service)[-1].split("&&")[-1].split()
        assert last[:2] == ["exec", "lookalike"], last
        return last[2:]
    return _command(service)


@pytest.mark.parametrize("name", [*APPS, "ray-indexer"])
def test_app_commands_parse_with_the_cli(services, name):
    """Each service's command is accepted by the real `lookalike` CLI (parsed, not run)."""
    import typer.main

    from ui.cli import app

    group = typer.main.get_command(app)
    args = _lookalike_args(services[name])
    with group.make_context("lookalike", list(args), resilient_parsing=False) as ctx:
        command = group.get_command(ctx, args[0])
        assert command is not None, f"`lookalike {args[0]}` (service {name}) is not a CLI command"
        command.make_context(args[0], list(args[1:]), parent=ctx)


# -- the Ray cluster and the indexer that runs on it ---------------------------------------------


def _option(args: list[str], name: str) -> str | None:
    """The value of ``--name=value`` or ``--name value`` in a command line."""
    for i, arg in enumerate(args):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(args):
            return args[i + 1]
    return None


def _mounts(service: dict) -> dict[str, str]:
    """Container path -> mode ("ro" or "rw") of each volume."""
    out = {}
    for volume in service.get("volumes", []):
        parts = _resolve(volume).split(":")
        out[parts[1]] = parts[2] if len(parts) > 2 else "rw"
    return out


def test_ray_services_start_only_with_their_profile(services):
    for name in RAY:
        assert services[name]["profiles"] == ["ray"], name
    assert services["ray-indexer"]["restart"] == "no"


def test_ray_head_and_gpu_worker_form_one_cluster(services):
    head, worker = services["ray-head"], services["ray-worker"]
    assert head["entrypoint"] == worker["entrypoint"] == ["ray"]
    head_args, worker_args = _command(head), _command(worker)
    assert head_args[0] == worker_args[0] == "start" and "--block" in head_args and "--block" in worker_args
    assert "--head" in head_args and "--head" not in worker_args
    gcs_port = _option(head_args, "--port")
    assert _option(worker_args, "--address") == f"ray-head:{gcs_port}"
    assert gcs_port in {str(p) for p in head["expose"]}
    # The encoders run where the GPUs are: the worker reserves them, the head asks for none.
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert not head.get("deploy") and _option(head_args, "--num-gpus") == "0"
    assert worker["depends_on"] == {"ray-head": {"condition": "service_healthy"}}
    check = " ".join(head["healthcheck"]["test"])
    assert "ray status" in check and f"127.0.0.1:{gcs_port}" in check
    for node in (head, worker):
        # Ray's object store is shared memory: Docker's 64 MB default would spill it to disk.
        assert int(str(node["shm_size"]).rstrip("gb")) >= 1


def test_ray_nodes_and_driver_share_one_token(services):
    for name in RAY:
        env = services[name]["environment"]
        assert env["RAY_AUTH_MODE"] == "token", name
        assert env["RAY_AUTH_TOKEN"] == "${RAY_AUTH_TOKEN:-}", name  # from the host, never written here


def test_every_ray_node_sees_the_catalog_at_the_indexers_path(services):
    """Any node may decode any image, so the catalog is mounted read-only at one path everywhere."""
    catalog = _lookalike_args(services["ray-indexer"])[1]
    for name in RAY:
        mounts = _mounts(services[name])
        root = next((path for path in mounts if catalog.startswith(path + "/")), None)
        assert root == "/catalog" and mounts[root] == "ro", name


def test_ray_indexer_runs_the_ray_engine_against_both_clusters(services):
    indexer, head = services["ray-indexer"], services["ray-head"]
    args = _lookalike_args(indexer)
    assert args[:2] == ["index", "/catalog/catalog.jsonl"]
    assert _flag(args, "--engine") == "ray"
    # Ray Data cannot run through Ray Client: the indexer joins the cluster as a node that offers no
    # CPUs or GPUs (the work runs on the head and the workers), then drives the run from there.
    join = shlex.split(_command(indexer)[-1].split("&&")[0])
    assert (
        join[:2] == ["ray", "start"] and _option(join, "--address") == f"ray-head:{_option(_command(head), '--port')}"
    )
    assert _option(join, "--num-cpus") == "0" and _option(join, "--num-gpus") == "0"
    assert _flag(args, "--ray-address") == "auto"
    env = {k: _resolve(v) for k, v in indexer["environment"].items()}
    settings = Settings(
        **{k.removeprefix("LOOKALIKE_").lower(): v for k, v in env.items() if k.startswith("LOOKALIKE_")}
    )
    kind, _, url = settings.store_spec().partition(":")
    assert kind == "qdrant" and urlparse(url).hostname in NODES
    assert _flag(args, "--data-dir") == env["LOOKALIKE_DATA_DIR"] and env["LOOKALIKE_DATA_DIR"] in _mounts(indexer)
    deps = indexer["depends_on"]
    assert all(deps[n]["condition"] == "service_healthy" for n in [*NODES, "ray-head"])
    assert "ray-worker" in deps
    assert not indexer.get("deploy"), "the driver runs no model and needs no GPU"
