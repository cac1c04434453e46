"""Every CLI command spells the providers the same way, and errors recommend accepted commands."""

from __future__ import annotations

import re
import shlex

import pytest

from edgellm_fn import cli
from edgellm_fn.engine.providers import CHOICES


def _provider_choices(command: str) -> tuple[str, ...]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return tuple(next(a for a in sub._actions if a.dest == "provider").choices)


@pytest.mark.parametrize("command", ["generate", "inspect", "bench", "build"])
def test_every_command_accepts_the_same_provider_names(command):
    assert _provider_choices(command) == CHOICES


def test_checkpoint_with_an_engine_provider_recommends_a_build_the_cli_accepts(checkpoints, capsys):
    ckpt = checkpoints["llama"]
    assert cli.main(["inspect", "--model", ckpt, "--provider", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "is a checkpoint, not an engine directory (provider='onnxruntime'" in err
    suggested = shlex.split(re.search(r"`edgellm-fn (build [^`]*)`", err).group(1))
    args = cli.build_parser().parse_args(
        [a.replace("CKPT", ckpt).replace("DIR", "/tmp/x") for a in suggested]
    )
    assert (args.command, args.provider) == ("build", "onnxruntime")


def test_build_refuses_xla(checkpoints, tmp_path, capsys):
    argv = ["build", "--model", checkpoints["llama"], "--out", str(tmp_path), "--provider", "xla"]
    assert cli.main(argv) == 2
    assert "provider='xla' (expected one of ['onnxruntime', 'tensorrt'])" in capsys.readouterr().err
