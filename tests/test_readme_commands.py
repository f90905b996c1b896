"""Every ``actdistill`` command in README.md runs as written on a fresh clone, as far as that can be
checked without data.

The README's fenced ``bash`` blocks are parsed; every line starting with ``actdistill`` (``\\``
continuations joined, a trailing ``# comment`` dropped) is one case, named by the command. Each:

- is accepted by the CLI's argument parser the way :func:`actdistill.cli.main` accepts it
  (``parse_known_args``, with ``KEY=VALUE`` words after an option taken as overrides); an unknown
  subcommand or option fails with the README line. ``--help`` exits 0 and counts as accepted.
- where it takes an experiment config, that config resolves (a shipped path or name) and its
  dotted overrides are keys of the job's config: the config is built as the command builds it
  (:func:`actdistill.config.build_config` with the job of :mod:`actdistill.shipped`).
- where its other arguments are placeholders (``runs/demo-...``, ``/path/...``, ``my.yaml``,
  ``kitchen.mp4``) or it needs a dataset, it is only parse-checked: :data:`NEEDS_DATA` says why.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from actdistill.cli import _split_experiment, build_parser
from actdistill.config import build_config, load_yaml
from actdistill.shipped import JOBS, infer_job, resolve_experiment, show_config

README = Path(__file__).resolve().parents[1] / "README.md"

#: README commands (by prefix) that need a dataset, a trained run or a user file, and so are only
#: parse-checked, with the reason.
NEEDS_DATA = {
    "actdistill data summary epic_kitchens_100": "reads an EPIC-KITCHENS-100 release at /data/EPIC-KITCHENS",
    "actdistill list encoders --config my.yaml": "my.yaml is the user's own config (a placeholder)",
    "actdistill fewshot eval runs/": "needs a trained few-shot run directory (runs/fewshot-demo-... is a placeholder)",
    "actdistill predict runs/": "needs a trained run and a video (runs/...-..., kitchen.mp4, clip.mp4: placeholders)",
    "actdistill export onnx runs/": "needs a trained run directory (runs/demo-... is a placeholder)",
    "actdistill karmma submit runs/": "needs a trained EPIC-KITCHENS-100 or SSv2 run (runs/demo-...: a placeholder)",
}

#: which job's config a command builds from its experiment argument (first words of the command)
JOB_OF = {
    ("karmma",): "karmma", ("extract",): "karmma", ("unimodal",): "karmma", ("demo",): "karmma",
    ("fewshot",): "fewshot",
}


def readme_commands(text: str) -> list[str]:
    """The ``actdistill`` command lines of the fenced bash/sh/shell blocks of ``text``."""
    out: list[str] = []
    for block in re.findall(r"^```(?:bash|sh|shell|console)[^\n]*\n(.*?)^```", text, flags=re.M | re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip().removeprefix("$ ").strip()
            if line.startswith("actdistill ") or line == "actdistill":
                words = shlex.split(line, comments=True)  # drops a trailing `# comment`
                out.append(shlex.join(words))
    return out


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))


def needs_data(command: str) -> str | None:
    return next((why for prefix, why in NEEDS_DATA.items() if command.startswith(prefix)), None)


def parse_like_main(argv: list[str]) -> argparse.Namespace | None:
    """``argv`` parsed as :func:`actdistill.cli.main` parses it; None for ``--help`` (exit 0).
    Any other exit (unknown subcommand, option or argument) fails the test."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
                args.overrides = [*(args.overrides or []), *extra]
            else:
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as err:
        if err.code == 0:
            return None
        pytest.fail(f"the CLI refuses the README command (exit {err.code})")
    return args


def test_the_readme_has_commands_and_the_list_is_current() -> None:
    assert len(COMMANDS) >= 10 and COMMANDS[0] == "actdistill --help"
    stale = [p for p in NEEDS_DATA if not any(c.startswith(p) for c in COMMANDS)]
    assert not stale, f"NEEDS_DATA entries no README command matches any more: {stale}"


def test_readme_commands_parse_continuations_and_comments() -> None:
    text = "```bash\nactdistill a --b c \\\n    --d e   # note\nmake x\n```\n```python\nactdistill no\n```\n"
    assert readme_commands(text) == ["actdistill a --b c --d e"]


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = shlex.split(command)[1:]
    args = parse_like_main(argv)
    capsys.readouterr()
    if args is None:  # --help
        return
    assert callable(getattr(args, "func", None)), "no subcommand runs"
    if needs_data(command):
        return
    experiment = getattr(args, "experiment", None)
    overrides = list(getattr(args, "overrides", None) or [])
    experiment, overrides = _split_experiment(experiment, overrides)
    words = [w for w in argv if not w.startswith("-")]
    if words[:2] == ["config", "show"]:
        # the job is inferred from the YAML (and overrides); show_config builds and validates it
        assert experiment is not None
        resolve_experiment(experiment)
        show_config(experiment, overrides, getattr(args, "job", None))
        return
    job = next((j for prefix, j in JOB_OF.items() if tuple(words[:len(prefix)]) == prefix), None)
    if job is None:
        assert experiment is None and not overrides, "an experiment argument for a command without a job"
        return
    if experiment is None and words[-1] == "demo":  # both demos run their job's shipped synthetic config
        experiment = f"{job}/synthetic"
    if experiment is not None:
        path = resolve_experiment(experiment)
        assert infer_job(load_yaml(path)).name == job, f"{experiment} is not a {job} config"
    cfg = build_config(JOBS[job].cls, experiment, overrides, defaults=list(JOBS[job].defaults))
    _check_named_choices(args, cfg)


def _check_named_choices(args: argparse.Namespace, cfg: object) -> None:
    """``--rows`` / ``--methods`` name registered rows / few-shot heads."""
    rows = getattr(args, "rows", None)
    if rows:
        from actdistill.engine.tasks import ROWS

        names = rows if isinstance(rows, list) else str(rows).split(",")
        assert set(names) <= set(ROWS.names()), names
    methods = getattr(args, "methods", None)
    if methods:
        from actdistill.models.fewshot import FEWSHOT_HEADS

        names = methods if isinstance(methods, list) else str(methods).split(",")
        assert set(names) <= set(FEWSHOT_HEADS.names()), names
