"""compose.yaml and the Makefile start the same processes with the same commands."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

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
        line = next(x for x in recipe.group(1).splitlines() if "$(CELERY)" in x)
        line = line.strip().replace("$(CELERY)", celery.group(1)).replace("$$", "$")
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
    assert make["beat"][:4] == ["celery", "-A", "workers", "beat"]


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
