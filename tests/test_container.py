"""The container image and compose.yaml, checked without a container engine (none runs here).

(a) The Dockerfile is parsed (instructions, continuation lines, comments inside them, exec form) and
    linted against a short rule list; .dockerignore is applied the way Docker applies it.
(b) The Dockerfile's own commands run as far as they can without a container: its COPY lines make a
    copy of the build context, its `pip wheel` builds the wheel (once per module), and its venv step
    installs that wheel into a fresh virtual environment standing in for /opt/relay. The image's CMD
    then starts from that environment with the image's ENV (image paths moved under a temporary root,
    listen addresses on free loopback ports), the HEALTHCHECK's own command asks /healthz, and the
    STOPSIGNAL stops it. compose.yaml's admin command (`relay-admin serve`) and its health check run
    the same way.
(c) compose.yaml is read with PyYAML and interpolated as Compose does, and checked against the
    Dockerfile and the relay's own settings.

Deviations from a real build, on purpose: the venv gets the wheel without its dependencies, which it
finds in the project's venv (no download); it runs as this test's user, not UID 10001 (the
interpreter here lives under /root); and the base image's Debian is this machine's. What this cannot
show is listed in docs-ops-deploy.md, "What was not run here".
"""

from __future__ import annotations

import glob
import json
import os
import posixpath
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is in the [test] extra: pip install -e '.[test]'")

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "compose.yaml"

UID = "10001"  # the image's fixed UID and GID (docs-ops-deploy.md names it too)
IMAGE_SERVICES = ("relay-a", "relay-b", "admin")
RELAYS = ("relay-a", "relay-b")


# ================================================================ (a) the Dockerfile, parsed

@dataclass(frozen=True)
class Instruction:
    line: int  # where it starts
    keyword: str  # upper case
    args: str  # after the flags, continuation lines joined
    flags: dict[str, str]  # --from=build -> {"from": "build"}
    stage: int  # index of the FROM it belongs to (-1: before the first FROM)

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form CMD/ENTRYPOINT/RUN/VOLUME, or None for shell form."""
        return _json_array(self.args)


def _json_array(text: str) -> list[str] | None:
    text = text.strip()
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    return None


FLAGGED = {"FROM", "COPY", "ADD", "RUN", "HEALTHCHECK"}
DIRECTIVE = re.compile(r"#\s*([A-Za-z]+)\s*=\s*(\S+)\s*$")


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions as BuildKit reads them: parser directives, comments (also between continuation
    lines, where they are dropped), the escape character joining lines, keyword flags."""
    lines = text.splitlines()
    escape = "\\"
    for line in lines:  # parser directives: only at the very top
        match = DIRECTIVE.match(line)
        if not match:
            break
        if match.group(1).lower() == "escape":
            escape = match.group(2)
    instructions: list[Instruction] = []
    parts: list[str] = []
    start = 0
    stage = -1
    for number, raw in enumerate(lines, 1):
        stripped = raw.strip()
        if not parts:
            if not stripped or stripped.startswith("#"):
                continue
            start = number
        elif not stripped or stripped.startswith("#"):
            continue  # an empty line or a comment inside a continuation: dropped
        body = raw.rstrip()
        if body.endswith(escape):
            parts.append(body[: -len(escape)])
            continue
        parts.append(body)
        joined = "".join(parts).strip()
        parts = []
        keyword, *rest_of_line = re.split(r"\s+", joined, maxsplit=1)
        keyword = keyword.upper()
        rest = rest_of_line[0].strip() if rest_of_line else ""
        flags: dict[str, str] = {}
        if keyword in FLAGGED:
            while rest.startswith("--"):
                token, *after = re.split(r"\s+", rest, maxsplit=1)
                rest = after[0] if after else ""
                name, _, value = token[2:].partition("=")
                flags[name] = value
                rest = rest.strip()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(start, keyword, rest, flags, stage))
    if parts:
        raise ValueError(f"line {start}: the file ends inside a continuation")
    return instructions


def global_args(instructions: list[Instruction]) -> dict[str, str]:
    """ARGs declared before the first FROM, with their defaults (what FROM lines may use)."""
    values: dict[str, str] = {}
    for ins in instructions:
        if ins.stage >= 0:
            break
        if ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            values[name.strip()] = default.strip().strip('"')
    return values


def substitute(text: str, values: dict[str, str]) -> str:
    """$VAR, ${VAR} and ${VAR:-default} as the Dockerfile expands them."""
    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        default = match.group(2)
        value = values.get(name, "")
        return value if value or default is None else default

    return re.sub(r"\$\{([A-Za-z_]\w*)(?::-([^}]*))?\}|\$([A-Za-z_]\w*)", one, text)


@dataclass(frozen=True)
class Stage:
    index: int
    image: str  # after ARG substitution
    name: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [ins for ins in self.instructions if ins.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


def stages(instructions: list[Instruction]) -> list[Stage]:
    args = global_args(instructions)
    result = []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = ins.args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            body = [each for each in instructions if each.stage == ins.stage]
            result.append(Stage(ins.stage, substitute(words[0], args), name, body))
    return result


def env_of(stage: Stage) -> dict[str, str]:
    """The stage's ENV, in order (`ENV a=1 b=2` and the legacy `ENV a 1`), values not expanded."""
    values: dict[str, str] = {}
    for ins in stage.all("ENV"):
        words = shlex.split(ins.args)
        if words and "=" not in words[0]:
            values[words[0]] = ins.args.split(None, 1)[1].strip() if len(words) > 1 else ""
            continue
        for word in words:
            name, _, value = word.partition("=")
            values[name] = value
    return values


def healthcheck_argv(ins: Instruction) -> list[str]:
    kind, _, command = ins.args.partition(" ")
    assert kind.upper() == "CMD", f"line {ins.line}: HEALTHCHECK {kind}"
    return _json_array(command) or ["/bin/sh", "-c", command]


def shell_commands(script: str) -> list[list[str]]:
    """A RUN line's `a && b && c`, each split into words."""
    return [shlex.split(part) for part in re.split(r"\s*&&\s*", script.strip()) if part.strip()]


# ================================================================ .dockerignore, as Docker applies it

def _ignore_regex(pattern: str) -> re.Pattern[str]:
    """moby/patternmatcher: `*` any run without `/`, `?` one such character, `**` any number of
    directories, `[...]` a class, `\\` escapes."""
    out, i = "^", 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if pattern[i + 1:i + 2] == "*":
                i += 2
                if pattern[i:i + 1] == "/":
                    i += 1
                out += ".*" if i >= len(pattern) else "(.*/)?"
                continue
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "[":
            end = pattern.find("]", i)
            out += pattern[i:end + 1].replace("[!", "[^") if end > i else re.escape(ch)
            i = end if end > i else i
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(out + "$")


@dataclass
class DockerIgnore:
    rules: list[tuple[bool, str, re.Pattern[str]]] = field(default_factory=list)  # (exception, pattern, regex)

    @classmethod
    def parse(cls, text: str) -> "DockerIgnore":
        ignore = cls()
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            exception = line.startswith("!")
            pattern = posixpath.normpath(line[1:].strip() if exception else line)
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
            ignore.rules.append((exception, pattern, _ignore_regex(pattern)))
        return ignore

    def excluded(self, path: str) -> bool:
        """The last pattern matching the path or one of its parent directories decides."""
        parts = path.strip("/").split("/")
        candidates = ["/".join(parts[:n]) for n in range(len(parts), 0, -1)]
        verdict = False
        for exception, _, regex in self.rules:
            if any(regex.match(candidate) for candidate in candidates):
                verdict = not exception
        return verdict

    def may_hold_included(self, directory: str) -> bool:
        """Whether an excluded directory can still hold an included file (an exception reaches in)."""
        for exception, pattern, _ in self.rules:
            if exception and (pattern.startswith(directory + "/") or any(c in pattern for c in "*?[")):
                return True
        return False

    def files(self, root: Path, below: str = "") -> Iterator[str]:
        """The context's files under `below` (relative, posix), as the builder would receive them."""
        start = root / below if below else root
        for current, dirs, names in os.walk(start):
            rel_dir = Path(current).relative_to(root).as_posix()
            rel_dir = "" if rel_dir == "." else rel_dir
            dirs[:] = sorted(d for d in dirs if not (self.excluded(f"{rel_dir}/{d}".lstrip("/"))
                                                      and not self.may_hold_included(f"{rel_dir}/{d}".lstrip("/"))))
            for name in sorted(names):
                rel = f"{rel_dir}/{name}".lstrip("/")
                if not self.excluded(rel):
                    yield rel


# ================================================================ the lint

APT_INSTALL = re.compile(r"\bapt(-get)?\s+install\b")
PIP_INSTALL = re.compile(r"\bpip3?\s+(install|wheel)\b|-m\s+pip\s+(install|wheel)\b")
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|PRIVATE", re.IGNORECASE)


@dataclass(frozen=True)
class Problem:
    rule: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"Dockerfile:{self.line}: [{self.rule}] {self.text}"


def _copy_sources(ins: Instruction) -> list[str]:
    words = ins.exec_form() or shlex.split(ins.args)
    return words[:-1]


def lint(text: str, context: Path, ignore: DockerIgnore) -> list[Problem]:
    """The rules: exec-form CMD/ENTRYPOINT; a non-root USER before the final CMD; a HEALTHCHECK on
    /healthz; no `latest` or untagged base image; no ADD of a URL; apt-get install with
    --no-install-recommends and the list cleanup in the same RUN; pip with --no-cache-dir; every
    COPY/ADD source present in the context and not excluded by .dockerignore; no secret in ENV/ARG."""
    instructions = parse_dockerfile(text)
    problems: list[Problem] = []
    all_stages = stages(instructions)
    names = {stage.name for stage in all_stages if stage.name}

    for stage in all_stages:
        image = stage.image
        if image != "scratch" and image not in names:
            tag = image.split("@")[0].rpartition("/")[2].partition(":")[2]
            if "@sha256:" not in image and (not tag or tag == "latest"):
                problems.append(Problem("latest-tag", stage.instructions[0].line,
                                        f"base image {image!r} has no fixed tag"))

    for ins in instructions:
        if ins.keyword in ("CMD", "ENTRYPOINT") and ins.exec_form() is None:
            problems.append(Problem("exec-form", ins.line, f"{ins.keyword} in shell form: signals go to /bin/sh, "
                                    "not the program; use the JSON array form"))
        if ins.keyword == "ADD" and re.search(r"\b(https?|ftp)://|\bgit@", ins.args):
            problems.append(Problem("add-url", ins.line, "ADD of a URL: fetch nothing unpinned at build time"))
        if ins.keyword == "RUN":
            script = ins.args
            if APT_INSTALL.search(script):
                if "--no-install-recommends" not in script:
                    problems.append(Problem("apt-get", ins.line, "apt-get install without --no-install-recommends"))
                if not re.search(r"rm -rf /var/lib/apt/lists/\*?", script):
                    problems.append(Problem("apt-get", ins.line,
                                            "apt-get install without `rm -rf /var/lib/apt/lists/*` in the same RUN"))
            for command in re.split(r"&&|\|\||;", script):
                if PIP_INSTALL.search(command) and "--no-cache-dir" not in command:
                    problems.append(Problem("pip-cache", ins.line, f"pip without --no-cache-dir: {command.strip()!r}"))
        if ins.keyword in ("COPY", "ADD") and "from" not in ins.flags:
            for source in _copy_sources(ins):
                if re.match(r"(https?|ftp)://", source):
                    continue
                matches = [Path(p) for p in glob.glob(str(context / source))]
                included = [p for p in matches if (p.is_file() and not ignore.excluded(p.relative_to(context).as_posix()))
                            or (p.is_dir() and any(True for _ in ignore.files(context, p.relative_to(context).as_posix())))]
                if not matches:
                    problems.append(Problem("copy-source", ins.line, f"{ins.keyword} source {source!r} is not in the context"))
                elif not included:
                    problems.append(Problem("copy-source", ins.line,
                                            f"{ins.keyword} source {source!r} is excluded by .dockerignore"))
        if ins.keyword in ("ENV", "ARG"):
            for word in shlex.split(ins.args):
                name, sep, value = word.partition("=")
                if SECRET_NAME.search(name) and sep and value:
                    problems.append(Problem("env-secret", ins.line, f"{ins.keyword} {name} has a value baked into "
                                            "the image; pass secrets at run time"))

    final = all_stages[-1] if all_stages else None
    if final is not None:
        cmd = final.last("CMD") or final.last("ENTRYPOINT")
        users = [u for u in final.all("USER") if cmd is None or u.line < cmd.line]
        user = users[-1].args.split(":")[0].strip() if users else "root"
        if user in ("root", "0", ""):
            problems.append(Problem("non-root-user", cmd.line if cmd else final.instructions[0].line,
                                    "the final stage runs as root: set a non-root USER before CMD"))
        health = final.last("HEALTHCHECK")
        if health is None or health.args.strip().upper() == "NONE":
            problems.append(Problem("healthcheck", final.instructions[0].line, "no HEALTHCHECK in the final stage"))
        elif "/healthz" not in health.args:
            problems.append(Problem("healthcheck", health.line, "the HEALTHCHECK does not ask /healthz"))
    return problems


# ---------------------------------------------------------------- (a) tests

@pytest.fixture(scope="module")
def ignore() -> DockerIgnore:
    return DockerIgnore.parse(DOCKERIGNORE.read_text())


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def build_stage(instructions: list[Instruction]) -> Stage:
    return stages(instructions)[0]


@pytest.fixture(scope="module")
def runtime(instructions: list[Instruction]) -> Stage:
    return stages(instructions)[-1]


def test_parser_reads_continuations_comments_flags_and_exec_form() -> None:
    text = ("# escape=\\\n"
            "ARG BASE=python:3.11-slim\n"
            "FROM ${BASE} AS build\n"
            "RUN echo one \\\n"
            "# a comment inside the continuation is dropped\n"
            "\n"
            "    && echo two\n"
            "COPY --from=build --chown=1:1 /a /b\n"
            'CMD ["relay", "--flag"]\n'
            "HEALTHCHECK --interval=5s CMD python -c 'print(1)'\n")
    parsed = parse_dockerfile(text)
    assert [ins.keyword for ins in parsed] == ["ARG", "FROM", "RUN", "COPY", "CMD", "HEALTHCHECK"]
    assert parsed[2].args == "echo one     && echo two" and parsed[2].line == 4
    assert parsed[3].flags == {"from": "build", "chown": "1:1"} and parsed[3].args == "/a /b"
    assert parsed[4].exec_form() == ["relay", "--flag"]
    assert healthcheck_argv(parsed[5]) == ["/bin/sh", "-c", "python -c 'print(1)'"]
    assert parsed[5].flags == {"interval": "5s"}
    assert stages(parsed)[0].image == "python:3.11-slim" and stages(parsed)[0].name == "build"
    with pytest.raises(ValueError, match="continuation"):
        parse_dockerfile("FROM x:1\nRUN a \\\n")


def test_dockerignore_matches_as_docker_does() -> None:
    ignore = DockerIgnore.parse("*\n!relay\n**/__pycache__\n!keep/**/x.txt\n/var\n")
    assert ignore.excluded("README.md") and ignore.excluded("tests/x.py")
    assert not ignore.excluded("relay/service/main.py")
    assert ignore.excluded("relay/__pycache__/main.cpython-311.pyc")
    assert not ignore.excluded("keep/a/b/x.txt") and not ignore.excluded("keep/x.txt")
    assert ignore.excluded("keep/a/y.txt")


def test_the_lint_catches_each_rule(tmp_path: Path) -> None:
    (tmp_path / "present.txt").write_text("x")
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "python").write_text("x")
    bad = ("FROM python AS build\n"
           "ADD https://example.org/tool.tgz /opt/\n"
           "RUN apt-get update && apt-get install -y gcc\n"
           "RUN pip install foo\n"
           "FROM debian:latest\n"
           "COPY missing.txt present.txt /app/\n"
           "COPY .venv /venv\n"
           "ENV DB_PASSWORD=hunter2\n"
           "USER root\n"
           "CMD relay\n")
    found = {problem.rule for problem in lint(bad, tmp_path, DockerIgnore.parse(".venv\n"))}
    assert found == {"latest-tag", "add-url", "apt-get", "pip-cache", "copy-source", "env-secret",
                     "exec-form", "non-root-user", "healthcheck"}
    good = ("FROM debian:bookworm-slim\n"
            "RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \\\n"
            "    && rm -rf /var/lib/apt/lists/*\n"
            "COPY present.txt /app/\n"
            "USER 10001\n"
            'HEALTHCHECK CMD ["python", "-c", "x(\'/healthz\')"]\n'
            'CMD ["relay"]\n')
    assert lint(good, tmp_path, DockerIgnore.parse("")) == []


def test_dockerfile_passes_the_lint(ignore: DockerIgnore) -> None:
    problems = lint(DOCKERFILE.read_text(), ROOT, ignore)
    assert not problems, "\n".join(map(str, problems))


def test_dockerignore_keeps_secrets_and_bulk_out_of_the_context(ignore: DockerIgnore) -> None:
    for path in (".venv/bin/python", "var/relay.db", "var/outbox/x.eml", "keys/acme/ar2026.pem", ".git/config",
                 "tests/screenshots/settings-verified-nl.png", ".env", "relay/__pycache__/main.cpython-311.pyc",
                 ".mypy_cache/3.11/x.json", ".pytest_cache/v/x", "accounton_relay.egg-info/PKG-INFO",
                 "dns/acme.nl.zone", "acme-dns.xlsx", "compose.yaml", "tests/test_container.py"):
        assert ignore.excluded(path), f"{path} would be sent to the builder"
    for path in ("pyproject.toml", "README.md", "LICENSE", "relay/service/main.py", "admin/web/templates/base.html",
                 "admin/web/static/relay.css", "admin/web/locales/nl.json", "relay/py.typed"):
        assert not ignore.excluded(path), f"{path} is needed by the build but left out"


def test_two_stages_and_a_runtime_without_build_tools(build_stage: Stage, runtime: Stage) -> None:
    assert (build_stage.name, runtime.image) == ("build", "python:3.11-slim-bookworm")
    assert build_stage.image == runtime.image  # the venv is copied across: same Python at the same path
    assert any("pip wheel" in run.args for run in build_stage.all("RUN"))
    # The runtime installs nothing: no pip, no apt; everything it gets comes from the build stage.
    for run in runtime.all("RUN"):
        assert not PIP_INSTALL.search(run.args) and not APT_INSTALL.search(run.args), run.args
    copies = runtime.all("COPY") + runtime.all("ADD")
    assert copies and all(copy.flags.get("from") == "build" for copy in copies)


def test_runs_as_a_fixed_non_root_uid_with_volumes_it_owns(runtime: Stage) -> None:
    user = runtime.last("USER")
    cmd = runtime.last("CMD")
    assert user is not None and cmd is not None and user.line < cmd.line
    assert user.args == f"{UID}:{UID}"
    volume = runtime.last("VOLUME")
    assert volume is not None and volume.exec_form() == ["/data", "/keys"]
    [prepare] = [run for run in runtime.all("RUN") if "install -d" in run.args]
    [install] = [words for words in shell_commands(prepare.args) if words[:2] == ["install", "-d"]]
    assert install[install.index("-o") + 1] == UID and install[install.index("-g") + 1] == UID
    assert install[install.index("-m") + 1] == "0700"  # RELAY_KEYS_DIR wants 0700
    assert {"/data", "/keys"} <= set(install)
    assert f"--uid {UID}" in prepare.args and f"--gid {UID}" in prepare.args


def test_container_defaults(runtime: Stage) -> None:
    env = env_of(runtime)
    assert env["RELAY_LISTEN"] == "0.0.0.0:2525"
    assert env["RELAY_ADMIN_LISTEN"] == "0.0.0.0:8025"
    assert env["RELAY_METRICS_LISTEN"] == "0.0.0.0:9125"
    assert env["RELAY_LOG_FORMAT"] == "json"
    assert env["RELAY_KEYS_DIR"] == "/keys"
    assert env["RELAY_DATABASE"].startswith("sqlite:////data/")
    assert env["RELAY_UPSTREAM"].startswith("outbox:/data/")
    assert "RELAY_HOSTNAME" not in env  # per deployment: the relay refuses a non-FQDN with an SMTP upstream
    ports = {env[name].rpartition(":")[2] for name in ("RELAY_LISTEN", "RELAY_ADMIN_LISTEN", "RELAY_METRICS_LISTEN")}
    expose = runtime.last("EXPOSE")
    assert expose is not None and set(expose.args.split()) == ports == {"2525", "8025", "9125"}
    stop = runtime.last("STOPSIGNAL")
    assert stop is not None and stop.args == "SIGTERM"
    cmd = runtime.last("CMD")
    assert cmd is not None and cmd.exec_form() == ["relay"]
    assert runtime.last("ENTRYPOINT") is None  # so `docker run IMAGE relay-admin ...` just works


def test_healthcheck_asks_healthz_on_the_metrics_port_without_curl(runtime: Stage) -> None:
    health = runtime.last("HEALTHCHECK")
    assert health is not None
    argv = healthcheck_argv(health)
    assert argv[:2] == ["python", "-c"]  # no curl in a slim image
    assert "/healthz" in argv[2] and "RELAY_METRICS_LISTEN" in argv[2] and "timeout=3" in argv[2]
    assert set(health.flags) >= {"interval", "timeout", "start-period", "retries"}


# ================================================================ (b) the Dockerfile's commands, run

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Built:
    """The image's file system, as far as it is made here: every image path lives under `root`."""

    root: Path
    wheel: Path
    runtime: Stage
    env: dict[str, str]  # the image's ENV, rewritten for this machine
    workdir: Path

    def host(self, image_path: str) -> Path:
        return self.root / image_path.lstrip("/")

    def which(self, program: str) -> str:
        found = shutil.which(program, path=self.env["PATH"])
        assert found, f"{program} not on the image's PATH {self.env['PATH']}"
        return found


def _copy_into(context: Path, ignore: DockerIgnore, copy: Instruction, workdir: str, built_root: Path) -> None:
    """One `COPY src... dest` of the build stage, from the context as .dockerignore leaves it."""
    words = copy.exec_form() or shlex.split(copy.args)
    sources, dest = words[:-1], words[-1]
    target = posixpath.join(workdir, dest)
    for source in sources:
        for match in sorted(glob.glob(str(context / source))):
            rel = Path(match).relative_to(context).as_posix()
            if Path(match).is_dir():
                for file in ignore.files(context, rel):
                    out = built_root / target.lstrip("/") / Path(file).relative_to(rel)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(context / file, out)
            elif not ignore.excluded(rel):
                out = built_root / target.lstrip("/")
                if dest.endswith("/") or len(sources) > 1:
                    out = out / Path(rel).name
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(context / rel, out)


def _rewrite(value: str, built_root: Path, image_dirs: list[str]) -> str:
    for directory in image_dirs:
        value = re.sub(rf"(?<![\w.-]){re.escape(directory)}(?=/|:|$)", str(built_root) + directory, value)
    return value


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, ignore: DockerIgnore) -> Built:
    """Run the build stage's COPY and RUN lines here, then lay out the runtime stage's directories."""
    all_stages = stages(parse_dockerfile(DOCKERFILE.read_text()))
    build, runtime = all_stages[0], all_stages[-1]
    root = tmp_path_factory.mktemp("image")

    workdir = "/"
    for ins in build.instructions:
        if ins.keyword == "WORKDIR":
            workdir = posixpath.join(workdir, ins.args)
        elif ins.keyword == "COPY":
            _copy_into(ROOT, ignore, ins, workdir, root)
        elif ins.keyword == "RUN":
            for words in shell_commands(ins.args):
                here = [str(root / w.lstrip("/")) if w.startswith("/") and "*" not in w else w for w in words]
                if words[:4] == ["python", "-m", "pip", "wheel"]:
                    # Exactly the Dockerfile's command (isolated build: setuptools from PyPI, as there).
                    done = subprocess.run([sys.executable, *here[1:]], cwd=root / workdir.lstrip("/"),
                                          capture_output=True, text=True, timeout=300)
                    assert done.returncode == 0, done.stdout + done.stderr
                elif words[:3] == ["python", "-m", "venv"]:
                    # Without pip: the project's pip installs into it below, offline.
                    subprocess.run([sys.executable, "-m", "venv", "--without-pip", here[3]], check=True, timeout=60)
                elif len(words) > 1 and words[0].endswith("/bin/pip") and words[1] == "install":
                    venv_python = root / words[0].lstrip("/").rpartition("/bin/pip")[0] / "bin" / "python"
                    wheels = [w for pattern in words[2:] if not pattern.startswith("-")
                              for w in glob.glob(str(root / pattern.lstrip("/")))]
                    assert wheels, f"no wheel matches {words[2:]}"
                    # --no-deps --no-index: the dependencies come from the project's venv (next line),
                    # not from PyPI; the image installs them from PyPI.
                    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv_python), "install",
                                           "--no-deps", "--no-index", *[w for w in words[2:] if w.startswith("-")],
                                           *wheels], capture_output=True, text=True, timeout=120)
                    assert done.returncode == 0, done.stdout + done.stderr
                    site = next(venv_python.parent.parent.glob("lib/python*/site-packages"))
                    deps = next(Path(sys.prefix).glob("lib/python*/site-packages"))
                    (site / "zz-project-dependencies.pth").write_text(f"{deps}\n")
                else:
                    pytest.fail(f"Dockerfile:{ins.line}: a build step this test does not know how to run: "
                                f"{shlex.join(words)}")
    [wheel] = (root / "wheels").glob("accounton_relay-*.whl")

    copied = [shlex.split(c.args)[-1] for c in runtime.all("COPY")]
    volume = runtime.last("VOLUME")
    volumes = (volume.exec_form() or volume.args.split()) if volume else []
    image_dirs = sorted(set(copied + volumes), key=len, reverse=True)
    for run in runtime.all("RUN"):
        for words in shell_commands(run.args):
            if words[:2] == ["install", "-d"]:
                mode = int(words[words.index("-m") + 1], 8)
                for path in (w for w in words[2:] if w.startswith("/")):
                    root.joinpath(path.lstrip("/")).mkdir(parents=True, exist_ok=True)
                    root.joinpath(path.lstrip("/")).chmod(mode)

    env: dict[str, str] = {"PATH": os.environ["PATH"]}
    for name, value in env_of(runtime).items():
        if name == "PATH":
            env["PATH"] = _rewrite(value, root, image_dirs).replace("$PATH", os.environ["PATH"])
            continue
        value = _rewrite(value, root, image_dirs)
        if name.endswith("_LISTEN"):
            value = f"127.0.0.1:{free_port()}"
        env[name] = value
    workdir_ins = runtime.last("WORKDIR")
    return Built(root, wheel, runtime, env, root / (workdir_ins.args.lstrip("/") if workdir_ins else ""))


def test_wheel_holds_everything_the_runtime_reads(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as wheel:
        names = set(wheel.namelist())
        [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = wheel.read(entry_points).decode()
    assert "relay = relay.service.main:run" in scripts and "relay-admin = admin.cli:run" in scripts
    for needed in ("relay/py.typed", "admin/py.typed", "admin/web/templates/settings.html",
                   "admin/web/templates/login.html", "admin/web/static/relay.css", "admin/web/static/page.js",
                   "admin/web/locales/nl.json", "admin/web/locales/en.json", "admin/web/locales/fr.json"):
        assert needed in names, f"{needed} is missing from {built.wheel.name}"
    # Every file of the packages as the context holds them (templates, static files, locales, code).
    ignore = DockerIgnore.parse(DOCKERIGNORE.read_text())
    source = {f for package in ("relay", "admin") for f in ignore.files(ROOT, package)}
    assert source - names == set()


def test_installed_code_is_the_wheel_not_the_work_tree(built: Built) -> None:
    python = built.which("python")
    done = subprocess.run([python, "-c", "import relay, admin.web; print(relay.__file__); print(admin.web.__file__)"],
                          env=built.env, cwd=built.workdir, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    for line in done.stdout.split():
        assert Path(line).is_relative_to(built.host("/opt/relay")), line
    assert Path(built.which("relay")).parent == built.host("/opt/relay/bin")
    assert Path(built.which("relay-admin")).parent == built.host("/opt/relay/bin")


def _listen_port(built: Built, name: str) -> int:
    return int(built.env[name].rpartition(":")[2])


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float) -> bytes:
    """The first bytes the server at `port` sends (an SMTP greeting), once it accepts."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                return sock.recv(512)
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing listens on {port} after {timeout}s") from None
            time.sleep(0.1)


@dataclass
class RelayRun:
    greeting: bytes = b""
    health: list[subprocess.CompletedProcess[str]] = field(default_factory=list)
    status: dict[str, int] = field(default_factory=dict)  # metrics server path -> HTTP status
    stop_code: int | None = None
    stop_seconds: float = 0.0
    stdout: str = ""
    stderr: str = ""


@pytest.fixture(scope="module")
def relay_run(built: Built) -> Iterator[RelayRun]:
    """`relay` (the image's CMD) on a fresh /data and /keys, health-checked, then stopped with STOPSIGNAL."""
    from relay.core.settings import parse_duration

    cmd = built.runtime.last("CMD")
    health = built.runtime.last("HEALTHCHECK")
    stop = built.runtime.last("STOPSIGNAL")
    assert cmd is not None and health is not None and stop is not None
    argv = cmd.exec_form()
    assert argv
    env = {**built.env, "HOME": str(built.host("/data"))}
    out, err = built.root / "relay.stdout", built.root / "relay.stderr"
    result = RelayRun()
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen([built.which(argv[0]), *argv[1:]], env=env, cwd=built.workdir,
                                   stdout=stdout, stderr=stderr)
    try:
        result.greeting = _wait_for_port(_listen_port(built, "RELAY_LISTEN"), process, timeout=20)
        check = healthcheck_argv(health)
        check_timeout = parse_duration(health.flags.get("timeout", "30s"))  # Docker's defaults
        deadline = time.monotonic() + parse_duration(health.flags.get("start-period", "0s"))
        while True:  # the engine's start period: failures before it ends do not count
            done = subprocess.run([built.which(check[0]), *check[1:]], env=env, capture_output=True,
                                  text=True, timeout=check_timeout + 2)
            result.health.append(done)
            if done.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        metrics = f"http://127.0.0.1:{_listen_port(built, 'RELAY_METRICS_LISTEN')}"
        for path in ("/metrics", "/readyz"):
            try:
                with urllib.request.urlopen(metrics + path, timeout=5) as answer:
                    result.status[path] = answer.status
            except urllib.error.HTTPError as exc:
                result.status[path] = exc.code
            except OSError:
                result.status[path] = 0
        started = time.monotonic()
        process.send_signal(getattr(signal, stop.args))
        result.stop_code = process.wait(timeout=40)
        result.stop_seconds = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        result.stdout, result.stderr = out.read_text(), err.read_text()
    yield result


def test_entrypoint_serves_smtp_with_the_image_env(relay_run: RelayRun, built: Built) -> None:
    assert relay_run.greeting.startswith(b"220 "), (relay_run.greeting, relay_run.stderr)
    # The banner names the store and keys on the volumes (here under the temporary root).
    output = relay_run.stdout + relay_run.stderr
    assert str(built.host("/data/relay.db")) in output, output
    assert str(built.host("/keys")) in output, output


def test_healthcheck_command_answers_healthz(relay_run: RelayRun) -> None:
    last = relay_run.health[-1]
    assert last.returncode == 0, (
        f"the image's HEALTHCHECK command failed {len(relay_run.health)} time(s): {last.stderr.strip()[-800:]}\n"
        f"relay stderr: {relay_run.stderr[-1500:]}")
    # The same port serves the scrape and readiness (not ready here: the store does not exist yet).
    assert relay_run.status["/metrics"] == 200
    assert relay_run.status["/readyz"] in (200, 503)


def test_stop_signal_stops_it_cleanly(relay_run: RelayRun) -> None:
    assert relay_run.stop_code == 0, relay_run.stderr[-1500:]
    assert relay_run.stop_seconds < 10  # idle: nothing to drain


def test_logs_are_one_json_object_per_line(relay_run: RelayRun) -> None:
    lines = [line for line in (relay_run.stdout + relay_run.stderr).splitlines() if line.strip()]
    assert lines
    for line in lines:
        assert isinstance(json.loads(line), dict), line


def test_admin_service_command_serves_the_page_from_the_wheel(built: Built, compose: dict[str, Any]) -> None:
    """compose.yaml's admin command and health check, run from the installed wheel on the image's ENV."""
    admin = compose["services"]["admin"]
    argv = admin["command"] if isinstance(admin["command"], list) else shlex.split(admin["command"])
    env = {**built.env, "HOME": str(built.host("/data"))}
    first = subprocess.run([built.which("relay-admin"), "user", "add", "ops", "--role", "owner"], env=env,
                           cwd=built.workdir, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    log = built.root / "admin.stderr"
    with log.open("wb") as stderr:
        process = subprocess.Popen([built.which(argv[0]), *argv[1:]], env=env, cwd=built.workdir,
                                   stdout=subprocess.PIPE, stderr=stderr)
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 20)
        assert ready, "relay-admin serve printed nothing within 20s"
        first_line = process.stdout.readline().decode().strip()
        # Under the image's RELAY_LOG_FORMAT=json the address comes as a JSON object with "url".
        url = json.loads(first_line)["url"] if first_line.startswith("{") else first_line
        assert url == f"http://127.0.0.1:{_listen_port(built, 'RELAY_ADMIN_LISTEN')}/", url
        with urllib.request.urlopen(url + "login", timeout=5) as answer:
            assert answer.status == 200
            page = answer.read().decode()
        assets = re.findall(r'(?:href|src)="(/static/[^"?]+)', page)
        assert any(a.endswith(".css") for a in assets), page[:500]
        for asset in assets:
            with urllib.request.urlopen(url.rstrip("/") + asset, timeout=5) as answer:
                assert answer.status == 200, asset
        test = admin["healthcheck"]["test"]
        assert test[0] == "CMD"
        check = subprocess.run([built.which(test[1]), *test[2:]], env=env, capture_output=True, text=True, timeout=10)
        assert check.returncode == 0, check.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught (exit 143 in a container).
    assert process.returncode in (0, -signal.SIGTERM), log.read_text()[-1500:]
    assert "Finished server process" in log.read_text(), log.read_text()[-1500:]


# ================================================================ (c) compose.yaml

# What an operator puts in .env; nothing here is a real secret.
COMPOSE_ENV = {"POSTGRES_PASSWORD": "only-for-this-test", "RELAY_DOMAIN": "mail.platform.example"}
VARIABLE = re.compile(r"\$(?:\$|\{([A-Za-z_]\w*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_]\w*))")


class MissingVariable(Exception):
    pass


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation: $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, $$."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        op, arg = match.group(2), match.group(3)
        present = name in env
        empty = not env.get(name)
        if op in (":-", "-") and (empty if op == ":-" else not present):
            return arg or ""
        if op in (":?", "?") and (empty if op == ":?" else not present):
            raise MissingVariable(f"{name}: {arg}")
        return env.get(name, "")

    return VARIABLE.sub(one, value)


@pytest.fixture(scope="module")
def compose_raw() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())  # merge keys (<<) resolved
    return loaded


@pytest.fixture(scope="module")
def compose(compose_raw: dict[str, Any]) -> dict[str, Any]:
    interpolated: dict[str, Any] = interpolate(compose_raw, COMPOSE_ENV)
    return interpolated


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _volumes(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """target -> (source, read-only), from the short syntax."""
    mounts = {}
    for item in service.get("volumes", []):
        source, target, *options = item.split(":")
        mounts[target] = (source, "ro" in options)
    return mounts


def test_services_and_image(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", *IMAGE_SERVICES}
    images = {services[name]["image"] for name in IMAGE_SERVICES}
    assert len(images) == 1 and all(services[name].get("build") == "." for name in IMAGE_SERVICES)
    for name, service in services.items():
        image = service["image"]
        tag = image.rpartition(":")[2] if ":" in image else ""
        assert tag and tag != "latest", f"{name}: image {image!r} needs a fixed tag"
    assert services["postgres"]["image"].startswith("postgres:15")


def test_postgres_has_a_volume_and_a_pg_isready_healthcheck(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    [(source, _)] = [mount for target, mount in _volumes(postgres).items() if target == "/var/lib/postgresql/data"]
    assert source in compose["volumes"]  # a named volume, not the container's own layer
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert "ports" not in postgres  # reachable by the relays on the compose network only


def test_relays_share_the_store_and_the_keys(compose: dict[str, Any], runtime: Stage) -> None:
    services = compose["services"]
    keys_dir = env_of(runtime)["RELAY_KEYS_DIR"]
    databases = {_environment(services[name])["RELAY_DATABASE"] for name in IMAGE_SERVICES}
    assert len(databases) == 1, databases  # one store for the relays and the admin server
    [database] = databases
    assert database.startswith("postgresql://") and "@postgres:" in database
    keys = {_volumes(services[name])[keys_dir] for name in IMAGE_SERVICES}
    assert {source for source, _ in keys} == {"keys"} and "keys" in compose["volumes"]
    for relay in RELAYS:  # the relays only read keys; tenant set and rotate-key on the admin side write them
        assert _volumes(services[relay])[keys_dir] == ("keys", True)
    assert _volumes(services["admin"])[keys_dir] == ("keys", False)
    # Each relay's /data (its outbox) is its own.
    data = [_volumes(services[name])["/data"][0] for name in RELAYS]
    assert len(set(data)) == len(data)
    volume = runtime.last("VOLUME")
    assert volume is not None
    for name in IMAGE_SERVICES:  # every mount is one of the image's volumes
        assert set(_volumes(services[name])) <= set(volume.exec_form() or []), name


def test_admin_runs_relay_admin_serve(compose: dict[str, Any]) -> None:
    admin = compose["services"]["admin"]
    command = admin["command"] if isinstance(admin["command"], list) else shlex.split(admin["command"])
    assert command == ["relay-admin", "serve"]
    assert any(str(port).endswith(":8025") for port in admin["ports"])
    # The image's own check asks the relay's /healthz; the admin server needs its own.
    assert "8025" in " ".join(admin["healthcheck"]["test"]) or "RELAY_ADMIN_LISTEN" in " ".join(admin["healthcheck"]["test"])


def test_every_image_service_waits_for_postgres_and_names_itself(compose: dict[str, Any]) -> None:
    names = set()
    for name in IMAGE_SERVICES:
        service = compose["services"][name]
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy", name
        hostname = _environment(service).get("RELAY_HOSTNAME", "")
        assert "." in hostname and not hostname.endswith((".localhost", ".localdomain")), (name, hostname)
        names.add(hostname)
    assert len(names) == len(IMAGE_SERVICES)


def test_published_host_ports_are_distinct_and_exposed(compose: dict[str, Any], runtime: Stage) -> None:
    expose = runtime.last("EXPOSE")
    assert expose is not None
    host_ports: list[str] = []
    for name in IMAGE_SERVICES:
        for mapping in compose["services"][name].get("ports", []):
            *host, container = str(mapping).split(":")
            assert container in expose.args.split(), f"{name}: {mapping} publishes a port the image does not expose"
            host_ports.append(":".join(host))
    assert len(host_ports) == len(set(host_ports)), host_ports
    smtp = [p for name in RELAYS for p in compose["services"][name]["ports"] if str(p).endswith(":2525")]
    assert len(smtp) == 2


def test_relays_get_longer_to_stop_than_their_drain(compose: dict[str, Any]) -> None:
    from relay.core.settings import Settings, parse_duration

    for name in RELAYS:
        service = compose["services"][name]
        grace = parse_duration(_environment(service).get("RELAY_SHUTDOWN_GRACE", Settings.model_fields["shutdown_grace"].default))
        assert parse_duration(service["stop_grace_period"]) > grace, name


def test_no_password_is_written_in_compose(compose_raw: dict[str, Any]) -> None:
    reference = re.compile(r"\$\{[A-Za-z_]\w*(:?\?[^}]*)?\}")  # required, no default
    for name, service in compose_raw["services"].items():
        for key, value in _environment(service).items():
            if SECRET_NAME.search(key) or key == "PGPASSWORD":
                assert reference.fullmatch(value), f"{name}: {key} must come from the environment or .env, not {value!r}"
            for userinfo in re.findall(r"://([^/@\s]*)@", value):
                _, sep, password = userinfo.partition(":")
                assert not sep or reference.fullmatch(password), f"{name}: {key} has a password in its URL"
        upstream = _environment(service).get("RELAY_UPSTREAM")
        if upstream is not None:  # by default nothing leaves: each relay writes its outbox
            assert interpolate(upstream, {}).startswith("outbox:"), upstream


def test_required_variables_stop_compose_with_a_message(compose_raw: dict[str, Any]) -> None:
    with pytest.raises(MissingVariable, match="POSTGRES_PASSWORD"):
        interpolate(compose_raw["services"]["postgres"], {})
    with pytest.raises(MissingVariable, match="RELAY_DOMAIN"):
        interpolate(compose_raw["services"]["relay-a"], {"POSTGRES_PASSWORD": "x"})


@pytest.mark.parametrize("name", IMAGE_SERVICES)
def test_each_service_environment_is_accepted_by_the_relay(
        name: str, compose: dict[str, Any], runtime: Stage, monkeypatch: pytest.MonkeyPatch) -> None:
    """The image's ENV under the service's environment, read by the relay's own settings, also with an
    SMTP upstream (which needs RELAY_HOSTNAME to be a dotted FQDN)."""
    from relay.core.settings import load_settings

    for variable in list(os.environ):
        if variable.startswith("RELAY_"):
            monkeypatch.delenv(variable)
    env = {**env_of(runtime), **_environment(compose["services"][name])}
    for variable, value in env.items():
        if variable.startswith("RELAY_"):
            monkeypatch.setenv(variable, value)
    settings = load_settings()
    assert settings.database.startswith("postgresql://")
    monkeypatch.setenv("RELAY_UPSTREAM", "smtp://user:pw@smtp.provider.example:587?tls=required")
    assert load_settings().hostname == _environment(compose["services"][name])["RELAY_HOSTNAME"]
