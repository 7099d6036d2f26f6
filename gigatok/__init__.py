"""GigaTok: a PyTorch re-implementation of the GigaTok hybrid VQ image tokenizer and its class-conditional GPTs.

Shape letters used in every module:
- B batch
- C channels; H, W height and width of an image or feature map; S image side (square images, H = W = S)
- f CNN downsampling factor; G latent grid side (G*G 2D tokens)
- L latent tokens = codes per image (1D tokenizer: num_latent_tokens; 2D: G*G)
- K codebook size (= GPT vocabulary); Dc code dim (codebook_embed_dim); Cz z_channels
- D width; Dh head dim; nh query heads; nkv key/value heads; F feed-forward hidden width
- T sequence positions (the GPT: class token + codes; attention: query positions); Tk key/value positions; Tmax cache
  length
- A augmented views per image; R decoding rows (2B with classifier-free guidance, else B)
- N a flattened count, stated where used (e.g. "N = B*H*W vectors", "N images")
- P patch tokens of a ViT; Dt teacher width

Public API (imported lazily: `import gigatok` loads neither torch nor a model)::

    import gigatok
    from PIL import Image

    gigatok.list_pretrained()                      # released files (GigaTok 13, LlamaGen 9): config, sizes, link
    config = gigatok.load_config("VQ_SS256")       # a shipped tokenizer config (works from an installed package)

    tokenizer = gigatok.load_tokenizer("VQ_SS256")  # released name, file, saved folder or hf://owner/repo[/file]
    images = gigatok.preprocess(Image.open("photo.jpg"), tokenizer.image_size)  # (1, 3, 256, 256) in [-1, 1]
    codes = tokenizer.encode_to_codes(images)      # (1, 256) int64
    gigatok.postprocess(tokenizer.decode_code(codes))[0].save("reconstruction.png")

    gpt = gigatok.load_gpt("GPT_B256_e300_VQ_SS")  # pairs with VQ_SS256
    samples = gigatok.sample(gpt, tokenizer, [22, 388, 90, 978], cfg_scale=4.0)  # (4, 3, 256, 256)

    gigatok.save_pretrained(tokenizer, "my_tokenizer")    # model.safetensors + config.yaml + README.md model card
    tokenizer = gigatok.from_pretrained("my_tokenizer")   # or a Hub id "owner/repo"
    gigatok.push_to_hub(tokenizer, "me/gigatok-ss256")    # through huggingface_hub.HfApi

Released names download once into the torch-hub cache from the official links (`GIGATOK_OFFLINE=1` never
downloads; `GIGATOK_WEIGHTS_BASE_URL` names a mirror). Lower-level pieces: `gigatok.builders` (configs and
checkpoints to modules), `gigatok.config` (the typed config tree), the stages (`gigatok --help`).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gigatok.zoo import Pretrained, list_pretrained, load_config

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on first use
    from gigatok.api import load_gpt, load_tokenizer, postprocess, preprocess, sample
    from gigatok.hub import from_pretrained, push_to_hub, save_pretrained

__version__ = "0.1.0"

# public name -> module that defines it (torch-heavy: imported on first access)
_LAZY = {
    "load_tokenizer": "gigatok.api", "load_gpt": "gigatok.api", "preprocess": "gigatok.api",
    "postprocess": "gigatok.api", "sample": "gigatok.api",
    "save_pretrained": "gigatok.hub", "from_pretrained": "gigatok.hub", "push_to_hub": "gigatok.hub",
}

__all__ = ["Pretrained", "from_pretrained", "list_pretrained", "load_config", "load_gpt", "load_tokenizer",
           "postprocess", "preprocess", "push_to_hub", "sample", "save_pretrained"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'gigatok' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
