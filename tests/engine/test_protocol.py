"""Every provider implements the Engine protocol with identical signatures, names itself with a
name of the one provider list, and the executors know nothing about models or features."""

from __future__ import annotations

import inspect
import pathlib
import re

import pytest

from edgellm_fn.engine.callback.onnxruntime import OnnxRuntimeEngine
from edgellm_fn.engine.callback.tensorrt import TensorRtEngine
from edgellm_fn.engine.protocol import Engine
from edgellm_fn.engine.providers import PROVIDERS, resolve_provider
from edgellm_fn.engine.xla import XlaEngine
from edgellm_fn.errors import ConfigError
from edgellm_fn.testing.fake_engine import FakeEngine

ENGINES = [XlaEngine, OnnxRuntimeEngine, TensorRtEngine, FakeEngine]
METHODS = ["prepare", "execute"]
PROPERTIES = ["spec", "embedding", "vocab_map"]
PACKAGE = pathlib.Path(__file__).parents[2] / "edgellm_fn"


@pytest.mark.parametrize("cls", ENGINES, ids=lambda c: c.__name__)
def test_signatures_match_the_protocol(cls):
    for name in METHODS:
        assert inspect.signature(getattr(cls, name)) == inspect.signature(getattr(Engine, name)), (
            name
        )
    for name in PROPERTIES:
        ours, theirs = getattr(cls, name), getattr(Engine, name)
        assert isinstance(ours, property), name
        assert inspect.signature(ours.fget) == inspect.signature(theirs.fget), name
    assert set(Engine.__annotations__) == {"provider", "config"}


def test_each_provider_names_itself_from_the_one_list():
    names = [cls.provider for cls in (XlaEngine, OnnxRuntimeEngine, TensorRtEngine)]
    assert names == list(PROVIDERS)


def test_provider_aliases_map_to_the_one_list():
    assert resolve_provider("onnx", "build") == ("onnxruntime", None)
    assert resolve_provider("tensorrt-rtx", "build") == ("tensorrt", "tensorrt-rtx")
    assert resolve_provider("tensorrt", "build") == ("tensorrt", "tensorrt")
    with pytest.raises(
        ConfigError, match=r"generate: provider='trt' \(expected one of .*aliases: 'onnx' = "
    ):
        resolve_provider("trt", "generate")


def test_nothing_outside_engine_probes_the_provider():
    probe = re.compile(r"(getattr|hasattr)\(\s*\w+\s*,\s*['\"]provider['\"]")
    hits = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "engine" not in path.relative_to(PACKAGE).parts[:1] and probe.search(path.read_text())
    ]
    assert not hits


def test_executors_name_no_model_family_or_feature():
    executors = [
        "callback/glue.py",
        "callback/onnxruntime.py",
        "callback/tensorrt.py",
        "callback/trt_adapter.py",
        "snapshot.py",
    ]
    pattern = re.compile(r"llama|qwen|gemma|lora|eagle|spec_decode", re.IGNORECASE)
    for name in executors:
        hits = pattern.findall((PACKAGE / "engine" / name).read_text())
        assert not hits, f"{name} mentions {sorted(set(hits))}"
