"""Class-conditional GPT over tokenizer codes (LlamaGen / GigaTok) and its KV-cache sampler."""
from gigatok.gpt.config import POS_TYPES, GPTConfig
from gigatok.gpt.generate import cfg_schedule_values, generate
from gigatok.gpt.model import GPT, GPT_MODELS, LabelEmbedder

__all__ = ["GPT", "GPT_MODELS", "GPTConfig", "LabelEmbedder", "POS_TYPES", "cfg_schedule_values", "generate"]
