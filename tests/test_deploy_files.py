"""deploy/ names only what the project has: its management commands, the Celery app, the
gunicorn config and the settings it reads, and runs workers as `make demo` and the chaos
stack do. Docker is not here, so compose.yaml is read, not run."""

from __future__ import annotations

import inspect
import re
import runpy
import shlex
from pathlib import Path

import pytest
import yaml
from django.core.management import get_commands
from gunicorn.config import KNOWN_SETTINGS

from adapters_app.management.commands import demo
from adapters_app.management.private_stack import Stack

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
QUEUE = "mint"  # MINT_QUEUE in every example
# Read by code that is not ours: boto3 (the S3 store), Django, gunicorn, CUDA, prometheus-client.
NOT_OURS = {
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "DJANGO_SETTINGS_MODULE",
    "FORWARDED_ALLOW_IPS",
    "CUDA_VISIBLE_DEVICES",
    "PROMETHEUS_MULTIPROC_DIR",
}


def procfile() -> dict[str, str]:
    lines = (DEPLOY / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line and not line.startswith("#"))


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def mint_services() -> dict[str, dict]:
    """The services that run this project's image."""
    return {name: s for name, s in compose()["services"].items() if s.get("image") == "mint-console"}


def unit(path: Path) -> dict[str, list[str]]:
    """A systemd unit's keys, each with every value it is given."""
    keys: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            keys.setdefault(key, []).append(value)
    return keys


def plain(line: str) -> str:
    """A command line with its variables as $NAME, however the file spells them (compose
    doubles the $, a Procfile gives defaults), and without the binaries' folder."""
    line = re.sub(r"\$?\$\{([A-Z_]+)[^}]*\}", r"$\1", line)
    return line.replace("/opt/mint/.venv/bin/", "")


def argvs(line: str) -> list[list[str]]:
    """The commands of one shell line, `a && NAME=value exec b`: [a, b] (a variable set for
    one command is its environment, checked with the others)."""
    parts = [part for part in plain(line).split("&&") if part.strip()]
    commands = []
    for part in parts:
        words = [word for word in shlex.split(part) if word != "exec"]
        while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
            words.pop(0)
        commands.append(words)
    return commands


def compose_line(service: dict) -> str:
    command = service["command"]
    return command[2] if command[:2] == ["sh", "-c"] else shlex.join(command)


def every_command() -> list[tuple[str, list[str]]]:
    """(where, argv) of every command deploy/ runs."""
    found = [(f"Procfile {name}", argv) for name, line in procfile().items() for argv in argvs(line)]
    found += [
        (f"compose {name}", argv)
        for name, service in mint_services().items()
        for argv in argvs(compose_line(service))
    ]
    for path in UNITS:
        keys = unit(path)
        for line in keys.get("ExecStartPre", []) + keys["ExecStart"]:
            found += [(path.name, argv) for argv in argvs(line)]
    return found


def option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def workers(pool: str) -> list[tuple[str, list[str]]]:
    return [
        (where, argv)
        for where, argv in every_command()
        if argv[:4] == ["celery", "-A", "mintweb", "worker"] and option(argv, "--pool") == pool
    ]


def test_every_command_is_a_management_command_the_celery_app_or_gunicorn_with_its_config():
    commands, found = get_commands(), every_command()
    assert {where.split()[0] for where, _ in found} == {"Procfile", "compose", *(p.name for p in UNITS)}
    for where, argv in found:
        if argv[0] == "python":
            assert argv[1] == "manage.py" and argv[2] in commands, where
        elif argv[0] == "gunicorn":
            assert argv == ["gunicorn", "-c", "deploy/gunicorn.conf.py"], where
        else:
            assert argv[:3] == ["celery", "-A", "mintweb"] and argv[3] in ("worker", "beat"), where


def test_compose_runs_the_procfiles_lines():
    lines = {name: plain(line) for name, line in procfile().items()}
    services = mint_services()
    assert plain(compose_line(services["setup"])) == lines["release"]
    for name in ("web", "beat", "train", "serve"):
        assert plain(compose_line(services[name])) == lines[name], name


def test_serving_workers_take_the_serving_queue_a_thread_per_request_as_make_demo_starts_them():
    serving = workers("threads")
    assert {where for where, _ in serving} == {"Procfile serve", "compose serve", "mint-serve@.service"}
    for where, argv in serving:
        assert option(argv, "--queues").replace("$MINT_QUEUE", QUEUE) == f"{QUEUE}.serve", where
        assert option(argv, "--concurrency") == str(demo.SERVING_THREADS), where


def test_training_workers_take_the_shared_queue_one_job_at_a_time_as_the_chaos_stack_starts_them():
    training = workers("solo")
    assert {where for where, _ in training} == {"Procfile train", "compose train", "mint-train@.service"}
    for where, argv in training:
        assert option(argv, "--queues") == "$MINT_QUEUE", where
    assert 'self.start_worker("train", pool="solo", queues=self.queue' in inspect.getsource(Stack.start)


def test_every_worker_has_a_node_name_of_its_own_per_host_and_only_options_the_project_uses():
    used_elsewhere = {"--pool", "--queues", "--hostname", "--loglevel", "--concurrency"}
    used_elsewhere |= {"--without-gossip", "--without-mingle"}
    names = []
    for where, argv in workers("threads") + workers("solo"):
        assert {word for word in argv if word.startswith("--")} <= used_elsewhere, where
        names.append(option(argv, "--hostname"))
    assert set(names) == {"serve@%h", "train@%h", "serve-%i@%H", "train-%i@%H"}


def test_beat_runs_once():
    beats = [where for where, argv in every_command() if argv[3:4] == ["beat"]]
    assert beats == ["Procfile beat", "compose beat", "mint-beat.service"]
    assert mint_services()["beat"]["deploy"]["replicas"] == 1


def test_each_worker_keeps_its_own_var_folder_and_processes_share_only_the_bases():
    services = mint_services()
    for name in ("train", "serve"):
        # An unnamed volume: each replica gets its own.
        assert "/var/lib/mint" in services[name]["volumes"], name
    mounted = {}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            if ":" in volume:
                mounted.setdefault(volume.split(":")[0], set()).add(name)
    assert {volume for volume, users in mounted.items() if len(users) > 1} == {"bases"}
    for path in UNITS:
        [var] = [value for value in unit(path)["Environment"] if value.startswith("MINT_VAR_DIR=")]
        assert var.startswith("MINT_VAR_DIR=/var/lib/mint/"), path.name


def read_by_the_project() -> set[str]:
    pattern = r"""(?:environ\.get|envint|envbool|environ\[)\(?\s*["']([A-Z][A-Z0-9_]+)["']"""
    sources = [ROOT / "mintweb" / "settings.py", DEPLOY / "gunicorn.conf.py"]
    return {name for path in sources for name in re.findall(pattern, path.read_text())}


def set_for_one_command(line: str) -> set[str]:
    """The variables a shell line sets before a command: `NAME=value exec …`."""
    names = set()
    for part in line.split("&&"):
        for word in shlex.split(part):
            if not re.fullmatch(r"[A-Z_]+=\S*", word):
                break
            names.add(word.split("=")[0])
    return names


def env_file(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def test_every_setting_given_to_a_mint_process_is_one_the_project_or_its_libraries_read():
    known = read_by_the_project() | NOT_OURS
    assert {"SECRET_KEY", "MINT_STORE", "MINT_WEB_THREADS", "MINT_RESIDENCY_DISK_BYTES"} <= known
    given = {name: set(service["environment"]) for name, service in mint_services().items()}
    given["mint.env.example"] = set(env_file(DEPLOY / "systemd" / "mint.env.example"))
    for path in UNITS:
        given[path.name] = {value.split("=")[0] for value in unit(path).get("Environment", [])}
    # Set for one command on its line: `MINT_WORKER_SERVES=0 exec celery …`.
    lines = {f"Procfile {name}": line for name, line in procfile().items()}
    lines |= {f"compose {name}": compose_line(s) for name, s in mint_services().items() if "command" in s}
    for where, line in lines.items():
        given[where] = set_for_one_command(line)
    assert given["Procfile train"] == given["compose train"] == {"MINT_WORKER_SERVES"}
    for where, names in given.items():
        assert names <= known, f"{where}: {names - known}"


def test_every_variable_compose_fills_in_is_in_its_env_example():
    wanted = set(re.findall(r"(?<!\$)\$\{([A-Z_]+)", (DEPLOY / "compose.yaml").read_text()))
    assert wanted <= set(env_file(DEPLOY / "compose.env.example")), wanted


def test_the_units_read_the_env_file_the_example_is_for():
    for path in UNITS:
        assert unit(path)["EnvironmentFile"] == ["/etc/mint/mint.env"], path.name


def gunicorn_config() -> dict:
    return runpy.run_path(str(DEPLOY / "gunicorn.conf.py"))


def test_every_name_the_gunicorn_config_sets_is_a_gunicorn_setting():
    settings_names = {setting.name for setting in KNOWN_SETTINGS}
    config = gunicorn_config()
    set_here = {
        name
        for name, value in config.items()
        if not name.startswith("_") and not inspect.ismodule(value) and not inspect.isclass(value)
    }
    assert set_here <= settings_names, set_here - settings_names
    assert config["worker_class"] == "gthread" and config["threads"] > 1


@pytest.mark.parametrize("service", ["web", "serve"])
def test_a_stopping_server_waits_for_its_streams(service):
    """gunicorn's graceful_timeout lets a stream run to its end; compose and systemd wait longer."""
    from django.conf import settings

    graceful = gunicorn_config()["graceful_timeout"]
    assert graceful > settings.MINT_INFERENCE_TIMEOUT_SECONDS
    assert int(mint_services()[service]["stop_grace_period"].removesuffix("s")) >= graceful
    name = {"web": "mint-web.service", "serve": "mint-serve@.service"}[service]
    assert int(unit(DEPLOY / "systemd" / name)["TimeoutStopSec"][0]) > graceful
