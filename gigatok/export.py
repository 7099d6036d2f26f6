"""Export a tokenizer checkpoint as weights-only safetensors plus its resolved config, for sharing.

    python -m gigatok.export --vq-ckpt VQ_SS256_e100.pt --model-config configs/vq/VQ_SS256.yaml --out-dir exports/SS256

writes `model.safetensors` (no pickle, loads anywhere) and `config.yaml` (the resolved config). Load it back with
`gigatok.builders.load_tokenizer("exports/SS256/model.safetensors", "exports/SS256/config.yaml")`.
The weights are loaded into the model first, so a checkpoint that does not match the config is rejected here.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gigatok.builders import load_tokenizer
from gigatok.config import ConfigError, load_config, save_config
from gigatok.infra.checkpoint import CheckpointError


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vq-ckpt", required=True, help="checkpoint: path or hf://owner/repo/file.pt")
    parser.add_argument("--model-config", required=True, help="tokenizer YAML the checkpoint was trained with")
    parser.add_argument("--out-dir", required=True, help="folder for model.safetensors and config.yaml")
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    try:
        config = load_config(args.model_config, overrides)
        tokenizer = load_tokenizer(args.vq_ckpt, config)
    except (ConfigError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from safetensors.torch import save_file

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in tokenizer.state_dict().items()}
    tmp = out / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt", "model_cls": config.model.model_cls})
    tmp.replace(out / "model.safetensors")
    save_config(config, out / "config.yaml")
    n_params = sum(v.numel() for v in state.values())
    print(f"exported {len(state)} tensors ({n_params / 1e6:.1f}M values) to {out}/model.safetensors + config.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
