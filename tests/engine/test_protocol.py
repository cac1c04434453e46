"""Every provider implements the Engine protocol with identical signatures, and the executors
know nothing about models or features."""

from __future__ import annotations

import inspect
import pathlib
import re

import pytest

from edgellm_fn.engine.callback.onnxruntime import OnnxRuntimeEngine
from edgellm_fn.engine.callback.tensorrt import TensorRtEngine
from edgellm_fn.engine.protocol import Engine
from edgellm_fn.engine.xla import XlaEngine

PROVIDERS = [XlaEngine, OnnxRuntimeEngine, TensorRtEngine]
METHODS = ["prepare", "execute", "capture_graph"]
PROPERTIES = ["spec", "embedding"]


@pytest.mark.parametrize("cls", PROVIDERS, ids=lambda c: c.__name__)
def test_signatures_match_the_protocol(cls):
    for name in METHODS:
        assert inspect.signature(getattr(cls, name)) == inspect.signature(getattr(Engine, name)), (
            name
        )
    for name in PROPERTIES:
        ours, theirs = getattr(cls, name), getattr(Engine, name)
        assert isinstance(ours, property), name
        assert inspect.signature(ours.fget) == inspect.signature(theirs.fget), name


def test_executors_name_no_model_family_or_feature():
    engine_dir = pathlib.Path(__file__).parents[2] / "edgellm_fn" / "engine"
    executors = [
        "callback/glue.py",
        "callback/onnxruntime.py",
        "callback/tensorrt.py",
        "callback/trt_adapter.py",
        "snapshot.py",
    ]
    pattern = re.compile(r"llama|qwen|gemma|lora|eagle|spec_decode", re.IGNORECASE)
    for name in executors:
        hits = pattern.findall((engine_dir / name).read_text())
        assert not hits, f"{name} mentions {sorted(set(hits))}"
