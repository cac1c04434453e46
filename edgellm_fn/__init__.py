"""edgellm_fn: a JAX-style functional LLM inference runtime in the shape of TensorRT Edge-LLM."""

from .config import DeploymentConfig as DeploymentConfig
from .config import EngineConfig as EngineConfig
from .config import ModelConfig as ModelConfig
from .config import MRopeConfig as MRopeConfig
from .dims import InferenceDims as InferenceDims
from .dims import decode_dims as decode_dims
from .dims import prefill_dims as prefill_dims
from .engine.inputs import load_external_weights as load_external_weights
from .engine.loading import load_engine as load_engine
from .engine.protocol import Engine as Engine
from .engine.spec import EngineSpec as EngineSpec
from .engine.spec import build_llm_spec as build_llm_spec
from .engine.tensor_map import build_tensor_map as build_tensor_map
from .engine.xla import XlaEngine as XlaEngine
from .engine.xla_spec import load_spec_engines as load_spec_engines
from .errors import AdapterError as AdapterError
from .errors import CheckpointError as CheckpointError
from .errors import ConfigError as ConfigError
from .errors import EngineError as EngineError
from .errors import InputError as InputError
from .errors import TensorParallelError as TensorParallelError
from .models.eagle3 import Eagle3Config as Eagle3Config
from .models.eagle3 import SpecDecodeConfig as SpecDecodeConfig
from .models.loader import load_checkpoint as load_checkpoint
from .models.vocab import load_vocab_map as load_vocab_map
from .runtime.generate import Completion as Completion
from .runtime.generate import TextDelta as TextDelta
from .runtime.generate import generate as generate
from .runtime.generate import stream as stream
from .runtime.loops import decode_python as decode_python
from .runtime.loops import decode_while as decode_while
from .runtime.loops import token_limits as token_limits
from .runtime.lora import LoraBank as LoraBank
from .runtime.lora import load_lora_bank as load_lora_bank
from .runtime.prompts import pad_prompts as pad_prompts
from .runtime.sampling import SamplingConfig as SamplingConfig
from .runtime.sampling import SamplingParams as SamplingParams
from .runtime.sampling import make_sampling_params as make_sampling_params
from .runtime.sampling import sample as sample
from .runtime.spec_decode import SpecResult as SpecResult
from .runtime.spec_decode import accept as accept
from .runtime.spec_decode import create_spec_state as create_spec_state
from .runtime.spec_decode import propose as propose
from .runtime.spec_decode import spec_decode_python as spec_decode_python
from .runtime.spec_decode import spec_decode_while as spec_decode_while
from .runtime.spec_decode import spec_prefill as spec_prefill
from .runtime.spec_decode import verify_tree as verify_tree
from .runtime.spec_generate import spec_decode_generate as spec_decode_generate
from .runtime.steps import decode as decode
from .runtime.steps import embed as embed
from .runtime.steps import prefill as prefill
from .state.kv import KVCache as KVCache
from .state.lora import LoraState as LoraState
from .state.resources import RuntimeState as RuntimeState
from .state.resources import SharedResources as SharedResources
from .state.resources import create_state as create_state
from .text.tokenizer import Tokenizer as Tokenizer

__all__ = [
    "AdapterError",
    "CheckpointError",
    "Completion",
    "ConfigError",
    "DeploymentConfig",
    "Eagle3Config",
    "Engine",
    "EngineConfig",
    "EngineError",
    "EngineSpec",
    "InferenceDims",
    "InputError",
    "KVCache",
    "LoraBank",
    "LoraState",
    "ModelConfig",
    "MRopeConfig",
    "RuntimeState",
    "SamplingConfig",
    "SamplingParams",
    "SharedResources",
    "SpecDecodeConfig",
    "SpecResult",
    "TensorParallelError",
    "TextDelta",
    "Tokenizer",
    "XlaEngine",
    "accept",
    "build_llm_spec",
    "build_tensor_map",
    "create_spec_state",
    "create_state",
    "decode",
    "decode_dims",
    "decode_python",
    "decode_while",
    "embed",
    "generate",
    "load_checkpoint",
    "load_engine",
    "load_external_weights",
    "load_lora_bank",
    "load_spec_engines",
    "load_vocab_map",
    "make_sampling_params",
    "pad_prompts",
    "prefill",
    "prefill_dims",
    "propose",
    "sample",
    "spec_decode_generate",
    "spec_decode_python",
    "spec_decode_while",
    "spec_prefill",
    "stream",
    "token_limits",
    "verify_tree",
]
