"""The images and the one-host compose file, checked without a Docker engine.

- Build contexts: BuildKit sends only what ``docker/<Dockerfile>.dockerignore`` lets through. The
  rules are replayed here as moby/patternmatcher does it (ignorefile.ReadAll's cleaning, the
  pattern-to-regexp translation with ``**``, ``!`` re-includes, later lines winning, and
  fsutil's walk, which evaluates a path with its parent directories' results); every ``COPY``
  source of both Dockerfiles, and every git-tracked file under a copied folder, must survive.
- Images: the final ``USER`` is not root; every ``pip install`` is constrained by
  ``constraints.txt``, which pins every dependency of pyproject.toml inside its bounds and
  matches the Ray and MLflow versions of the images (and the venv the tests run in).
- ``docker/compose.yaml``: valid against the Compose specification's JSON schema (vendored in
  tests/schemas/compose-spec.json), before and after interpolation with ``docker/.env.example``;
  every ``${VAR}`` it uses is in ``.env.example`` and vice versa, secrets are required
  (``${VAR:?...}``) and empty in the example; published ports bind 127.0.0.1; the GPU profile,
  MLflow's PostgreSQL and S3 flags, and SeaweedFS's S3 config and signing keys are wired up.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the compose file")
jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is needed for schema checks")
packaging_requirements = pytest.importorskip("packaging.requirements")
from packaging.utils import canonicalize_name  # noqa: E402
from packaging.version import Version  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
DOCKERFILES = ["Dockerfile", "Dockerfile.gpu"]

# ---------------------------------------------------------------------------------------------
# .dockerignore replay (moby/patternmatcher + ignorefile.ReadAll, as BuildKit's fsutil uses them)
# ---------------------------------------------------------------------------------------------


def go_clean(path: str) -> str:
    """Go's filepath.Clean for slash-separated paths."""
    if not path:
        return "."
    rooted = path.startswith("/")
    parts: list[str] = []
    for seg in path.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(seg)
    out = "/".join(parts)
    if rooted:
        return "/" + out
    return out or "."


def read_ignore_patterns(text: str) -> list[str]:
    """ignorefile.ReadAll: BOM, ``#`` comments (only at column 0), trimming, Clean, leading /."""
    patterns = []
    for i, line in enumerate(text.splitlines()):
        if i == 0:
            line = line.removeprefix("\ufeff")
        if line.startswith("#"):
            continue
        pattern = line.strip()
        if not pattern:
            continue
        invert = pattern[0] == "!"
        if invert:
            pattern = pattern[1:].strip()
        if pattern:
            pattern = go_clean(pattern)
            if len(pattern) > 1 and pattern[0] == "/":
                pattern = pattern[1:]
        patterns.append("!" + pattern if invert else pattern)
    return patterns


class Pattern:
    """One pattern of patternmatcher: its match type and, for the general case, its regexp."""

    def __init__(self, text: str) -> None:
        text = go_clean(text.strip())
        self.exclusion = text.startswith("!")
        if self.exclusion:
            if len(text) == 1:
                raise ValueError('illegal exclusion pattern: "!"')
            text = text[1:]
        self.cleaned = text
        self.kind, self.regexp = self._compile(text)

    @staticmethod
    def _compile(pattern: str) -> tuple[str, re.Pattern[str] | None]:
        reg, kind, pos, i = "^", "exact", 0, 0
        while pos < len(pattern):
            ch = pattern[pos]
            pos += 1
            if ch == "*":
                if pos < len(pattern) and pattern[pos] == "*":  # some flavour of **
                    pos += 1
                    if pos < len(pattern) and pattern[pos] == "/":  # **/ is **
                        pos += 1
                    if pos >= len(pattern):  # ** at the end: everything below
                        if kind == "exact":
                            kind = "prefix"
                        else:
                            reg += ".*"
                            kind = "regexp"
                    else:
                        reg += "(.*/)?"
                        kind = "regexp"
                    if i == 0:
                        kind = "suffix"
                else:
                    reg += "[^/]*"
                    kind = "regexp"
            elif ch == "?":
                reg += "[^/]"
                kind = "regexp"
            elif ch in ".+()|{}$":
                reg += "\\" + ch
            elif ch == "\\":
                if pos < len(pattern):
                    reg += "\\" + pattern[pos]
                    pos += 1
                    kind = "regexp"
                else:
                    reg += "\\"
            elif ch in "[]":
                reg += ch
                kind = "regexp"
            else:
                reg += ch
            i += 1
        if kind == "regexp":
            return kind, re.compile(reg + "$")
        return kind, None

    def match(self, path: str) -> bool:
        if self.kind == "exact":
            return path == self.cleaned
        if self.kind == "prefix":
            return path.startswith(self.cleaned[:-2])
        if self.kind == "suffix":
            suffix = self.cleaned[2:]
            if path.endswith(suffix):
                return True
            return suffix.startswith("/") and path == suffix[1:]
        assert self.regexp is not None
        return self.regexp.search(path) is not None


class IgnoreRules:
    """A .dockerignore: ``excluded(path)`` tells whether BuildKit leaves ``path`` out."""

    def __init__(self, patterns: list[str]) -> None:
        self.patterns = [Pattern(p) for p in patterns if p.strip()]

    @classmethod
    def from_text(cls, text: str) -> IgnoreRules:
        return cls(read_ignore_patterns(text))

    def _matches(self, path: str, parent: list[bool] | None) -> tuple[bool, list[bool]]:
        """patternmatcher.MatchesUsingParentResults."""
        matched = False
        info: list[bool] = []
        for i, pattern in enumerate(self.patterns):
            match = parent[i] if parent else False
            if not match:
                # An inclusion is skipped once excluded-ness is decided, and vice versa.
                if pattern.exclusion != matched:
                    info.append(False)
                    continue
                match = pattern.match(path)
                if not match and not parent and "/" in path:
                    dirs = path.split("/")[:-1]
                    match = any(pattern.match("/".join(dirs[: k + 1])) for k in range(len(dirs)))
            info.append(match)
            if match:
                matched = not pattern.exclusion
        return matched, info

    def excluded(self, path: str) -> bool:
        """Whether ``path`` (relative to the context, slash-separated) is left out.

        fsutil walks the context top-down and evaluates each path with its parent's results.
        """
        parts = go_clean(path).split("/")
        info: list[bool] | None = None
        matched = False
        for k in range(len(parts)):
            matched, info = self._matches("/".join(parts[: k + 1]), info)
        return matched


def ignore_file_for(dockerfile: Path, context: Path = ROOT) -> Path | None:
    """BuildKit's choice: ``<Dockerfile>.dockerignore`` beside it, else the context's."""
    for candidate in (
        dockerfile.with_name(dockerfile.name + ".dockerignore"),
        context / ".dockerignore",
    ):
        if candidate.is_file():
            return candidate
    return None


# ---------------------------------------------------------------------------------------------
# Dockerfile reading
# ---------------------------------------------------------------------------------------------

_HEREDOC = re.compile(r"<<-?\s*['\"]?[A-Za-z_][A-Za-z0-9_]*['\"]?")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: escape directive, continuations, comment lines."""
    escape = "\\"
    for line in text.splitlines():
        directive = re.match(r"#\s*([A-Za-z]+)\s*=\s*(\S+)\s*$", line)
        if not directive:
            break
        if directive.group(1).lower() == "escape":
            escape = directive.group(2)
    result: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # blank lines and comments, also inside a continued instruction
        line = raw.rstrip()
        if line.endswith(escape):
            buf += line[: -len(escape)]
            continue
        buf += line
        word, _, args = buf.strip().partition(" ")
        result.append((word.upper(), args.strip()))
        buf = ""
    assert not buf, "Dockerfile ends inside a continued instruction"
    for word, args in result:
        if word in ("RUN", "COPY", "ADD") and _HEREDOC.search(args):
            pytest.fail(
                f"{word} with a heredoc: this test does not read heredocs yet ({args[:60]})"
            )
    return result


def split_flags(args: str) -> tuple[list[str], str]:
    flags = []
    while args.startswith("--"):
        flag, _, args = args.partition(" ")
        flags.append(flag)
        args = args.lstrip()
    return flags, args


def copy_sources(args: str) -> list[str] | None:
    """Context paths a COPY/ADD reads, or None when it reads another stage or image."""
    flags, rest = split_flags(args)
    if any(f.startswith("--from=") for f in flags):
        return None
    parts = json.loads(rest) if rest.startswith("[") else rest.split()
    assert len(parts) >= 2, f"COPY/ADD needs a source and a destination: {args}"
    sources = parts[:-1]
    for src in sources:
        assert "$" not in src, f"variable in a COPY source ({src}): this test cannot resolve it"
        assert not re.search(r"[*?\[]", src), f"wildcard COPY source ({src}): not replayed here"
        assert "://" not in src, f"remote ADD source ({src}): use a pinned, checksummed download"
    return [go_clean(s.lstrip("/")) for s in sources]


def final_stage(instrs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (word, _) in enumerate(instrs) if word == "FROM"]
    assert starts, "no FROM"
    return instrs[starts[-1] :]


def final_user(instrs: list[tuple[str, str]]) -> str | None:
    users = [args for word, args in final_stage(instrs) if word == "USER"]
    return users[-1] if users else None


def is_root(user: str) -> bool:
    name = user.split(":", 1)[0].strip()
    return name in ("", "root", "0")


def tracked_files(under: str) -> list[str]:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("git is needed to list the repository's tracked files")
    out = subprocess.run(
        [git, "ls-files", "-z", "--", under], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    return [f for f in out.split("\0") if f]


def context_files_under(path: str, rules: IgnoreRules) -> Iterator[str]:
    """Files below ``path`` that the context keeps (as fsutil sends them)."""
    for file in sorted((ROOT / path).rglob("*")):
        if file.is_file():
            rel = file.relative_to(ROOT).as_posix()
            if not rules.excluded(rel):
                yield rel


def survives(src: str, rules: IgnoreRules) -> bool:
    """A COPY source is in the context: the path itself, or (a folder) something below it."""
    if not (ROOT / src).exists():
        return False
    if (ROOT / src).is_file():
        return not rules.excluded(src)
    return not rules.excluded(src) or any(True for _ in context_files_under(src, rules))


# -- the replay itself, against patternmatcher's own cases ------------------------------------

# (pattern, path, matches): cases from moby/patternmatcher's TestMatches, plus the rules used here.
SINGLE_PATTERN_CASES = [
    ("**", "file", True),
    ("**", "dir/file", True),
    ("**/", "dir/file", True),
    ("**/**", "dir/file", True),
    ("dir/**", "dir/file", True),
    ("dir/**", "dir/dir2/file", True),
    ("**/dir", "dir", True),
    ("**/dir", "dir/file", True),
    ("**/dir2/*", "dir/dir2/file", True),
    ("**/dir2/**", "dir/dir2/dir3/file", True),
    ("**file", "file", True),
    ("**file", "dir/dir/file", True),
    ("**/file*", "dir/dir/file.txt", True),
    ("**/file*.txt", "dir/dir/file.txt", True),
    ("**/**/*.txt", "dir/dir/file.txt", True),
    ("**/**/*.txt2", "dir/dir/file.txt", False),
    ("**/*.txt", "file.txt", True),
    ("a**/*.txt", "a/dir/dir/file.txt", True),
    ("a/*.txt", "a/dir/file.txt", False),
    ("a/*.txt", "a/file.txt", True),
    ("a[b-d]e", "ace", True),
    ("a[b-d]e", "aae", False),
    ("a[^b-d]e", "aze", True),
    (".*", ".foo", True),
    (".*", "foo", False),
    ("abc.def", "abcdef", False),
    ("abc?def", "abcZdef", True),
    ("abc?def", "abcdef", False),
    ("**/foo/bar", "foo/bar", True),
    ("**/foo/bar", "dir/dir2/foo/bar", True),
    ("abc/**", "abc", False),
    ("abc/**", "abc/def/ghi", True),
    ("**/.foo", "bar.foo", False),
    ("a(b)c/def", "a(b)c/def", True),
    ("a.|)$(}+{bc", "a.|)$(}+{bc", True),
    ("dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", True),
    ("a\\*b", "a*b", True),
    ("**/__pycache__", "__pycache__", True),
    ("**/__pycache__", "occstudy/data/__pycache__/x.cpython-311.pyc", True),
    ("**/*.pyc", "occstudy/cli.pyc", True),
    ("*", "occstudy/cli.py", True),  # through its parent folder
    ("*", ".venv", True),
]

# (patterns, path, excluded)
MULTI_PATTERN_CASES = [
    (["**", "!util/docker/web"], "util/docker/web/foo", False),
    (["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo", True),
    (["**", "!dist/*.whl"], "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", False),
    (["docs", "!docs/README.md"], "docs/README.md", False),
    (["docs", "!docs/README.md"], "docs/other.md", True),
    (["*.go", "!fileutils.go"], "fileutils.go", False),
    (["!fileutils.go", "*.go"], "fileutils.go", True),  # later lines win
    (["*", "!occstudy/"], "occstudy/study/runner.py", False),
    (["*", "!occstudy/", "**/__pycache__"], "occstudy/__pycache__/cli.cpython-311.pyc", True),
    (["*", "!occstudy/", "occstudy/secret.txt", "!occstudy/*.txt"], "occstudy/secret.txt", False),
]


@pytest.mark.parametrize(("pattern", "path", "expected"), SINGLE_PATTERN_CASES)
def test_ignore_pattern_matches_like_patternmatcher(
    pattern: str, path: str, expected: bool
) -> None:
    assert IgnoreRules([pattern]).excluded(path) is expected


@pytest.mark.parametrize(("patterns", "path", "expected"), MULTI_PATTERN_CASES)
def test_ignore_rules_order_and_reincludes(patterns: list[str], path: str, expected: bool) -> None:
    assert IgnoreRules(patterns).excluded(path) is expected


def test_ignore_file_reading_cleans_patterns() -> None:
    text = "\ufeff# comment\n  /docs/../build//  \n !  keep.txt\n#!not-a-rule\n\n ./a/./b \n"
    assert read_ignore_patterns(text) == ["build", "!keep.txt", "a/b"]
    with pytest.raises(ValueError, match="illegal exclusion"):
        IgnoreRules(["!"])


# -- the real build contexts -------------------------------------------------------------------


def _dockerfile(name: str) -> tuple[Path, list[tuple[str, str]]]:
    path = DOCKER / name
    return path, instructions(path.read_text())


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_copy_source_survives_the_ignore_file(name: str) -> None:
    path, instrs = _dockerfile(name)
    ignore = ignore_file_for(path)
    assert ignore == DOCKER / f"{name}.dockerignore", "each Dockerfile has its own ignore file"
    rules = IgnoreRules.from_text(ignore.read_text())
    sources = [s for w, a in instrs if w in ("COPY", "ADD") for s in copy_sources(a) or []]
    assert {"pyproject.toml", "constraints.txt", "occstudy", "studies"} <= set(sources)
    missing = [s for s in sources if not survives(s, rules)]
    assert not missing, f"{name}: COPY sources missing from the build context: {missing}"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_tracked_file_under_a_copied_folder_goes_in(name: str) -> None:
    # Templates, package data, study files: what git tracks under a copied folder is needed.
    _, instrs = _dockerfile(name)
    rules = IgnoreRules.from_text((DOCKER / f"{name}.dockerignore").read_text())
    folders = [
        s
        for w, a in instrs
        if w in ("COPY", "ADD")
        for s in copy_sources(a) or []
        if (ROOT / s).is_dir()
    ]
    assert folders
    for src in folders:
        files = tracked_files(src)
        assert files, f"git tracks nothing under {src}"
        dropped = [f for f in files if rules.excluded(f)]
        assert not dropped, f"{name}: tracked files under {src} left out: {dropped[:5]}"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_ignore_file_keeps_the_rest_out(name: str) -> None:
    rules = IgnoreRules.from_text((DOCKER / f"{name}.dockerignore").read_text())
    for path in [".git/config", ".venv/bin/python", "tests/test_cli.py", "docker/.env",
                 "occstudy-runs/quickstart/mlflow.db", "occstudy/__pycache__/cli.cpython-311.pyc",
                 "studies/__pycache__/quickstart.cpython-311.pyc"]:  # fmt: skip
        assert rules.excluded(path), f"{name}: {path} would be sent to the builder"
    # The negative case of the survival check: a COPY of an excluded source is reported.
    assert not survives("tests", rules)
    assert not survives("Makefile", rules)
    assert not survives("no-such-file", rules)
    broken = "FROM scratch\nCOPY tests /tests\nCOPY --from=builder /x /y\nUSER 1000\n"
    sources = [s for w, a in instructions(broken) if w == "COPY" for s in copy_sources(a) or []]
    assert sources == ["tests"] and not survives(sources[0], rules)


def test_dockerfile_reader_handles_continuations_and_json_form() -> None:
    text = (
        "# syntax=docker/dockerfile:1\n# escape=\\\n"
        "FROM a AS b\nFROM c\n"
        "COPY --chown=1000:1000 \\\n  # a comment inside\n  one two \\\n  /dest/\n"
        'COPY ["three", "/d"]\n'
        "USER root\nUSER app:app\n"
    )
    instrs = instructions(text)
    copies = [copy_sources(a) for w, a in instrs if w == "COPY"]
    assert copies == [["one", "two"], ["three"]]
    assert final_user(instrs) == "app:app"
    assert is_root("0:0") and is_root("root") and not is_root("1000:100")


@pytest.mark.parametrize("name", DOCKERFILES)
def test_image_runs_as_non_root(name: str) -> None:
    _, instrs = _dockerfile(name)
    user = final_user(instrs)
    assert user is not None, f"{name}: set USER in the final stage (the base image's is unchecked)"
    assert "$" not in user, f"{name}: USER from a variable cannot be checked"
    assert not is_root(user), f"{name}: the image runs as root ({user})"
    assert is_root(final_user(instructions("FROM x\nUSER 1000\nUSER root\n")) or "")


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_pip_install_uses_the_constraints(name: str) -> None:
    _, instrs = _dockerfile(name)
    copied = {s for w, a in instrs if w == "COPY" for s in copy_sources(a) or []}
    assert "constraints.txt" in copied
    installs = [
        cmd.strip()
        for word, args in instrs
        if word == "RUN"
        for cmd in re.split(r"&&|;|\|\|", args)
        if re.search(r"\bpip\s+install\b", cmd)
    ]
    assert installs, f"{name}: no pip install found"
    for cmd in installs:
        assert re.search(r"(\s-c\s|\s--constraint[\s=])\S*constraints\.txt", cmd), (
            f"{name}: pip install without -c constraints.txt: {cmd}"
        )


# ---------------------------------------------------------------------------------------------
# constraints.txt
# ---------------------------------------------------------------------------------------------


def constraint_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)", line)
        assert m, f"constraints.txt: not a name==version pin: {line!r}"
        name = canonicalize_name(m.group(1))
        assert name not in pins, f"constraints.txt pins {name} twice"
        pins[name] = m.group(2)
    return pins


def project_requirements() -> list[Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs tomllib/tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        specs += extra
    return [packaging_requirements.Requirement(s) for s in specs]


def test_constraints_pin_every_dependency_inside_its_bounds() -> None:
    pins = constraint_pins()
    for req in project_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"constraints.txt does not pin {req.name}"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[name]} outside pyproject's {req.specifier}"
        )


def test_images_and_compose_use_the_pinned_ray_and_mlflow() -> None:
    pins = constraint_pins()
    gpu = (DOCKER / "Dockerfile.gpu").read_text()
    assert re.search(rf"^ARG RAY_VERSION={re.escape(pins['ray'])}$", gpu, re.M)
    compose = (DOCKER / "compose.yaml").read_text()
    env = (DOCKER / ".env.example").read_text()
    for text in (compose, env):
        for tag in re.findall(r"rayproject/ray:([0-9][^\s-]*)", text):
            assert tag == pins["ray"], f"Ray image {tag} != pinned ray {pins['ray']}"
        for tag in re.findall(r"ghcr\.io/mlflow/mlflow:v([0-9.]+)", text):
            assert tag == pins["mlflow"], f"MLflow image {tag} != pinned mlflow {pins['mlflow']}"
    assert "ghcr.io/mlflow/mlflow:v" in compose and "rayproject/ray:" in compose


def test_this_environment_was_installed_with_the_constraints() -> None:
    # CI installs with `pip install -c constraints.txt`: what the tests run on is what the
    # images get. (A local build of torch may add a +label; the public version must match.)
    pins = constraint_pins()
    for req in project_requirements():
        name = canonicalize_name(req.name)
        try:
            installed = Version(metadata.version(req.name))
        except metadata.PackageNotFoundError:
            continue
        assert installed.public == Version(pins[name]).public, (
            f"{req.name} {installed} installed, constraints.txt pins {pins[name]}"
        )


# ---------------------------------------------------------------------------------------------
# docker/compose.yaml
# ---------------------------------------------------------------------------------------------

_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>(?:[^{}]|\{[^{}]*\})*))?\}"
    r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(Exception):
    pass


def interpolate(value: str, env: dict[str, str], used: set[str]) -> str:
    """Compose's interpolation: $$, $VAR, ${VAR}, ${VAR:-d}, ${VAR-d}, ${VAR:?e}, ${VAR:+a}..."""

    def repl(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        name = m.group("braced") or m.group("plain")
        used.add(name)
        op, arg = m.group("op"), m.group("arg") or ""
        val = env.get(name)
        if op is None:
            return val or ""
        if op == ":-":
            return val if val else interpolate(arg, env, used)
        if op == "-":
            return val if val is not None else interpolate(arg, env, used)
        if op in (":?", "?"):
            interpolate(arg, env, used)
            if (op == ":?" and not val) or val is None:
                raise MissingVariable(f"{name}: {arg}")
            return val
        if op == ":+":
            return interpolate(arg, env, used) if val else ""
        return interpolate(arg, env, used) if val is not None else ""

    out = _VAR.sub(repl, value)
    assert "${" not in out.replace("$$", ""), f"unbalanced interpolation in {value!r}"
    return out


def interpolate_tree(node: Any, env: dict[str, str], used: set[str]) -> Any:
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env, used) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(v, env, used) for v in node]
    if isinstance(node, str):
        return interpolate(node, env, used)
    return node


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), f"{path.name}:{n}: {line!r}"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        assert key not in env, f"{path.name}: {key} twice"
        env[key] = value
    return env


SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|SIGNING_KEY|READ_KEY")


@pytest.fixture(scope="module")
def compose_raw() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return read_env_file(DOCKER / ".env.example")


@pytest.fixture(scope="module")
def filled_env(env_example: dict[str, str]) -> dict[str, str]:
    """The example with its (empty) secrets filled in, as a user's docker/.env would be."""
    return {k: (v or f"test-{k.lower()}-0123456789abcdef") for k, v in env_example.items()}


@pytest.fixture(scope="module")
def compose(compose_raw: dict[str, Any], filled_env: dict[str, str]) -> dict[str, Any]:
    return interpolate_tree(compose_raw, filled_env, set())


@pytest.fixture(scope="module")
def compose_validator() -> Any:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    return jsonschema.Draft7Validator(schema)


def test_interpolation_follows_compose_rules() -> None:
    env = {"SET": "v", "EMPTY": ""}
    used: set[str] = set()
    assert interpolate("${SET:-d}/${EMPTY:-d}/${EMPTY-d}/${UNSET-d}", env, used) == "v/d//d"
    assert interpolate("$$HOME $SET ${UNSET:-${SET}} ${SET:+alt}", env, used) == "$HOME v v alt"
    with pytest.raises(MissingVariable):
        interpolate("${EMPTY:?set EMPTY}", env, used)
    assert interpolate("${EMPTY?x}", env, used) == ""
    assert used == {"SET", "EMPTY", "UNSET"}


def test_compose_file_matches_the_compose_schema(
    compose_raw: dict[str, Any], compose: dict[str, Any], compose_validator: Any
) -> None:
    for doc in (compose_raw, compose):
        errors = sorted(compose_validator.iter_errors(doc), key=lambda e: list(e.path))
        assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])


def test_compose_schema_rejects_a_broken_copy(
    compose: dict[str, Any], compose_validator: Any
) -> None:
    for mutate in (
        lambda d: d["services"]["mlflow"].__setitem__("portz", ["5000"]),  # a typo'd key
        lambda d: d["services"]["ray-head"].__setitem__("restart", ["always"]),  # wrong type
        lambda d: d["services"]["ray-worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][
            0
        ].pop("capabilities"),  # capabilities are required
        lambda d: d["services"]["mlflow"]["ports"].append({"target": 1, "hostip": "0.0.0.0"}),
    ):
        broken = copy.deepcopy(compose)
        mutate(broken)
        assert not compose_validator.is_valid(broken)


def test_every_compose_variable_is_in_env_example(
    compose_raw: dict[str, Any], env_example: dict[str, str], filled_env: dict[str, str]
) -> None:
    used: set[str] = set()
    interpolate_tree(compose_raw, filled_env, used)
    assert used, "compose.yaml uses no variables?"
    assert not used - env_example.keys(), (
        f"missing from .env.example: {sorted(used - env_example.keys())}"
    )
    assert not env_example.keys() - used, (
        f"unused in compose.yaml: {sorted(env_example.keys() - used)}"
    )
    # The check has teeth: the example without one variable fails it.
    fewer = dict(env_example)
    fewer.pop(sorted(used)[0])
    assert used - fewer.keys()


def test_secrets_are_required_and_not_in_the_example(
    compose_raw: dict[str, Any], env_example: dict[str, str], filled_env: dict[str, str]
) -> None:
    secrets = {k for k in env_example if SECRET_NAME.search(k)}
    assert {"RAY_AUTH_TOKEN", "POSTGRES_PASSWORD", "S3_SECRET_KEY"} <= secrets
    for name in secrets:
        assert env_example[name] == "", f".env.example must not hold a value for {name}"
    text = (DOCKER / "compose.yaml").read_text()
    for m in _VAR.finditer(text):
        name = m.group("braced") or m.group("plain")
        if name in secrets:
            assert m.group("op") == ":?", f"{name} must be required: ${{{name}:?...}}"
    # No service gets a secret other than from a required variable.
    secret_env = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$|KEY_ID$")
    for name, service in compose_raw["services"].items():
        for var, value in dict(service.get("environment", {})).items():
            if secret_env.search(var):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]*\}", str(value)), (
                    f"{name}: {var} must come from a required variable, not {value!r}"
                )
    # With the example as it is (secrets empty), compose refuses to start.
    with pytest.raises(MissingVariable):
        interpolate_tree(compose_raw, env_example, set())


def published_ports(service: dict[str, Any]) -> Iterator[tuple[str | None, str]]:
    """(host ip or None for all interfaces, the mapping as written) of each published port."""
    for port in service.get("ports", []):
        if isinstance(port, dict):
            if "published" in port or "host_ip" in port:
                yield port.get("host_ip"), str(port)
            else:
                yield None, str(port)  # a random host port, on every interface
            continue
        spec = str(port).rsplit("/", 1)[0]
        m = re.fullmatch(r"(?:(\[[0-9a-fA-F:]+\]|[0-9.]+|[^:]*):)?(?:([^:]*):)?([0-9-]+)", spec)
        assert m, f"unreadable port {port!r}"
        ip, host = m.group(1), m.group(2)
        if host is None and ip is not None:  # "HOST:CONTAINER": the first part is the port
            ip = None
        yield ip, str(port)


def test_published_ports_bind_loopback_only(compose: dict[str, Any]) -> None:
    published = 0
    for name, service in compose["services"].items():
        assert service.get("network_mode") != "host", f"{name}: host networking publishes all"
        for ip, port in published_ports(service):
            published += 1
            assert ip == "127.0.0.1", f"{name}: port {port} is published beyond 127.0.0.1"
    assert published >= 2  # the Ray dashboard and MLflow
    assert [ip for ip, _ in published_ports({"ports": ["5000:5000", "8080", "0.0.0.0:1:1"]})] == [
        None,
        None,
        "0.0.0.0",
    ]


def test_compose_services_fit_together(compose: dict[str, Any]) -> None:
    services = compose["services"]
    ray_nodes = [n for n in services if n.startswith("ray-")]
    assert set(ray_nodes) == {"ray-head", "ray-worker-cpu", "ray-worker-gpu"}
    for name, service in services.items():
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
        assert not is_root(str(service.get("user", "1000"))), f"{name} runs as root"
    images = {services[n]["image"] for n in ray_nodes}
    assert len(images) == 1, "every Ray node must run one image (same Ray and Python)"
    for name in ray_nodes:
        svc = services[name]
        assert svc["build"]["dockerfile"] == "docker/Dockerfile.gpu"
        assert "shared:/shared" in svc["volumes"], f"{name} lacks the shared study storage"
        assert svc["environment"]["RAY_AUTH_MODE"] == "token"
        assert svc["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    head_cmd = services["ray-head"]["command"]
    assert "--head" in head_cmd and "--num-cpus=0" in head_cmd
    for worker in ("ray-worker-cpu", "ray-worker-gpu"):
        assert "--address=ray-head:6379" in services[worker]["command"]
    assert "profiles" not in services["ray-worker-cpu"]
    gpu = services["ray-worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)


def cli_options(argv: list[str]) -> dict[str, str | bool]:
    """``--opt value`` and ``--flag`` of a command line (``--opt=value`` too)."""
    opts: dict[str, str | bool] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        assert arg.startswith("-"), f"stray argument {arg!r}"
        if "=" in arg:
            key, value = arg.split("=", 1)
            opts[key] = value
        elif i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            opts[arg] = argv[i + 1]
            i += 1
        else:
            opts[arg] = True
        i += 1
    return opts


def test_mlflow_runs_on_postgres_with_proxied_s3_artifacts(compose: dict[str, Any]) -> None:
    services = compose["services"]
    mlflow = services["mlflow"]
    argv = shlex.split(mlflow["command"][-1].split("exec ", 1)[1].replace("\\\n", " "))
    assert argv[:2] == ["mlflow", "server"]
    opts = cli_options(argv[2:])
    uri, artifacts, hosts = (
        str(opts[k]) for k in ("--backend-store-uri", "--artifacts-destination", "--allowed-hosts")
    )
    assert uri.startswith("postgresql+psycopg2://") and "@postgres:5432/" in uri
    assert ":" not in uri.split("://", 1)[1].split("@", 1)[0], "a password in the URI"
    assert artifacts.startswith("s3://")
    assert opts["--serve-artifacts"] is True
    assert "mlflow:5000" in hosts.split(",")
    env = mlflow["environment"]
    assert env["PGPASSWORD"] == services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://seaweedfs:8333"
    assert "-s3" in services["seaweedfs"]["command"]
    assert mlflow["image"].endswith("-full"), "the -full image has psycopg2 and boto3"


def test_seaweedfs_is_private_signed_and_configured(compose: dict[str, Any]) -> None:
    services = compose["services"]
    weed = services["seaweedfs"]
    assert weed["image"].startswith("chrislusf/seaweedfs:") and not weed["image"].endswith(
        ":latest"
    )
    assert "ports" not in weed, "SeaweedFS publishes nothing (its filer must not be open)"
    for name in (
        "WEED_JWT_SIGNING_KEY",
        "WEED_JWT_FILER_SIGNING_KEY",
        "WEED_JWT_FILER_SIGNING_READ_KEY",
    ):
        assert weed["environment"].get(name), f"SeaweedFS without {name}"
    networks = compose["networks"]
    for name in ("seaweedfs", "postgres"):
        for net in services[name]["networks"]:
            assert networks[net].get("internal") is True, f"{name} on a non-internal network"
    config_path = next(a.split("=", 1)[1] for a in weed["command"] if a.startswith("-s3.config="))
    (mount,) = [c for c in weed["configs"] if c["target"] == config_path]
    identities = json.loads(compose["configs"][mount["source"]]["content"])["identities"]
    env = services["mlflow"]["environment"]
    creds = [c for i in identities for c in i.get("credentials", [])]
    assert {
        "accessKey": env["AWS_ACCESS_KEY_ID"],
        "secretKey": env["AWS_SECRET_ACCESS_KEY"],
    } in creds
    assert not any(i["name"] == "anonymous" for i in identities), "no anonymous S3 access"


def test_docs_do_not_point_outside_the_repository() -> None:
    for path in sorted(DOCKER.iterdir()):
        if path.is_file():
            text = path.read_text()
            assert "../shared" not in text and "/work/shared" not in text, path.name
