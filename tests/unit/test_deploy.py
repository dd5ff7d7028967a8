"""compose.yaml, the Makefile and the Dockerfile start the same processes the same way.

The Dockerfile installs the wheel as the install test does (tests/install.py); compose keeps
Flower closed and on the host's loopback.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from ductape_jobs.flower_guard import credentials_problem
from ductape_jobs.settings import Settings
from tests.install import APP_FILES, BUILD, INSTALL, SOURCES, command

ROOT = Path(__file__).resolve().parents[2]


def makefile_commands() -> dict[str, list[str]]:
    """The celery command of each process target, with $(CELERY) expanded."""
    text = (ROOT / "Makefile").read_text()
    celery = re.search(r"^CELERY := \$\(BIN\)/(.+)$", text, re.M)
    assert celery, "Makefile defines CELERY"
    out = {}
    for target in ("worker", "beat", "flower"):
        recipe = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", text, re.M)
        assert recipe, f"Makefile has a {target} target"
        line = next(x for x in recipe.group(1).splitlines() if "celery" in x.lower() or "ductape-" in x)
        restarted = re.search(r"until (\$\(CELERY\).*?); do", line)  # `make worker` restarts it
        line = restarted.group(1) if restarted else line.strip()
        line = line.replace("$(CELERY)", celery.group(1)).replace("$(BIN)/", "").replace("$$", "$")
        out[target] = shlex.split(line)
    return out


def compose_commands() -> dict[str, list[str]]:
    """The command of each compose service, with ${VAR:?...} reduced to $VAR."""
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    out = {}
    for name in ("worker", "beat", "flower"):
        out[name] = [
            re.sub(r"\$\{(\w+)(?::[?-][^}]*)?\}", r"$\1", part) for part in services[name]["command"]
        ]
    return out


def test_compose_and_makefile_run_the_same_commands() -> None:
    make, compose = makefile_commands(), compose_commands()
    assert make == compose
    assert make["beat"][:1] == ["ductape-beat"]  # beat without Celery's command line (beat/__main__.py)


def test_compose_keeps_redis_durable_and_flower_closed() -> None:
    spec = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    redis_cmd = spec["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert redis_cmd[redis_cmd.index("--maxmemory-policy") + 1] == "noeviction"
    auth = spec["flower"]["environment"]["FLOWER_BASIC_AUTH"]
    assert auth.startswith("${FLOWER_BASIC_AUTH:?"), "compose must refuse to start Flower without auth"
    assert not any("basic-auth" in part for part in spec["flower"]["command"]), "keep the password off argv"


def test_ci_runs_make_test() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments), comments dropped."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, _, args = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), args.strip()))
    return stages


def copied(stage: list[tuple[str, str]]) -> list[str]:
    """What a stage's COPY lines take from the build context (not from other stages)."""
    out = []
    for instruction, args in stage:
        if instruction == "COPY" and not args.startswith("--from"):
            out += shlex.split(args)[:-1]
    return out


def pip_commands(stage: list[tuple[str, str]]) -> list[list[str]]:
    """Every pip command a stage's RUN lines make (each ``&&`` part on its own)."""
    parts = [shlex.split(part) for kind, args in stage if kind == "RUN" for part in args.split("&&")]
    return [part for part in parts if part and part[0] in ("pip", "pip3", "python", "python3")]


def test_dockerfile_installs_the_wheel_as_the_install_test_does() -> None:
    build, final = dockerfile_stages()
    assert build[0][1].endswith(" AS build") and final[0][1] == build[0][1].removesuffix(" AS build")
    # The wheel is built from exactly the sources the install test builds it from...
    assert sorted(copied(build)) == sorted(SOURCES)
    assert pip_commands(build) == [command(BUILD, ["pip"], wheels="/wheels", src=".")]
    # ...and the image installs that wheel alone (no sources, no extras), as the test does in a
    # fresh venv; --no-cache-dir only keeps pip's cache out of the image.
    assert ("COPY", "--from=build /wheels /wheels") in final
    [install] = pip_commands(final)
    assert [a for a in install if a != "--no-cache-dir"] == command(INSTALL, ["pip"], wheels="/wheels")
    assert sorted(copied(final)) == sorted(APP_FILES)
    # The app files are importable from anywhere, as the test puts them on PYTHONPATH.
    workdir = next(args for kind, args in final if kind == "WORKDIR")
    env = dict(part.split("=", 1) for kind, args in final if kind == "ENV" for part in shlex.split(args))
    assert env["PYTHONPATH"] == workdir
    assert env["DUCTAPE_HANDLERS"].split(".")[0] in APP_FILES
    cmd = next(args for kind, args in final if kind == "CMD")
    assert json.loads(cmd) == makefile_commands()["worker"]


def test_compose_publishes_flower_on_loopback_only() -> None:
    flower = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["flower"]
    # Inside its container Flower must listen beyond loopback for the port to be published at all;
    # the host side is 127.0.0.1 only.
    assert flower["environment"]["FLOWER_ADDRESS"] == "0.0.0.0"
    assert flower["ports"] and all(port.startswith("127.0.0.1:") for port in flower["ports"])


@pytest.mark.parametrize(
    ("basic_auth", "oauth", "problem"),
    [
        ([], "", "no credentials"),
        (["admin:"], "", "entry 1 is not user:password"),
        (["admin:pw", ":pw"], "", "entry 2 is not user:password"),
        (["admin"], "", "entry 1 is not user:password"),
        (["admin:pw"], "", None),
        (["a:b", "c:d:e"], "", None),
        ([], ".*@example.com", None),  # Flower's OAuth login closes it too
    ],
)
def test_flower_credentials_that_leave_it_open_are_refused(
    basic_auth: list[str], oauth: str, problem: str | None
) -> None:
    found = credentials_problem(basic_auth, oauth)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found and "FLOWER_BASIC_AUTH=user:password" in found
        assert not any(entry and entry in found for entry in basic_auth)  # never echoes a secret


def test_readme_shows_the_install_recipe() -> None:
    readme = (ROOT / "README.md").read_text()
    for template in (BUILD, INSTALL):
        line = " ".join(command(template, ["pip"], wheels="wheels", src="."))
        assert re.search(rf"^{re.escape(line)}(\s+#.*)?$", readme, re.M), line


@pytest.mark.parametrize(
    "path", ["examples/fastapi_app.py", "examples/django_app/apps.py", "examples/django_app/views.py"]
)
def test_readme_shows_the_web_examples_as_they_are(path: str) -> None:
    # The README's integration section shows each file whole, under a comment naming it, so what
    # a reader copies is what tests/e2e/test_web_examples.py runs.
    readme = (ROOT / "README.md").read_text()
    assert f"```python\n# {path}\n{(ROOT / path).read_text()}```\n" in readme


def test_make_worker_starts_the_worker_again_until_it_exits_cleanly(tmp_path: Path) -> None:
    # The recipe itself, with a stand-in for celery that fails twice, then exits 0 (a clean stop).
    count = tmp_path / "count"
    fake = tmp_path / "celery.sh"
    fake.write_text(
        f"n=$(( $(cat {count} 2>/dev/null || echo 0) + 1 )); echo $n > {count}\n"
        f'echo "$@" >> {tmp_path}/args\n'
        '[ "$n" -ge 3 ]\n'
    )
    done = subprocess.run(
        ["make", "--no-print-directory", "worker", f"CELERY=bash {fake}"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert count.read_text().strip() == "3"
    assert done.stderr.count("worker exited with status 1; starting it again in 1 s") == 2
    assert (tmp_path / "args").read_text().splitlines() == ["worker --loglevel INFO"] * 3


def test_compose_restarts_a_worker_that_exits() -> None:
    spec = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert spec["x-app"]["restart"] == "unless-stopped"
    assert "worker" in spec["services"] and "<<" not in spec["services"]["worker"]  # merged by yaml
    assert spec["services"]["worker"]["restart"] == "unless-stopped"


def test_the_readme_configuration_table_names_every_setting() -> None:
    # Settings.from_env reads DUCTAPE_<FIELD> for each field (REDIS_URL for the URL): each must
    # be a row of README's Configuration table, so an operator can find every knob.
    rows = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `")]
    named = {
        name for line in rows for name in re.findall(r"`((?:DUCTAPE_[A-Z_]+)|REDIS_URL)`", line.split("|")[1])
    }
    settings = [field.name for field in dataclasses.fields(Settings)]
    wanted = {"REDIS_URL" if f == "redis_url" else f"DUCTAPE_{f.upper()}" for f in settings}
    assert wanted <= named, sorted(wanted - named)
