"""Level 0: the typed config tree (standard library and omegaconf only, no torch).

- `core`: loading YAML into structured dataclasses, `--section.key=value` overrides, `ConfigError`.
- `tokenizer`: the tokenizer config (`configs/vq/*.yaml`, official layout).
"""
from gigatok.config.core import (
    ConfigError,
    _all_keys,
    all_keys,
    config_from_dict,
    load_config,
    parse_overrides,
    to_dict,
    to_yaml,
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
    "TEACHER_DIMS", "TRANSFORMER_SIZES", "CausalSettings", "ConfigError", "LossParams", "LossSection", "ModelSection",
    "TrainerConfig", "VQConfig", "VQModelArgs", "_all_keys", "all_keys", "config_from_dict", "load_config",
    "parse_overrides", "to_dict", "to_yaml",
]
