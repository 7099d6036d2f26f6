"""Config files and the config loader: every shipped YAML loads, official values survive, mistakes fail loudly."""
from __future__ import annotations

import dataclasses
import glob
import math
import os

import pytest
from omegaconf import OmegaConf

from gigatok.config import (
    TEACHER_DIMS,
    TRANSFORMER_SIZES,
    ConfigError,
    VQConfig,
    config_from_dict,
    load_config,
    to_dict,
    to_yaml,
)
from gigatok.infra.io import write_text_atomic

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs", "vq")
ALL_CONFIGS = sorted(glob.glob(os.path.join(CONFIG_DIR, "*.yaml")))

OFFICIAL_1D = ["VQ_SS256", "VQ_SB256", "VQ_BL256", "VQ_BL256_dino_disc", "VQ_BL256_train_new", "VQ_XLXXL256"]
OFFICIAL_2D = ["VQ_SS256_2d", "VQ_SB256_2d", "VQ_BL256_2d"]
OFFICIAL = OFFICIAL_1D + OFFICIAL_2D

# Per-file values of the official configs (SPEC_gigatok.md section 4.1):
# name: (model_cls, encoder_size, decoder_size, entropy_loss_ratio, rot, global_batch_size, warmup,
#        disc_type, disc_start, aux_loss_end, use_direct_rec_loss)
OFFICIAL_TABLE = {
    "VQ_SS256": ("VQVitModelPlus", "small", "small", 0.0, True, 128, 0, "patchgan", 20000, 15000, True),
    "VQ_SB256": ("VQVitModelPlus", "small", "base", 0.0, True, 128, 0, "patchgan", 20000, 15000, True),
    "VQ_BL256": ("VQVitModelPlus", "base", "large", 0.0, True, 256, 0, "patchgan", 20000, 15000, True),
    "VQ_BL256_dino_disc": ("VQVitModelPlus", "base", "large", 0.0, True, 256, 0, "dinodisc", 80000, 15000, True),
    "VQ_BL256_train_new": ("VQVitModelPlus", "base", "large", 0.005, False, 256, 5000, "patchgan", 20000, 15000, False),
    "VQ_XLXXL256": ("VQVitModelPlus", "xl", "xxl", 0.005, True, 256, 5000, "patchgan", 20000, 0, False),
    "VQ_SS256_2d": ("VQVitModel2DPlus", "small", "small", 0.0, True, 128, 0, "patchgan", 20000, 15000, True),
    "VQ_SB256_2d": ("VQVitModel2DPlus", "small", "base", 0.0, True, 128, 0, "patchgan", 20000, 15000, True),
    "VQ_BL256_2d": ("VQVitModel2DPlus", "base", "large", 0.005, True, 256, 0, "patchgan", 20000, 15000, True),
}


def _path(name: str) -> str:
    return os.path.join(CONFIG_DIR, f"{name}.yaml")


def _raw_init_args(name: str) -> dict:
    """`model.init_args` exactly as written in the file, without schema defaults."""
    return OmegaConf.to_container(OmegaConf.load(_path(name)))["model"]["init_args"]


def _write(tmp_path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


def test_every_official_config_is_shipped():
    shipped = {os.path.splitext(os.path.basename(p))[0] for p in ALL_CONFIGS}
    assert set(OFFICIAL) | {"VQ_debug", "VQ_debug_2d"} <= shipped


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=os.path.basename)
def test_every_yaml_loads_into_the_typed_schema(path):
    config = load_config(path)
    assert isinstance(config, VQConfig)
    args = config.model.init_args
    assert config.model.model_cls in ("VQVitModelPlus", "VQVitModel2DPlus", "VQ-16", "VQ-8")  # + LlamaGen's CNN VQs
    assert config.loss.loss_cls == "VQLoss"
    # Every file names its Q-Former sizes explicitly and they exist in the registry (LlamaGen's VQs have none).
    assert args.model_size is None
    if config.model.model_cls.startswith("VQVit"):
        assert args.encoder_size in TRANSFORMER_SIZES and args.decoder_size in TRANSFORMER_SIZES
    # The CNN grid must be whole and, for 1D files with multi-level queries, split into the finest group's blocks
    # (2**(n-1) of T = 2**n tokens; the demo's 32 tokens on a 4x4 grid: 4x4 blocks, one token per cell).
    factor = 2 ** (len(args.encoder_ch_mult) - 1)
    assert args.image_size % factor == 0
    assert config.loss.params.image_size == args.image_size
    if config.model.model_cls == "VQVitModelPlus" and args.multi_level_query_init:
        grid, level = args.image_size // factor, round(math.log2(args.num_latent_tokens)) - 1
        assert 2 ** (level + 1) == args.num_latent_tokens
        assert grid % 2 ** (level // 2) == 0 and grid % 2 ** ((level + 1) // 2) == 0


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_values_match_the_spec_table(name):
    config = load_config(_path(name))
    args, trainer, loss = config.model.init_args, config.trainer, config.loss.params
    got = (
        config.model.model_cls, args.encoder_size, args.decoder_size, args.entropy_loss_ratio, args.rot,
        trainer.global_batch_size, trainer.warmup, loss.disc_type, loss.disc_start, loss.aux_loss_end,
        loss.use_direct_rec_loss,
    )
    assert got == OFFICIAL_TABLE[name]


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_common_fields(name):
    config = load_config(_path(name))
    args, trainer, loss = config.model.init_args, config.trainer, config.loss.params
    assert (args.codebook_size, args.codebook_embed_dim, args.num_latent_tokens, args.z_channels) == (16384, 8, 256, 256)
    assert args.codebook_l2_norm and args.codebook_show_usage and args.commit_loss_beta == 0.25
    assert args.encoder_ch_mult == [1, 1, 2, 2, 4] and args.decoder_ch_mult == [1, 1, 2, 2, 4]
    assert args.adaptive_gn and args.d2s_up and not args.use_attn
    assert (args.fea_rec_loss_type, args.fea_rec_loss_weight, args.distill_depth) == ("mse", 1.0, 3)
    assert args.image_size == 256 and args.cnn_ch == 128
    # Not in the files: filled at build time with the teacher's width, 768 for the default DINOv2-B.
    assert args.out_inner_dim is None
    assert TEACHER_DIMS[trainer.distill_model] == 768
    assert args.multi_level_query_init is (name in OFFICIAL_1D)
    assert (trainer.lr, trainer.end_lr, trainer.lr_scheduler, trainer.optimizer) == (1e-4, 1e-5, "cosine_v2", "AdamW")
    assert (trainer.weight_decay, trainer.beta1, trainer.beta2, trainer.max_grad_norm) == (1e-4, 0.9, 0.95, 10.0)
    assert trainer.distill_loss is True and trainer.global_seed == 0
    assert (loss.disc_weight, loss.disc_loss, loss.gen_adv_loss, loss.disc_dim, loss.kw, loss.norm) == (
        0.5, "hinge", "hinge", 64, 4, "batch")
    assert (loss.reconstruction_loss, loss.image_size, loss.perceptual_weight, loss.codebook_weight) == (
        "l2", 256, 1.0, 1.0)
    assert not (loss.resnet_perceptual or loss.blur_ds or loss.lecam)


def test_per_file_quirks():
    assert load_config(_path("VQ_XLXXL256")).model.init_args.entropy_loss_ratio == 0.005
    assert load_config(_path("VQ_XLXXL256")).model.init_args.use_qk_norm is False
    assert load_config(_path("VQ_BL256_train_new")).model.init_args.rot is False
    assert load_config(_path("VQ_BL256_dino_disc")).loss.params.disc_type == "dinodisc"
    assert load_config(_path("VQ_SB256_2d")).model.init_args.transformer_layer_type == "TransformerLayer"
    assert load_config(_path("VQ_BL256_2d")).model.init_args.transformer_layer_type == "TransformerLayer"
    # VQ_SS256_2d has no transformer_layer_type field, so the official default applies.
    assert "transformer_layer_type" not in _raw_init_args("VQ_SS256_2d")
    assert load_config(_path("VQ_SS256_2d")).model.init_args.transformer_layer_type == "TransformerDecoderLayer"


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_files_leave_out_build_time_fields(name):
    # The official loader fills out_inner_dim from the teacher; the files never carry it, nor our extra fields.
    written = _raw_init_args(name)
    for key in ("out_inner_dim", "cnn_ch", "image_size"):
        assert key not in written
    assert written["model_size"] is None


@pytest.mark.parametrize("name", ["VQ_debug", "VQ_debug_2d"])
def test_tiny_configs_are_tiny(name):
    config = load_config(_path(name))
    args = config.model.init_args
    assert (args.image_size, config.loss.params.image_size) == (32, 32)
    assert args.encoder_size == args.decoder_size == "debug"
    assert TRANSFORMER_SIZES["debug"] == (64, 2, 2)
    # GroupNorm(32) needs every CNN stage width to be a multiple of 32.
    assert all(args.cnn_ch * m % 32 == 0 for m in args.encoder_ch_mult + args.decoder_ch_mult)
    grid = args.image_size // 2 ** (len(args.encoder_ch_mult) - 1)
    assert grid == 8 and args.num_latent_tokens == 64
    assert args.num_latent_tokens & (args.num_latent_tokens - 1) == 0
    assert config.trainer.global_batch_size == 8 and config.trainer.distill_loss
    assert config.loss.params.aux_loss_end < config.loss.params.disc_start


def test_misspelled_key_in_yaml_names_the_key(tmp_path):
    path = _write(tmp_path, "model:\n  init_args:\n    codebok_size: 1024\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "model.init_args.codebok_size" in message
    assert "model.init_args.codebook_size" in message  # the suggestion
    assert path in message


def test_misspelled_override_names_the_key():
    with pytest.raises(ConfigError) as info:
        load_config(_path("VQ_SS256"), ["--trainer.lrr=2e-4"])
    assert "trainer.lrr" in str(info.value)
    assert "'trainer.lr'" in str(info.value)


def test_unknown_section_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="optimizer_settings"):
        load_config(_write(tmp_path, "optimizer_settings:\n  lr: 1.0e-4\n"))


@pytest.mark.parametrize(
    "text, key",
    [
        ("model:\n  init_args:\n    codebook_size: many\n", "model.init_args.codebook_size"),
        ("model:\n  init_args:\n    rot: maybe\n", "model.init_args.rot"),
        ("trainer:\n  lr: [1, 2]\n", "trainer.lr"),
    ],
)
def test_wrong_type_in_yaml_raises(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(_write(tmp_path, text))


def test_wrong_type_in_override_raises():
    with pytest.raises(ConfigError, match=r"model\.init_args\.codebook_size"):
        load_config(_path("VQ_SS256"), ["--model.init_args.codebook_size=lots"])


def test_override_without_value_raises():
    with pytest.raises(ConfigError, match="trainer.lr"):
        load_config(_path("VQ_SS256"), ["--trainer.lr"])


def test_missing_file_raises():
    with pytest.raises(ConfigError, match="not found"):
        load_config(os.path.join(CONFIG_DIR, "VQ_does_not_exist.yaml"))


def test_overrides_are_applied_over_the_file():
    config = load_config(
        _path("VQ_SS256"),
        [
            "--trainer.lr=2e-4",
            "model.init_args.rot=False",
            "--model.init_args.encoder_ch_mult=[1,2,2]",
            "--model.init_args.distill_depth=null",
            "--loss.params.disc_type=dinodisc",
        ],
    )
    assert config.trainer.lr == pytest.approx(2e-4) and isinstance(config.trainer.lr, float)
    assert config.model.init_args.rot is False
    assert config.model.init_args.encoder_ch_mult == [1, 2, 2]
    assert config.model.init_args.distill_depth is None
    assert config.loss.params.disc_type == "dinodisc"
    # Untouched values still come from the file, not from the dataclass defaults.
    assert config.model.init_args.encoder_size == "small" and config.trainer.distill_loss is True


def test_defaults_without_a_file():
    config = load_config(None)
    assert isinstance(config, VQConfig)
    assert config.model.init_args.codebook_size == 16384 and config.trainer.lr == 1e-4


@pytest.mark.parametrize("name", ["VQ_XLXXL256", "VQ_SB256_2d", "VQ_debug"])
def test_save_then_load_round_trips(tmp_path, name):
    config = load_config(_path(name), ["--trainer.lr=3e-4", "--model.init_args.codebook_size=4096"])
    out = str(tmp_path / "resolved.yaml")
    write_text_atomic(out, to_yaml(config))
    assert not os.path.exists(out + ".tmp")
    again = load_config(out)
    assert again == config
    assert to_dict(again) == to_dict(config)
    assert again.trainer.lr == pytest.approx(3e-4) and again.model.init_args.codebook_size == 4096


def test_config_from_dict_validates():
    config = load_config(_path("VQ_SS256"))
    assert config_from_dict(to_dict(config)) == config
    bad = to_dict(config)
    bad["model"]["init_args"]["z_chanels"] = 256
    with pytest.raises(ConfigError, match="z_chanels"):
        config_from_dict(bad, source="checkpoint")


# -- the GPT side -----------------------------------------------------------------------------------------------------
def test_gpt_configs_take_official_flags_files_and_overrides_in_that_order(tmp_path):
    """defaults < --config FILE < official flags < --section.key=value, every field documented and checked."""
    import argparse

    from gigatok.config import GPTSampleConfig, GPTTrainConfig, to_yaml
    from gigatok.config.flags import (
        add_config_flags,
        field_docs,
        given_flags,
        resolve_config,
    )

    parser, table = argparse.ArgumentParser(), {}
    for section in ("model", "tokenizer", "data", "trainer"):
        table.update(add_config_flags(parser, GPTTrainConfig, section))
    help_text = parser.format_help()
    for flag in ("--gpt-model", "--gpt-2d", "--cls-token-num", "--code-path", "--global-batch-size", "--lr-scheduler",
                 "--fract-decay", "--gradient-accumulation-steps", "--early-stop-iter", "--no-compile", "--no-wandb"):
        assert flag in help_text, flag
    for cls in (GPTTrainConfig, GPTSampleConfig):  # every field says what it is (it is the flag's --help)
        for section in dataclasses.fields(cls):
            section_cls = type(getattr(cls(), section.name))
            assert set(field_docs(section_cls)) == {f.name for f in dataclasses.fields(section_cls)}, section_cls

    base = load_config(None, ["--trainer.lr=3e-4", "--trainer.iterations=10"], schema=GPTTrainConfig)
    yaml_file = tmp_path / "config.yaml"
    write_text_atomic(yaml_file, to_yaml(base))
    args = parser.parse_args(["--lr", "5e-4", "--gpt-model", "GPT-L", "--no-compile"])
    config, report = resolve_config(GPTTrainConfig, str(yaml_file), given_flags(args, table), ["--trainer.lr=7e-4"])
    assert config.trainer.iterations == 10  # from the file
    assert config.model.gpt_model == "GPT-L" and config.trainer.compile is False  # from the flags
    assert config.trainer.lr == pytest.approx(7e-4)  # the override wins over the flag
    assert any(line.startswith("--lr: trainer.lr = 0.0005 (overrides the YAML: 0.0003)") for line in report)


@pytest.mark.parametrize("override, message", [
    ("--trainer.lrr=1e-4", "unknown config key 'trainer.lrr'. Did you mean 'trainer.lr'?"),
    ("--trainer.lr_scheduler=cosin", "'trainer.lr_scheduler' is 'cosin', not one of ['const', 'cosine', 'wsd']. "
                                     "Did you mean 'cosine'?"),
    ("--trainer.lr=-1e-4", "'trainer.lr' is -0.0001; it must be > 0."),
    ("--model.dropout_p=1.5", "'model.dropout_p' is 1.5; it must be <= 1."),
])
def test_gpt_config_mistakes_name_the_key(override, message):
    from gigatok.config import GPTTrainConfig

    with pytest.raises(ConfigError) as info:
        load_config(None, [override], schema=GPTTrainConfig)
    assert message in str(info.value)


@pytest.mark.parametrize("flags, message", [
    (["--top-p", "1.5"], "'sample.top_p' is 1.5; it must be <= 1."),
    (["--top-p", "0"], "'sample.top_p' is 0.0; it must be > 0."),
    (["--temperature", "0"], "'sample.temperature' is 0.0; it must be > 0."),
    (["--top-k", "-5"], "'sample.top_k' is -5; it must be >= 0."),
    (["--cfg-scale", "-3"], "'sample.cfg_scale' is -3.0; it must be >= 0."),
    (["--sample.tempreature=0.5"], "Did you mean 'sample.temperature'?"),
])
def test_sampling_flags_are_checked_before_any_work(flags, message, capsys):
    from conftest import expect_exit_2

    from gigatok.stages.sample_c2i_visualization import main

    err = expect_exit_2(main, ["--tok-config", _path("VQ_debug"), "--device", "cpu", *flags], capsys)
    assert message in err


def test_a_field_in_the_wrong_section_suggests_its_real_place(tmp_path):
    path = tmp_path / "wrong.yaml"
    path.write_text("model:\n  lr: 3.0e-4\n")
    with pytest.raises(ConfigError, match="unknown config key 'model.lr'. Did you mean 'trainer.lr'?"):
        load_config(path)
    with pytest.raises(ConfigError, match="Did you mean 'trainer.beta2'"):
        load_config(None, ["--trainer.betaa2=0.9"])


OFFICIAL_COPIES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                               "official_configs", "vq")


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_files_resolve_to_our_shipped_configs(name):
    # The official YAML files (copied verbatim from SilentView/GigaTok) and ours must resolve to the same config:
    # same values for every field, including the ones the official files leave to defaults.
    official = _flat(to_dict(load_config(os.path.join(OFFICIAL_COPIES, f"{name}.yaml"))))
    ours = _flat(to_dict(load_config(_path(name))))
    assert sorted(official) == sorted(ours)
    differ = {key: (official[key], ours[key]) for key in official if official[key] != ours[key]}
    assert differ == {}
