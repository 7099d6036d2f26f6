"""Level 0: the typed config tree (standard library and omegaconf only, no torch).

- `core`: loading YAML into structured dataclasses, `--section.key=value` overrides.
- `checks`: `ConfigError` and the value checks every field declares.
- `tokenizer`: the tokenizer config (`configs/vq/*.yaml`, official layout).
- `gpt`: the GPT side (training, sampling, evaluation), its fields named after the official flags.
- `flags`: official command-line flags onto the tree.
"""
from gigatok.config.checks import ConfigError, between, choice, positive, validate
from gigatok.config.core import (
    _all_keys,
    all_keys,
    config_from_dict,
    load_config,
    parse_overrides,
    to_dict,
    to_yaml,
)
from gigatok.config.gpt import (
    EvalSettings,
    GPTDataConfig,
    GPTEvalConfig,
    GPTFIDConfig,
    GPTModelConfig,
    GPTSampleConfig,
    GPTTrainConfig,
    GPTTrainerConfig,
    SampleSettings,
    TokenizerRef,
)
from gigatok.config.tokenizer import (
    TEACHER_DIMS,
    TRANSFORMER_SIZES,
    CausalSettings,
    LossParams,
    LossSection,
    ModelSection,
    TrainerConfig,
    VQConfig,
    VQModelArgs,
)

__all__ = [
    "EvalSettings", "GPTDataConfig", "GPTEvalConfig", "GPTFIDConfig", "GPTModelConfig", "GPTSampleConfig",
    "GPTTrainConfig", "GPTTrainerConfig",
    "SampleSettings", "TokenizerRef", "between", "choice", "positive", "validate",
    "TEACHER_DIMS", "TRANSFORMER_SIZES", "CausalSettings", "ConfigError", "LossParams", "LossSection", "ModelSection",
    "TrainerConfig", "VQConfig", "VQModelArgs", "_all_keys", "all_keys", "config_from_dict", "load_config",
    "parse_overrides", "to_dict", "to_yaml",
]
