"""The tokenizer config (`configs/vq/*.yaml`), in the official layout so that the official files load unchanged:

    model:   {model_cls, init_args: {...VQModelArgs}, causal_settings: {...}}
    trainer: {lr, lr_scheduler, ..., distill_loss, global_batch_size, warmup}
    loss:    {loss_cls, params: {...LossParams}}

Loading, overrides and errors: `gigatok.config.core`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from gigatok.config.checks import ConfigError, between, choice, positive

# Transformer sizes shared by the Q-Former encoder/decoder: name -> (width, layers, heads).
TRANSFORMER_SIZES: dict[str, tuple[int, int, int]] = {
    "debug": (64, 2, 2),
    "tiny": (256, 4, 4),
    "small": (512, 6, 8),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "xl": (1280, 36, 20),
    "xxl": (1536, 48, 24),
    "xxxl": (2560, 48, 40),
}


# Feature width of each supported semantic teacher (fills `out_inner_dim` when the config leaves it null).
TEACHER_DIMS: dict[str, int] = {
    "dinov2-vit-s": 384,
    "dinov2-vit-b": 768,
    "dinov2-vit-l": 1024,
    "siglip-sovit-400m": 1152,
    "clip_dfn-vit-l/14": 1024,
}


# `model.init_args.quantizer` values: the names of `gigatok.tokenizer.quantizer_zoo.QUANTIZERS` (a test keeps them equal).
QUANTIZER_NAMES = ("vq", "simvq", "ibq", "lfq", "fsq")


# `model.causal_settings.causal_type` values (official `get_attn_mask`): the 1D encoder's queries attend causally,
# per token or per level (levels of 2, 2, 4, 8, ... tokens), so that a prefix of the tokens can be decoded alone.
CAUSAL_TYPES = (None, "per-level", "per-token")


@dataclass
class CausalSettings:
    """Official `model.causal_settings` block (causal 1D Q-Former encoder, an ablation of the paper).

    causal_type: None (released configs), "per-level" or "per-token" (see CAUSAL_TYPES); 1D tokenizer only.
    dynamic_length_train: train on a random prefix of the tokens each step: "per-level" keeps 2**k tokens,
        "per-token" k tokens, k drawn from `dynamic_level_range` ([start, stop] stepping by start, or an explicit
        list of 3+ values for per-token) or else min_level..log2(L) (per-level) / min_level..L (per-token), with
        weights (k / max k) ** (epoch / power_sample_T) (uniform when power_sample_T is null).
    """

    causal_type: Optional[str] = field(default=None, metadata=choice(*CAUSAL_TYPES[1:]))
    dynamic_length_train: bool = False
    dynamic_level_range: Any = None
    min_level: int = 0
    power_sample_T: Optional[float] = field(default=None, metadata=positive())


@dataclass
class VQModelArgs:
    """`model.init_args`: the union of the official `VQVitModelPlusArgs` and `VQVitModel2DPlusArgs` fields.

    Field names and defaults are the official ones so that every official YAML loads unchanged. Options the
    official code marks deprecated or experimental are accepted here (so the files load) but rejected by the
    model builder with a clear message when switched on.

    The quantizer (`quantizer`, see `gigatok.tokenizer.quantizer_zoo`) takes its parameters from the existing
    fields: codebook_size (K, all; lfq: 2**codebook_embed_dim, fsq: prod(levels)), codebook_embed_dim (Dc, all; fsq:
    len(levels)), commit_loss_beta and entropy_* (vq, simvq, ibq, lfq), codebook_l2_norm and rot (vq, simvq),
    codebook_show_usage (all), codebook_transform and freeze_codebook (simvq), levels (fsq). The official switches
    `simvq: True` and `use_lfq: True` select simvq and lfq (`resolved_quantizer`).
    """

    # quantizer
    quantizer: str = field(default="vq", metadata=choice(*QUANTIZER_NAMES))  # ours; official: vq (+ simvq/use_lfq)
    levels: Optional[list[int]] = None  # fsq: values per channel, e.g. [8, 5, 5, 5] (official --levels)
    codebook_size: int = field(default=16384, metadata=positive())
    codebook_embed_dim: int = field(default=8, metadata=positive())
    codebook_l2_norm: bool = True
    codebook_show_usage: bool = True
    commit_loss_beta: float = 0.25
    entropy_loss_ratio: float = 0.0
    entropy_temperature: float = 0.01  # ours: the official code hard-codes 0.01
    entropy_all_ranks: bool = False  # ours: entropy loss over the code distribution of all ranks (official: local)
    rot: bool = False
    # CNN + Q-Former sizes
    encoder_ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    decoder_ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    cnn_ch: int = 128  # ours: base channel count of the CNN encoder/decoder (official: fixed 128)
    num_res_blocks: int = 2  # ours: ResnetBlocks per encoder level (decoder: one more), official: fixed 2
    # ours: CNN layout. None = auto: channels-last, except NCHW for training on x86 CPUs without AVX-512
    # (gigatok.infra.parallel.cnn_channels_last_for_training); False: NCHW, also faster for 32-channel CNNs on the CPU.
    cnn_channels_last: Optional[bool] = None
    model_size: Optional[str] = "small"
    encoder_size: Optional[str] = None
    decoder_size: Optional[str] = None
    num_latent_tokens: int = field(default=256, metadata=positive())
    z_channels: int = 256
    dropout_p: float = 0.0
    image_size: int = 256  # ours: the grid (image_size / 2**(len(ch_mult)-1)) and positional tables follow it
    transformer_layer_type: str = "TransformerDecoderLayer"  # 2D variant only
    use_qk_norm: bool = False
    use_flash_attn: bool = False  # SDPA picks the fastest kernel itself; kept for config compatibility
    # 1D query initialisation of the 2D->1D Q-Former
    multi_level_query_init: bool = False
    learnable_1d_query_init: bool = False
    # 2D query initialisation of the 1D->2D Q-Former
    last_level_2d_query_init: bool = False
    multi_level_2d_query_init: bool = False
    learnable_2d_query_init: bool = False
    # ours: "distinct" makes the latent tokens differ from the first step at any width: the 1D encoder's
    # `global_proj` starts with std width**-0.5 (gain 1) instead of 0.02, and `quant_conv`'s bias at zero (see
    # gigatok.tokenizer.vq_model.distinct_token_init and the demo config's notes). Weights only: same keys.
    token_init: str = field(default="official", metadata=choice("official", "distinct"))
    # CNN decoder tricks
    adaptive_gn: bool = False
    d2s_up: bool = False
    use_attn: bool = True
    # semantic regularisation
    distill_depth: Optional[int] = None
    out_inner_dim: Optional[int] = None  # null: the teacher's width (trainer.distill_model), as the official loader
    fea_rec_loss_type: str = "cosine"
    fea_rec_loss_weight: float = 1.0
    # official options that no released config switches on (accepted, rejected at build time when True)
    use_rope: bool = False
    rope_1d: bool = False
    rope_2d: bool = False
    res_up_down_sample: bool = False
    downsample_match_channel: bool = False
    upsample_match_channel: bool = False
    res_codebook_updown_sample: bool = False
    downsample_improve: bool = False
    stochastic: bool = False
    stochastic_temperature: float = 0.03
    encoder_2d_distill: bool = False
    with_prior_model: bool = False
    prior_model_config: Any = None
    use_lfq: bool = False
    bernoulli_sample: bool = False
    eval_deterministic: bool = False
    # simvq (official names): the codebook is codebook_transform(embedding); null transform = "linear"
    simvq: bool = False
    codebook_transform: Optional[str] = field(default=None, metadata=choice("linear", "mlp"))
    freeze_codebook: bool = False

    def resolved_quantizer(self) -> str:
        """The quantizer name: `quantizer`, or simvq / lfq when the official `simvq` / `use_lfq` switch is on."""
        if self.simvq:
            return "simvq"
        return "lfq" if self.use_lfq else self.quantizer

    def __post_init__(self) -> None:
        """Cross-field checks of the quantizer (each field's own range is checked by `checks.validate`)."""
        name = self.quantizer
        if self.simvq and self.use_lfq:
            raise ConfigError("model.init_args: simvq and use_lfq are both True; switch one off (or set quantizer)")
        for flag, implied in (("simvq", "simvq"), ("use_lfq", "lfq")):
            if getattr(self, flag) and name not in ("vq", implied):
                raise ConfigError(f"model.init_args: {flag}: True selects quantizer {implied!r} but quantizer is "
                                  f"{name!r}; set {flag} to False or quantizer to {implied!r}")
        name = self.resolved_quantizer()
        if self.levels is not None and name != "fsq":
            raise ConfigError(f"model.init_args.levels {list(self.levels)} is for quantizer 'fsq', not {name!r}; "
                              "remove levels or set quantizer: fsq")
        if name == "fsq":
            if not self.levels or min(self.levels) < 2:
                raise ConfigError(f"model.init_args: quantizer fsq needs levels, a list of integers >= 2 such as "
                                  f"[8, 5, 5, 5]; got {self.levels}")
            size, dim = math.prod(self.levels), len(self.levels)
            if (self.codebook_size, self.codebook_embed_dim) != (size, dim):
                raise ConfigError(f"model.init_args: fsq levels {list(self.levels)} give codebook_size {size} and "
                                  f"codebook_embed_dim {dim}; set them so (got {self.codebook_size}, "
                                  f"{self.codebook_embed_dim})")
        if name == "lfq" and self.codebook_size != 2**self.codebook_embed_dim:
            raise ConfigError(f"model.init_args: quantizer lfq has codebook_size 2**codebook_embed_dim = "
                              f"{2**self.codebook_embed_dim} (one code per sign pattern of the {self.codebook_embed_dim} "
                              f"channels); got codebook_size {self.codebook_size}")


@dataclass
class ModelSection:
    model_cls: str = "VQVitModelPlus"  # or "VQVitModel2DPlus"; "VQ-16" / "VQ-8": LlamaGen's CNN VQ (llamagen_vq.py)
    init_args: VQModelArgs = field(default_factory=VQModelArgs)
    causal_settings: CausalSettings = field(default_factory=CausalSettings)
    # A checkpoint to start a new run from (model, EMA, optimizers, discriminator when present) at step 0; used
    # only when the run folder holds no checkpoint of its own (official: stage-2 recipes start from stage 1).
    init_ckpt: Optional[str] = None


@dataclass
class TrainerConfig:
    """`trainer:` block. Official fields first; the rest are ours and default to the official behaviour."""

    lr: float = field(default=1e-4, metadata=positive())
    lr_scheduler: str = "cosine_v2"  # cosine_v2 | cosine (to 0) | const | wsd (official names) | constant | none
    end_lr: float = field(default=1e-5, metadata=between(0, None))
    optimizer: str = field(default="AdamW", metadata=choice("AdamW", "Adam"))  # AdamW (decoupled weight decay) | Adam (L2 weight decay), as the official trainer
    global_seed: int = 0
    weight_decay: float = field(default=1e-4, metadata=between(0, None))
    beta1: float = field(default=0.9, metadata=between(0, 1))
    beta2: float = field(default=0.95, metadata=between(0, 1))
    max_grad_norm: float = field(default=10.0, metadata=between(0, None))
    distill_loss: bool = False
    distill_model: str = "dinov2-vit-b"
    global_batch_size: Optional[int] = field(default=None, metadata=positive())
    warmup: int = field(default=0, metadata=between(0, None))
    # From this step on only the CNN pixel decoder trains (everything else frozen) and the semantic loss is off
    # (official decoder fine-tuning stage); null: never.
    freeze_but_decoder_iter: Optional[int] = field(default=None, metadata=between(0, None))
    # Regularisation: each latent token keeps its continuous (normalised) value instead of its codeword with
    # probability `replace_ratio` during training.
    random_mix_reg: bool = False
    replace_ratio: Optional[float] = field(default=None, metadata=between(0, 1))
    prior_lr_mult: float = 1.0  # LR multiplier of the prior model (`with_prior_model`, not implemented: inert)
    # -- ours: training-run settings the official trainer takes as `vq_train.py` flags (defaults = its defaults) --
    iterations: Optional[int] = None  # total optimizer steps; sets the LR schedule length (--iterations, required)
    early_stop_iter: Optional[int] = None  # stop (and checkpoint) at this step; the schedule still spans `iterations`
    fract_decay: float = 0.2  # `wsd` only: fraction of the iterations spent decaying
    mixed_precision: str = "bf16"  # autocast dtype: none | fp16 (with GradScalers) | bf16
    # micro-batches per optimizer step (the official flag is parsed but ignored; applied here)
    grad_accum_steps: int = field(default=1, metadata=positive())
    ema: bool = False  # keep an EMA of the tokenizer weights (saved as "ema", preferred by every loader)
    ema_decay: float = field(default=0.9999, metadata=between(0, 1))
    log_every: int = 500
    ckpt_every: int = 5000
    keep_last: int = 10  # non-milestone checkpoints kept (official manage_ckpt_num)
    milestone_step: int = 50000  # checkpoints at milestone_start + k * milestone_step are kept longer
    milestone_start: int = 50000
    max_milestone_num: int = 30
    preview_every: Optional[int] = None  # reconstruction grid PNG every N steps; null: at each checkpoint, 0: off
    data_path: Optional[str] = None  # ImageNet-style ImageFolder (class sub-folders) or a flat folder of images
    dataset: str = "imagenet"
    num_workers: int = 16  # DataLoader workers per rank (capped at the CPU cores per rank)
    max_consecutive_nonfinite: int = 10  # NaN/inf losses skipped in a row before the run stops
    # W&B: auto (on when wandb is installed and logged in, else off with a note; the official trainer tried online
    # and ran without on failure) | online | offline | disabled (--no-wandb). --wandb-mode sets it.
    wandb_mode: str = "auto"
    wandb_project: str = "gigatok"
    tensorboard: bool = False  # also write TensorBoard scalars to <run dir>/tensorboard (--tensorboard)
    # ddp | none | the FSDP2 modes of vq_train_fsdp.py (scripts/train_vq_fsdp.sh passes fsdp, its default): fsdp
    # (full sharding of the Q-Former layers), sdp (gradients + optimizer state sharded, parameters kept from
    # forward to backward), hsdp (sharded within a node, replicated across nodes)
    data_parallel: str = field(default="ddp", metadata=choice("ddp", "fsdp", "sdp", "hsdp", "none"))
    decay_policy: Optional[str] = None  # AdamW weight decay; null: "all" (DDP), "no_norm_bias" (FSDP), as official
    # FSDP gradient reduce dtype (fp32 | bf16 | fp16 | none = fp32); null: the mixed_precision dtype (official)
    grad_precision: Optional[str] = field(default=None, metadata=choice("fp32", "bf16", "fp16", "none"))
    compile: bool = False
    activation_checkpointing: bool = False  # recompute Q-Former layer activations in backward
    deterministic: bool = False  # torch.use_deterministic_algorithms(True) (exact-resume tests, debugging)
    teacher_weights: Optional[str] = None  # semantic teacher weights file (default lookup: torch-hub / HF caches)
    teacher_random_init: bool = False  # random teacher: tests only, the semantic loss is meaningless
    lpips_random_backbone: bool = False  # random LPIPS VGG: tests only (also GIGATOK_LPIPS_RANDOM_BACKBONE=1)
    dino_disc_weights: Optional[str] = None  # frozen DINO of `disc_type: dinodisc` (default lookup: hub cache)
    dino_disc_random_init: bool = False  # tests only


@dataclass
class LossParams:
    """`loss.params:` block, the official `VQLoss` arguments."""

    disc_start: int = 20000
    disc_weight: float = 0.5
    disc_loss: str = "hinge"
    disc_dim: int = 64
    disc_num_layers: int = 3
    disc_type: str = "patchgan"
    disc_adaptive_weight: bool = False
    kw: int = 4
    norm: str = "batch"
    gen_adv_loss: str = "hinge"
    image_size: int = 256
    perceptual_weight: float = 1.0
    perceptual_model: str = "vgg"
    reconstruction_weight: float = 1.0
    reconstruction_loss: str = "l2"
    codebook_weight: float = 1.0
    resnet_perceptual: bool = False
    blur_ds: bool = False
    lecam: bool = False
    lecam_weight: float = 0.001
    aux_loss_end: int = 0
    entropy_loss_end: Optional[int] = None
    use_direct_rec_loss: bool = False
    proj_weight: float = 0.5
    # The tokenizer is not updated (nor its EMA) before this 1-indexed step; the discriminator still trains from
    # disc_start on (official trainer: `train_steps + 1 >= gen_start`).
    gen_start: int = field(default=0, metadata=between(0, None))
    # Official arguments of discriminators this re-implementation does not build: accepted so that official files
    # load. disc_semantic_type and gamma (r3gan) change nothing without them; use_semantic_input: True is refused;
    # dhead is never passed to VQLoss by the official trainer.
    disc_semantic_type: str = field(default="local", metadata=choice("local", "global"))
    use_semantic_input: bool = False
    gamma: float = 15.0
    dhead: int = 32
    # ours: True reproduces the official trainer's loss exactly, quirks included (LPIPS dropout, the swapped BCE
    # arguments of the non-saturating losses, the DINO critic's shortcut terms, LeCam's EMA fed twice); False (the
    # default) fixes them. The list and its tests: gigatok/tokenizer/losses.py, tests/tokenizer/test_loss_parity.py.
    official_compat: bool = False


@dataclass
class LossSection:
    loss_cls: str = "VQLoss"
    params: LossParams = field(default_factory=LossParams)


@dataclass
class VQConfig:
    """Root of a tokenizer config file (`configs/vq/*.yaml`)."""

    model: ModelSection = field(default_factory=ModelSection)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    loss: LossSection = field(default_factory=LossSection)
