"""The CLI: provider names, one set of defaults, flag semantics, output modes, and every bad input
answered with a named error (before the model loads where it can be)."""

from __future__ import annotations

import inspect
import json
import re
import shlex
import shutil

import pytest

from edgellm_fn import cli
from edgellm_fn.config.defaults import DEFAULTS, sampling_values
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


SMALL = ["--max-batch", "2", "--max-input-len", "64", "--kv-capacity", "96"]


def _generate_args(*argv):
    return cli.build_parser().parse_args(["generate", "--model", "M", *argv])


@pytest.mark.parametrize(
    ("argv", "sampling"),
    [
        ([], (1.0, 1.0, 1)),  # nothing asks to sample: greedy
        (["--temperature", "0.8"], (0.8, 1.0, 0)),  # alone, it samples (top-k off)
        (["--top-p", "0.9"], (1.0, 0.9, 0)),
        (["--top-k", "40"], (1.0, 1.0, 40)),
        (["--temperature", "0"], (0.0, 1.0, 0)),  # greedy by temperature 0
        (["--temperature", "0.8", "--top-k", "1"], (0.8, 1.0, 1)),  # greedy by top-k 1
    ],
)
def test_sampling_flags_imply_sampling(argv, sampling):
    assert cli._request_batch(_generate_args("--prompt", "hi", *argv)).sampling() == sampling


def test_flags_override_the_request_file(tmp_path):
    req = tmp_path / "req.json"
    req.write_text(
        json.dumps(
            {
                "batch_size": 2,
                "top_k": 1,
                "max_generate_length": 9,
                "apply_chat_template": False,
                "requests": [{"messages": [{"role": "user", "content": "x"}]}],
            }
        )
    )
    kept = cli._request_batch(_generate_args("--input-file", str(req)))
    assert (kept.max_generate_length, kept.sampling(), kept.batch_size) == (9, (1.0, 1.0, 1), 2)
    assert not kept.apply_chat_template
    new = cli._request_batch(
        _generate_args(
            "--input-file",
            str(req),
            "--max-new-tokens",
            "3",
            "--temperature",
            "0.7",
            "--top-k",
            "0",
            "--batch-size",
            "1",
            "--chat",
        )
    )
    assert (new.max_generate_length, new.sampling(), new.batch_size) == (3, (0.7, 1.0, 0), 1)
    assert new.apply_chat_template


def test_one_set_of_defaults_for_every_entry_point(tmp_path):
    from edgellm_fn.config import EngineConfig
    from edgellm_fn.engine.callback.build import build_engine
    from edgellm_fn.engine.loading import load_engine
    from edgellm_fn.runtime.generate import generate
    from edgellm_fn.text.requests import parse_requests

    limits = {k: DEFAULTS[k] for k in ("max_batch_size", "max_input_len", "kv_capacity")}
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for command in ("generate", "inspect", "build"):
        args = sub[command].parse_args(
            ["--model", "M", "--out", "O", "--provider", "onnx"]
            if command == "build"
            else ["--model", "M"]
        )
        assert (args.max_batch, args.max_input_len, args.kv_capacity) == tuple(limits.values())
    bench = sub["bench"].parse_args(["--model", "M"])
    assert (bench.max_batch, bench.max_input_len) == (
        limits["max_batch_size"],
        limits["max_input_len"],
    )

    def defaults(fn, *names):
        params = inspect.signature(fn).parameters
        return tuple(params[n].default for n in names)

    assert defaults(load_engine, *limits) == tuple(limits.values())
    assert defaults(EngineConfig.create, *limits) == tuple(limits.values())
    assert defaults(build_engine, "max_batch", "max_input_len", "kv_capacity") == tuple(
        limits.values()
    )
    gen = _generate_args("--prompt", "hi")
    batch = cli._request_batch(gen)
    parsed = parse_requests({"requests": [{"messages": [{"role": "user", "content": "x"}]}]})
    from edgellm_fn.runtime.gen_defaults import LIBRARY

    # generate() leaves max_new_tokens to the checkpoint's generation_config.json, else LIBRARY.
    assert defaults(generate, "max_new_tokens") == (None,)
    assert (
        batch.max_generate_length
        == parsed.max_generate_length
        == LIBRARY.max_new_tokens
        == DEFAULTS["max_new_tokens"]
    )
    assert (LIBRARY.temperature, LIBRARY.top_p, LIBRARY.top_k) == sampling_values()  # greedy
    assert batch.sampling() == parsed.sampling() == sampling_values()  # greedy
    assert defaults(generate, "temperature", "top_p", "top_k") == (None, None, None)
    assert (
        (gen.seed, gen.loop)
        == defaults(generate, "seed", "loop")
        == (DEFAULTS["seed"], DEFAULTS["loop"])
    )
    assert (
        batch.apply_chat_template == parsed.apply_chat_template == DEFAULTS["apply_chat_template"]
    )


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for text in (
        f"(default: {DEFAULTS['max_new_tokens']}, or the file's max_generate_length)",
        f"(default: {DEFAULTS['kv_capacity']})",
        f"(default: {DEFAULTS['max_input_len']})",
        f"(default: {DEFAULTS['max_batch_size']})",
        "(default: greedy;",
        "a flag given on the command line overrides the file's top-level field",
    ):
        assert text in out, text


def test_prompt_prints_plain_text_and_json_only_when_asked(checkpoints, capsys, tmp_path):
    ckpt = checkpoints["llama"]
    argv = [
        "generate",
        "--model",
        ckpt,
        "--prompt",
        "def add(a, b):",
        "--max-new-tokens",
        "6",
        *SMALL,
    ]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert cli.main([*argv, "--json"]) == 0
    response = json.loads(capsys.readouterr().out)["responses"][0]
    assert text == response["output_text"] + "\n"
    out = tmp_path / "out.json"
    assert cli.main([*argv, "--output-file", str(out)]) == 0
    assert capsys.readouterr().out == text  # the text still streams; the JSON goes to the file
    assert json.loads(out.read_text())["responses"][0] == response


def test_a_row_stopped_by_the_kv_capacity_gets_a_notice(checkpoints, capsys):
    ckpt = checkpoints["llama"]
    argv = [
        "generate",
        "--model",
        ckpt,
        "--prompt",
        "def add(a, b):",
        "--no-chat",
        "--max-new-tokens",
        "50",
    ]
    assert cli.main([*argv, "--max-input-len", "16", "--kv-capacity", "20"]) == 0
    err = capsys.readouterr().err
    assert re.search(
        r"note: request 0 stopped after \d+ tokens, not --max-new-tokens=50: its \d+-token prompt "
        r"and the output filled the KV cache \(--kv-capacity=20\); raise --kv-capacity",
        err,
    ), err


def _tree(path):
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("out", "match"),
    [
        (
            ".",
            r"out='CKPT' is inside the checkpoint directory 'CKPT' \(expected a directory outside it\)",
        ),
        ("sub/engine", r"out='CKPT/sub/engine' is inside the checkpoint directory"),
        ("..", r"out='CKPT/..' exists and is not an empty directory \(expected a new or empty"),
    ],
)
def test_build_never_overwrites_the_checkpoint_or_a_non_empty_directory(
    checkpoints, tmp_path, capsys, out, match
):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoints["qwen3"], ckpt)
    before = _tree(tmp_path)
    target = str(ckpt) if out == "." else f"{ckpt}/{out}"
    assert cli.main(["build", "--model", str(ckpt), "--out", target, "--provider", "onnx"]) == 2
    err = capsys.readouterr().err.replace(str(ckpt), "CKPT")
    assert re.search(match, err), err
    assert _tree(tmp_path) == before  # not one file written or changed


@pytest.mark.parametrize("seed", [str(2**64), str(2**63), "-1", "x"])
def test_seed_outside_its_range_names_the_flag(seed, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "--model", "M", "--prompt", "hi", "--seed", seed])
    assert e.value.code == 2
    assert re.search(
        r"argument --seed: .*(expected an integer 0..9223372036854775807|not an integer)",
        capsys.readouterr().err,
    )


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (
            ["--temperature", "nan"],
            r"argument --temperature: nan \(expected a finite number >= 0\)",
        ),
        (["--temperature", "-1"], r"argument --temperature: -1 \(expected a finite number >= 0\)"),
        (["--top-p", "0"], r"argument --top-p: 0 \(expected a finite number in \(0, 1\]\)"),
        (["--top-k", "-1"], r"argument --top-k: -1 \(expected an integer 0..16777216\)"),
        (
            ["--max-new-tokens", "0"],
            r"argument --max-new-tokens: 0 \(expected an integer 1..16777216\)",
        ),
        (["--batch-size", "0"], r"argument --batch-size: 0 \(expected an integer >= 1\)"),
        (["--kv-capacity", "0"], r"argument --kv-capacity: 0 \(expected an integer >= 1\)"),
    ],
)
def test_bad_flag_values_name_the_flag(argv, match, capsys):
    with pytest.raises(SystemExit):
        cli.main(["generate", "--model", "M", "--prompt", "hi", *argv])
    assert re.search(match, capsys.readouterr().err)


def test_output_and_input_problems_are_found_before_the_model_loads(tmp_path, capsys):
    missing_model = str(tmp_path / "no-such-model")  # loading it would fail: it is never reached
    base = ["generate", "--model", missing_model]
    out = str(tmp_path / "missing" / "out.json")
    assert cli.main([*base, "--prompt", "hi", "--output-file", out]) == 2
    assert (
        f"--output-file={out!r}: directory {str(tmp_path / 'missing')!r} does not exist"
        in capsys.readouterr().err
    )
    assert cli.main([*base, "--prompt", "hi", "--output-file", str(tmp_path)]) == 2
    assert "is a directory (expected a file path)" in capsys.readouterr().err
    req = tmp_path / "req.json"
    req.write_text('{"requests": [{"messages": [{"role": "user", "content": "x"}]}]}')
    assert cli.main([*base, "--input-file", str(req), "--output-file", str(req)]) == 2
    assert "is the --input-file (expected another path)" in capsys.readouterr().err
    assert req.read_text().startswith('{"requests"')
    assert cli.main([*base, "--prompt", "a\udcffb"]) == 2  # an undecodable byte in argv
    assert (
        "--prompt has an undecodable character at index 1 b'\\xff' (expected UTF-8"
        in capsys.readouterr().err
    )
    req.write_text('{"requests": [{"messages": [{"role": "user", "content": "\\ud800"}]}]}')
    assert cli.main([*base, "--input-file", str(req)]) == 2
    assert "has a lone surrogate" in capsys.readouterr().err


def test_limit_errors_name_the_flag(checkpoints, capsys):
    argv = ["generate", "--model", checkpoints["llama"], "--prompt", "x " * 40, "--no-chat"]
    assert cli.main([*argv, "--max-input-len", "8", "--kv-capacity", "16"]) == 2
    err = capsys.readouterr().err
    assert (
        "(expected 1..max_input_len=8)" in err
        and "[max_input_len is set by --max-input-len]" in err
    )
    assert cli.main([*argv, "--kv-capacity", str(2**30)]) == 2
    assert "[max_kv_cache_capacity is set by --kv-capacity]" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--max-queue", "0"], r"argument --max-queue: 0 \(expected an integer >= 1\)"),
        (["--prefix-cache", "-1"], r"argument --prefix-cache: -1 \(expected an integer >= 0\)"),
    ],
)
def test_bad_serve_flags_name_the_flag(argv, match, capsys):
    with pytest.raises(SystemExit):
        cli.main(["serve", "--model", "M", *argv])
    assert re.search(match, capsys.readouterr().err)


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (
            ["--draft", "D", "--tree-topk", "0"],
            r"argument --tree-topk: 0 \(expected an integer >= 1\)",
        ),
        (["--draft", "D", "--verify-size", "-2"], r"argument --verify-size: -2 \(expected an"),
    ],
)
def test_bad_draft_flags_name_the_flag(argv, match, capsys):
    with pytest.raises(SystemExit):
        cli.main(["generate", "--model", "M", "--prompt", "hi", *argv])
    assert re.search(match, capsys.readouterr().err)
