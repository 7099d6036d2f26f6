"""Export a tokenizer or GPT checkpoint as weights-only safetensors plus its resolved config, for sharing.

    gigatok export --vq-ckpt VQ_SS256_e100.pt --model-config configs/vq/VQ_SS256.yaml --out-dir exports/SS256
    gigatok export --gpt-ckpt GPT_B256_e300_VQ_SS.pt --gpt-model GPT-B --out-dir exports/GPT-B_SS

writes `model.safetensors` (no pickle, loads anywhere) and `config.yaml` (the resolved config). Load them back with
`gigatok.builders.load_tokenizer("exports/SS256/model.safetensors", "exports/SS256/config.yaml")` or
`gigatok.builders.load_gpt_export("exports/GPT-B_SS")`. The weights are loaded into the model first, so a
checkpoint that does not match the config is rejected here. Training checkpoints export their "ema" weights when
they have them (`--no-ema` for the raw ones).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gigatok.builders import load_tokenizer
from gigatok.config import ConfigError, load_config, to_yaml
from gigatok.infra.checkpoint import CheckpointError
from gigatok.infra.io import atomic_write, write_text_atomic


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vq-ckpt", help="tokenizer checkpoint: path or hf://owner/repo/file.pt")
    parser.add_argument("--model-config", help="tokenizer YAML the checkpoint was trained with")
    parser.add_argument("--gpt-ckpt", help="GPT checkpoint (instead of a tokenizer)")
    parser.add_argument("--gpt-model", default="GPT-B", help="GPT registry size of --gpt-ckpt")
    parser.add_argument("--gpt-2d", action="store_true", help="LlamaGen GPT with 2D RoPE")
    parser.add_argument("--rope", action="store_true", help="GigaTok GPT with 1D RoPE")
    parser.add_argument("--vocab-size", type=int, default=16384, help="GPT: codebook size K of its tokenizer")
    parser.add_argument("--block-size", type=int, default=256, help="codes per image")
    parser.add_argument("--num-classes", type=int, default=1000, help="GPT: number of classes")
    parser.add_argument("--no-ema", action="store_true", help="GPT: export 'model' even if 'ema' exists")
    parser.add_argument("--out-dir", required=True, help="folder for model.safetensors and config.yaml")
    args, overrides = parser.parse_known_args(argv)
    if (args.vq_ckpt is None) == (args.gpt_ckpt is None):
        parser.error("pass either --vq-ckpt with --model-config (tokenizer) or --gpt-ckpt with --gpt-model (GPT)")
    if args.vq_ckpt is not None and args.model_config is None:
        parser.error("--vq-ckpt needs --model-config")
    return args, overrides


def _write(out: Path, state: dict, metadata: dict[str, str]) -> int:
    """model.safetensors, atomically; returns the number of values."""
    from safetensors.torch import save

    state = {k: v.contiguous() for k, v in state.items()}
    atomic_write(out / "model.safetensors", lambda f: f.write(save(state, metadata={"format": "pt", **metadata})))
    return sum(v.numel() for v in state.values())


def export_gpt(args: argparse.Namespace) -> int:
    import dataclasses

    import yaml

    from gigatok.builders import load_gpt
    from gigatok.infra.checkpoint import read_checkpoint

    pos_type = "rope_2d" if args.gpt_2d else "rope_1d" if args.rope else "learned_1d"
    use_ema = not args.no_ema and "ema" in read_checkpoint(args.gpt_ckpt)
    gpt = load_gpt(args.gpt_ckpt, args.gpt_model, pos_type=pos_type, vocab_size=args.vocab_size,
                   block_size=args.block_size, num_classes=args.num_classes, use_ema=use_ema)
    out = Path(args.out_dir)
    n = _write(out, gpt.state_dict(), {"gpt_model": args.gpt_model, "pos_type": pos_type})
    write_text_atomic(out / "config.yaml",
                      yaml.safe_dump({"gpt_model": args.gpt_model, "config": dataclasses.asdict(gpt.config)}))
    print(f"exported GPT ({'ema' if use_ema else 'model'} weights, {n / 1e6:.1f}M values) to {out}/model.safetensors "
          "+ config.yaml")
    return 0


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    try:
        if args.gpt_ckpt is not None:
            return export_gpt(args)
        config = load_config(args.model_config, overrides)
        tokenizer = load_tokenizer(args.vq_ckpt, config)
    except (ConfigError, CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out_dir)
    n = _write(out, tokenizer.state_dict(), {"model_cls": config.model.model_cls})
    write_text_atomic(out / "config.yaml", to_yaml(config))
    print(f"exported {len(tokenizer.state_dict())} tensors ({n / 1e6:.1f}M values) to {out}/model.safetensors "
          "+ config.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
