"""Every command of the official README.md and Detailed_instructions.md runs, tiny, on the CPU.

The 13 `bash scripts/...` commands of the two official documents (tests/assets/official_docs, copied unchanged
from SilentView/GigaTok) are taken from the documents' text and run verbatim from a project folder whose
`scripts/` is this repo's. Only environment variables make them tiny, as a user would set them instead of the
documents' exports: a 256 px tokenizer config with a 32-channel CNN and 16 tokens (the documents hard-code
--image-size=256), the debug GPT, a few steps (TOK_EARLY_STOP_ITER, LM_STOP_ITER, LIN_EPOCHS), an ImageNet-like
folder of 2 x 4 procedural train and 2 x 2 val images, one process (TORCH_RUN_PATH, an official knob, set to a
one-process stand-in for torchrun; torchrun itself is tested with the stages), the CPU, and the launchers'
GIGATOK_<STAGE>_ARGS (--num-workers 0 everywhere; --num-fid-samples 4 for the one command that hard-codes no
sample count; --num-classes 1000, ImageNet's, for the GPT the README samples classes up to 978 from). LPIPS runs
with random weights (opted into as in the other stage tests), and nothing is downloaded.

The commands run in the order the documents chain them, each reusing what an earlier one wrote: val.sh builds the
reference that the reconstruction commands and the gFID read; train_vq_and_eval.sh trains the tokenizer (and
AR-probes it) that every later command uses; extract_code_c2i.sh writes the codes train_c2i_and_eval_fsdp.sh trains
on (the documents' DATASET=imagenet_code option), while train_c2i_and_eval.sh tokenizes images on the fly (their
default); its GPT is the one the evaluation, probing and sampling commands use. The composite recipes must leave
their one-page summary holding the numbers their stages wrote. Everything runs in one test: the chain is built
once whatever pytest-xdist does with a module's tests.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import make_colour_folders
from omegaconf import OmegaConf
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "tests" / "assets" / "official_docs"
DOC_NAMES = ("README.md", "Detailed_instructions.md")
# (document, script) of every command, in document order.
EXPECTED = [
    ("README.md", "scripts/reconstruction.sh"),
    ("README.md", "scripts/sample_c2i_visualization.sh"),
    ("Detailed_instructions.md", "scripts/val.sh"),
    ("Detailed_instructions.md", "scripts/reconstruction.sh"),
    ("Detailed_instructions.md", "scripts/sample_c2i_search_cfg.sh"),
    ("Detailed_instructions.md", "scripts/val_loss_c2i.sh"),
    ("Detailed_instructions.md", "scripts/composite_cmd/train_lm_lin_probe_and_eval.sh"),
    ("Detailed_instructions.md", "scripts/composite_cmd/train_tok_lin_probe_and_eval.sh"),
    ("Detailed_instructions.md", "scripts/composite_cmd/train_vq_and_eval.sh"),
    ("Detailed_instructions.md", "scripts/composite_cmd/train_vq_and_eval_fsdp.sh"),
    ("Detailed_instructions.md", "scripts/extract_code_c2i.sh"),
    ("Detailed_instructions.md", "scripts/composite_cmd/train_c2i_and_eval.sh"),
    ("Detailed_instructions.md", "scripts/composite_cmd/train_c2i_and_eval_fsdp.sh"),
]
# The order they run in (each needs what the ones before it wrote), as indices into EXPECTED.
RUN_ORDER = [2, 8, 9, 10, 11, 12, 3, 4, 5, 6, 7, 0, 1]
NUM_WORKERS_STAGES = ("TRAIN_VQ", "RECONSTRUCT", "VAL_REFERENCE", "EXTRACT_CODES", "TRAIN_C2I", "VAL_LOSS_C2I",
                      "LIN_PROBE", "LIN_PROBE_GPT")


def doc_commands() -> list[tuple[str, str, str]]:
    """(document, script, command text) of every `bash scripts/...` command of the official documents, in order.

    A command is a logical line of a fenced shell block (backslash continuations joined) that runs `bash scripts/`,
    with its `VAR=value` prefixes (README: `gpus=1 PORT=11086 bash scripts/reconstruction.sh ...`)."""
    found = []
    for name in DOC_NAMES:
        for block in re.findall(r"```(?:shell|bash|sh)\n(.*?)```", (DOCS / name).read_text(), flags=re.DOTALL):
            for line in re.sub(r"\\\n", " ", block).splitlines():
                match = re.search(r"\bbash (scripts/\S+\.sh)", line)
                if match and not line.lstrip().startswith("#"):
                    found.append((name, match.group(1), line.strip()))
    return found


def test_the_documents_hold_13_commands_of_scripts_we_ship():
    commands = doc_commands()
    assert [(doc, script) for doc, script, _ in commands] == EXPECTED
    for _, script, _ in commands:
        assert (REPO / script).is_file(), script
    assert sorted(RUN_ORDER) == list(range(len(EXPECTED)))


# -- the tiny project ---------------------------------------------------------------------------------------------
def tiny_tokenizer_config(path: Path) -> Path:
    """VQ_debug (every switch of the released 1D configs) at 256 px: a 32-channel CNN without ResnetBlocks in the
    encoder levels (4 downsamplings to a 16x16 grid), 16 latent tokens; no semantic teacher, no LPIPS loss, no
    reconstruction previews, no W&B, so a training step takes about a second on one CPU thread."""
    config = OmegaConf.load(REPO / "configs" / "vq" / "VQ_debug.yaml")
    args = config.model.init_args
    args.image_size, args.num_latent_tokens, args.num_res_blocks = 256, 16, 0
    args.encoder_ch_mult = args.decoder_ch_mult = [1, 1, 1, 1, 1]
    args.cnn_channels_last = False  # 32 channels: NCHW is faster on the CPU
    config.loss.params.image_size = 256
    config.loss.params.perceptual_weight = 0.0
    config.trainer.distill_loss = False
    config.trainer.preview_every = 0
    config.trainer.num_workers = 0
    config.trainer.wandb_mode = "disabled"  # no W&B in tests (default: auto)
    OmegaConf.save(config, path)
    return path


def make_project(root: Path) -> dict[str, str]:
    """A project folder (`scripts/` -> this repo's, data, a tokenizer config) and the environment every command
    gets. Returns the environment."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "scripts").symlink_to(REPO / "scripts", target_is_directory=True)
    imagenet = make_colour_folders(root / "imagenet", train_per_class=4, val_per_class=2)
    tests = root / "tests"  # the README's DATA_PATH=${PROJECT_ROOT}/tests/: two photos
    tests.mkdir()
    for photo in ("astronaut.png", "coffee.jpg"):
        Image.open(REPO / "tests" / "gt_qualitative" / photo).convert("RGB").save(tests / f"{Path(photo).stem}.png")
    shim = root / "one_process_torchrun.sh"  # torchrun's arguments dropped up to `-m`: one plain process
    shim.write_text(f'#!/usr/bin/env bash\nwhile [ $# -gt 0 ] && [ "$1" != "-m" ]; do shift; done\n'
                    f'exec "{sys.executable}" "$@"\n')
    shim.chmod(0o755)
    keep = ("HOME", "TMPDIR", "LANG", "LC_ALL", "TORCH_HOME", "XDG_CACHE_HOME", "HF_HOME", "OMP_WAIT_POLICY")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update({
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "GIGATOK_LPIPS_RANDOM_BACKBONE": "1",
        "GIGATOK_OFFLINE": "1",  # no weight downloads: FID runs on the Inception weights already installed
        # set_env_vars.sh
        "PROJECT_ROOT": str(root), "IMGNET_ROOT": str(imagenet), "TORCH_RUN_PATH": str(shim), "GPUS": "1",
        "EVAL_PYTHON_PATH": "python",  # our PyTorch ADM evaluator, in process
        "TOK_CONFIG": str(tiny_tokenizer_config(root / "VQ_tiny256.yaml")),
        **{f"GIGATOK_{stage}_ARGS": "--num-workers 0" for stage in NUM_WORKERS_STAGES},
    })
    return env


# Values the documents export, replaced by tiny ones. Paths relative to the project folder, as in the documents.
VQ_CKPT = "results/tokenizers/vq/VQ_tiny/checkpoints/0000002.pt"
GPT_RUN = "results/gpt/results/gpt/GPT_tiny_VQ_tiny"  # LM_EXP_DIR=results/gpt/..., as the documents write it
GPT_CKPT = f"{GPT_RUN}/checkpoints/0000003.pt"
VAL_NPZ = "results/reconstructions/img_data/val_imagenet.npz"  # scripts/val.sh --sample-dir .../img_data/
TINY_LM = {"LM_EPOCH": "1", "LM_BSZ": "4", "LM_STOP_ITER": "3", "GPT_MODEL": "debug", "NUM_FID_SAMPLES": "4",
           "EVAL_BATCH_PER_GPU": "4", "CKPT_EVERY": "2"}
TINY_TOK = {"TOK_EPOCH": "1", "TOK_BSZ": "2", "TOK_EARLY_STOP_ITER": "2", "CKPT_EVERY": "2", "PRECISION": "none",
            "LM_PRECISION": "none"}
TINY_PROBE = {"LIN_BSZ": "4", "LIN_EPOCHS": "2", "CKPT_EPOCH": "1", "NUM_CODE": "16"}


def command_env(index: int, root: Path) -> dict[str, str]:
    """The variables command EXPECTED[index] reads, tiny (the documents' exports, replaced)."""
    p = str(root)
    vq, gpt = f"{p}/{VQ_CKPT}", f"{p}/{GPT_CKPT}"
    return [
        {"VQ_CKPT": vq, "DATA_PATH": f"{p}/tests/", "SAMPLE_DIR": "results/reconstructions/"},
        {"VQ_CKPT": vq, "LM_CKPT": gpt, "CFG": "4.0", "CFG_SCHEDULE": "constant", "GPT_MODEL": "debug",
         "SAMPLE_DIR": "results/gpt_eval/GPT_tiny"},
        {},
        {"VAL_PATH": "results/reconstructions/img_data/", "GT_VAL_NPZ_PATH": f"{p}/{VAL_NPZ}", "VQ_CKPT": vq,
         "SAMPLE_DIR": "results/vq/VQ_tiny"},
        {"VQ_CKPT": vq, "GPT_CKPT": gpt, "GPT_MODEL": "debug", "SAMPLE_DIR": f"{p}/results/gpt/quan_eval/GPT_tiny/",
         "PRECISION": "none", "CFG_SCHEDULE": "step", "CFG_START_RATIO": "0.18", "CFG_SCALE": "1.75",
         "EVAL_BATCH_PER_GPU": "4", "SEED": "0", "GT_NPZ_PATH": f"{p}/{VAL_NPZ}",
         "GIGATOK_SAMPLE_C2I_ARGS": "--num-fid-samples 4"},  # the command passes no --num-fid-samples
        {"VQ_CKPT": vq, "GPT_CKPT": gpt, "GPT_MODEL": "debug", "PRECISION": "none", "EVAL_BATCH_PER_GPU": "4"},
        {"VQ_CKPT": vq, "GPT_CKPT": gpt, "GPT_MODEL": "debug", "LM_PRECISION": "none",
         "SAVE_DIR": f"{p}/results/lin_probe_gpt/", "LM_LIN_EXP_DIR": "lin_GPT_tiny", **TINY_PROBE},
        {"VQ_CKPT": vq, "TOK_PRECISION": "none", "SAVE_DIR": f"{p}/results/lin_probe/",
         "TOK_LIN_EXP_DIR": "lin_VQ_tiny", **TINY_PROBE},
        {"VQ_EXP_DIR": "VQ_tiny", "LM_EXP_DIR": "GPT_probe_VQ_tiny", "VAL_PATH": "results/reconstructions/img_data",
         "GT_VAL_NPZ_PATH": VAL_NPZ, "GT_NPZ_PATH": f"{p}/{VAL_NPZ}", **TINY_TOK, **TINY_LM},
        {"VQ_EXP_DIR": "VQ_tiny_fsdp", "LM_EXP_DIR": "GPT_probe_VQ_tiny_fsdp",
         "VAL_PATH": "results/reconstructions/img_data", "GT_VAL_NPZ_PATH": f"{p}/{VAL_NPZ}",
         "GT_NPZ_PATH": f"{p}/{VAL_NPZ}", **TINY_TOK, **TINY_LM},
        {"VQ_CKPT": vq, "CODE_PATH": f"{p}/dataset/imgnet_code/VQ_tiny/ten_crop/", "TEN_CROP": "False"},
        {"VQ_CKPT": vq, "LM_EXP_DIR": "results/gpt/GPT_tiny_VQ_tiny/", "WARM_ITER": "1", "LR": "1e-4",
         "FRACT_DECAY": "0.2", "GT_NPZ_PATH": f"{p}/{VAL_NPZ}", "PRECISION": "none", **TINY_LM,
         # ImageNet's 1000 classes (our folder has 2): the README samples classes 22, 388, 90 and 978 with this GPT
         "GIGATOK_TRAIN_C2I_ARGS": "--num-workers 0 --num-classes 1000"},
        {"VQ_CKPT": vq, "LM_EXP_DIR": "results/gpt/GPT_tiny_fsdp_VQ_tiny/", "WARM_ITER": "1", "LR": "1e-4",
         "FRACT_DECAY": "0.2", "GT_NPZ_PATH": f"{p}/{VAL_NPZ}", "PRECISION": "none", "DATASET": "imagenet_code",
         "CODEPATH": f"{p}/dataset/imgnet_code/VQ_tiny/ten_crop/", **TINY_LM},
    ][index]


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def results_files(sample_dir: Path) -> list[Path]:
    """The generation results of a sampling folder: one <setting>.json per evaluated scale (not the .plan.json)."""
    return [p for p in sample_dir.glob("*.json") if not p.name.endswith(".plan.json")]


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def check_summary(root: Path, recipe: str, name: str, expected: dict[str, object]) -> dict:
    """The recipe's summary page (.json and .md) exists and its metrics hold `expected` (key -> value)."""
    stem = root / "results" / "summaries" / recipe / name
    page = read(stem.with_suffix(".json"))
    markdown = stem.with_suffix(".md").read_text()
    assert page["recipe"] == recipe and markdown.startswith(f"# {recipe}: "), markdown[:200]
    for key, value in expected.items():
        assert key in page["metrics"], (recipe, key, page["metrics"])
        assert page["metrics"][key] == value, (recipe, key, page["metrics"][key], value)
    return page


@pytest.mark.slow
def test_every_official_command_runs_tiny(tmp_path):
    root = tmp_path / "GigaTok"
    base = make_project(root)
    commands = doc_commands()
    assert len(commands) == len(EXPECTED) == 13
    times = {}
    for index in RUN_ORDER:
        doc, script, text = commands[index]
        tic = time.perf_counter()
        result = subprocess.run(["bash", "-c", text], cwd=root, env={**base, **command_env(index, root)},
                                capture_output=True, text=True, timeout=600, check=False)
        times[f"{doc}: {script}"] = round(time.perf_counter() - tic, 1)
        assert result.returncode == 0, f"{doc}: {text}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    print(json.dumps(times, indent=1))
    check_outputs(root)


def check_outputs(root: Path) -> None:
    """What the 13 commands leave, and the summary pages of the composite ones."""
    results = root / "results"

    # val.sh -> the reference both reconstruction commands scored against; their results hold every metric.
    with np.load(root / VAL_NPZ) as data:
        assert data["arr_0"].shape == (4, 256, 256, 3)
    for sample_dir in (results / "vq" / "VQ_tiny", results / "reconstructions" / "vq" / "VQ_tiny" / "0000002"):
        [recon] = sample_dir.glob("*_results.json")
        metrics = read(recon)
        assert metrics["num_images"] == 4 and all(finite(metrics[k]) for k in ("rfid", "psnr", "ssim", "lpips"))
    grid = next(results.glob("reconstructions/*/grid.png"))  # README: qualitative reconstructions
    assert Image.open(grid).size[0] >= 2 * 256

    # train_vq_and_eval(.sh, _fsdp.sh): tokenizer -> rFID -> AR probe (gFID search, val loss) -> one page each.
    for vq_exp, lm_exp in (("VQ_tiny", "GPT_probe_VQ_tiny"), ("VQ_tiny_fsdp", "GPT_probe_VQ_tiny_fsdp")):
        [recon] = (results / "reconstructions" / "vq" / vq_exp / "0000002").glob("*_results.json")
        probe = results / "gpt" / "quan_eval" / lm_exp
        gfids = [read(p)["fid"] for p in results_files(probe / "0000003")]
        assert len(gfids) >= 3  # a CFG search: the start and both neighbours at least
        page = check_summary(root, "train_vq_and_eval" + ("_fsdp" if "fsdp" in vq_exp else ""), vq_exp, {
            "rfid": read(recon)["rfid"], "psnr": read(recon)["psnr"], "gfid": min(gfids),
            "val_loss": read(probe / "0000003_val_loss.json")["val_loss"]})
        assert page["checkpoints"]["tokenizer"]["step"] == 2 and page["checkpoints"]["gpt"]["step"] == 3
        assert page["settings"]["LM_STOP_ITER"] == "3" and page["settings"]["GPT_MODEL"] == "debug"
        check_summary(root, "train_c2i_and_eval", lm_exp, {"gfid": min(gfids)})

    # extract_code_c2i -> codes; train_c2i_and_eval on images, _fsdp on those codes.
    assert read(root / "dataset" / "imgnet_code" / "VQ_tiny" / "ten_crop" / "meta.json")["count"] == 8
    for recipe, lm_exp, dataset in (("train_c2i_and_eval", "GPT_tiny_VQ_tiny", "imagenet"),
                                    ("train_c2i_and_eval_fsdp", "GPT_tiny_fsdp_VQ_tiny", "imagenet_code")):
        evals = results / "gpt" / "quan_eval" / "results" / "gpt" / lm_exp
        assert (results / "gpt" / "results" / "gpt" / lm_exp / "checkpoints" / "0000003.pt").is_file()
        page = check_summary(root, recipe, f"results_gpt_{lm_exp}", {
            "gfid": min(read(p)["fid"] for p in results_files(evals / "0000003")),
            "val_loss": read(evals / "0000003_val_loss.json")["val_loss"]})
        assert page["settings"]["DATASET"] == dataset and page["metrics"]["cfg_schedule"] == "step"

    # The evaluation commands on that GPT: gFID at one setting, validation loss, linear probes, class grids.
    [gen] = results_files(results / "gpt" / "quan_eval" / "GPT_tiny")
    assert read(gen)["num_samples"] == 4 and finite(read(gen)["fid"])
    assert finite(read(results / "gpt" / "val_loss_0000003.json")["val_loss"])
    for recipe, exp, key, save in (("train_lm_lin_probe_and_eval", "lin_GPT_tiny", "gpt_lin_probe_top1", "lin_probe_gpt"),
                                   ("train_tok_lin_probe_and_eval", "lin_VQ_tiny", "tok_lin_probe_top1", "lin_probe")):
        acc = read(results / save / exp / "lin_probe_acc.json")
        assert acc["num_images"] == 4 and (results / save / exp / "checkpoints" / "0001.pt").is_file()
        check_summary(root, recipe, exp, {key: acc["top1"]})
    grids = {p.name for p in (results / "gpt_eval" / "GPT_tiny").rglob("class_*_grid.png")}
    assert grids == {f"class_{c}_grid.png" for c in (22, 388, 90, 978)}  # --class-idx "22,388,90,978"


# -- the recipes no command of the documents runs -----------------------------------------------------------------
def save_random_checkpoints(root: Path, config: Path) -> None:
    """A random tokenizer and a 1000-class debug GPT where a finished tokenizer run VQ_rand (step 2) and GPT run
    GPT_rand (step 3) would leave them, in the official checkpoint format."""
    import torch

    from gigatok.builders import build_gpt, build_tokenizer
    from gigatok.config import load_config

    torch.manual_seed(0)
    tok_dir = root / "results" / "tokenizers" / "vq" / "VQ_rand" / "checkpoints"
    gpt_dir = root / "results" / "gpt" / "GPT_rand" / "checkpoints"
    tok_dir.mkdir(parents=True)
    gpt_dir.mkdir(parents=True)
    torch.save({"model": build_tokenizer(load_config(config)).state_dict(), "steps": 2}, tok_dir / "0000002.pt")
    gpt = build_gpt("debug", vocab_size=1024, block_size=16, num_classes=1000)
    torch.save({"model": gpt.state_dict(), "steps": 3}, gpt_dir / "0000003.pt")


@pytest.mark.slow
def test_eval_c2i_and_train_all_lin_probe_find_their_runs(tmp_path, one_thread):
    """eval_c2i.sh and train_all_lin_probe_and_eval.sh, given no checkpoint, take the ones of the runs named by
    VQ_EXP_DIR + TOK_* and LM_EXP_DIR + LM_* (the official step arithmetic), evaluate them and leave their page."""
    root = tmp_path / "GigaTok"
    base = make_project(root)
    save_random_checkpoints(root, Path(base["TOK_CONFIG"]))
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8).repeat(32, axis=1).repeat(32, axis=2)
    np.savez(root / "ref.npz", arr_0=ref)  # (4, 256, 256, 3): a gFID reference batch
    runs = {"VQ_EXP_DIR": "VQ_rand", "TOK_EPOCH": "1", "TOK_BSZ": "2", "TOK_EARLY_STOP_ITER": "2",
            "LM_EXP_DIR": "GPT_rand", "LM_EPOCH": "1", "LM_BSZ": "4", "LM_STOP_ITER": "3", "GPT_MODEL": "debug",
            "PRECISION": "none"}
    recipes = {"eval_c2i": {"NUM_FID_SAMPLES": "4", "EVAL_BATCH_PER_GPU": "4", "CFG_SCALE": "2.0",
                            "GT_NPZ_PATH": str(root / "ref.npz")},
               "train_all_lin_probe_and_eval": {"LM_LIN_EXP_DIR": "lin_GPT_rand", "TOK_LIN_EXP_DIR": "lin_VQ_rand",
                                                **TINY_PROBE, "LIN_EPOCHS": "1"}}
    for recipe, env in recipes.items():
        result = subprocess.run(["bash", f"scripts/composite_cmd/{recipe}.sh"], cwd=root,
                                env={**base, **runs, **env}, capture_output=True, text=True, timeout=600, check=False)
        assert result.returncode == 0, f"{recipe}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"

    evals = root / "results" / "gpt" / "v4" / "quan_eval" / "GPT_rand"
    [gen] = results_files(evals / "0000003")
    page = check_summary(root, "eval_c2i", "GPT_rand_0000003", {
        "gfid": read(gen)["fid"], "cfg_scale": 2.0, "num_fid_samples": 4,
        "val_loss": read(evals / "0000003_val_loss.json")["val_loss"]})
    assert page["checkpoints"]["tokenizer"]["path"].endswith("results/tokenizers/vq/VQ_rand/checkpoints/0000002.pt")
    assert page["checkpoints"]["gpt"]["path"].endswith("results/gpt/GPT_rand/checkpoints/0000003.pt")
    tok = read(root / "results" / "lin_probe" / "lin_VQ_rand" / "lin_probe_acc.json")
    gpt = read(root / "results" / "lin_probe_gpt" / "lin_GPT_rand" / "lin_probe_acc.json")
    page = check_summary(root, "train_all_lin_probe_and_eval", "lin_GPT_rand", {
        "tok_lin_probe_top1": tok["top1"], "gpt_lin_probe_top1": gpt["top1"]})
    assert "tokenizer linear probe top-1 (%)" in (root / "results" / "summaries" / "train_all_lin_probe_and_eval" /
                                                   "lin_GPT_rand.md").read_text()


# -- the shared arithmetic of scripts/lib/recipe.sh ------------------------------------------------------------------
def recipe_lib(snippet: str, **env: str) -> str:
    result = subprocess.run(["bash", "-c", f'source "{REPO}/scripts/lib/recipe.sh"; {snippet}'], env={
        "PATH": os.environ["PATH"], **env}, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_recipe_step_arithmetic_matches_the_official_scripts_and_train_c2i():
    # EPOCH_TO_ITER_FACTOR = 256 * 5000 / BSZ first (integer), then x epochs, as officially.
    assert recipe_lib("epoch_to_iter 300 256; epoch_to_iter 100 128; epoch_to_iter 3 384").split() == [
        "1500000", "1000000", "9999"]
    assert recipe_lib("pad7 250000; echo; pad7 0000009") == "0250000\n0000009"  # a padded step is decimal, not octal
    assert recipe_lib("tok_iter", TOK_EPOCH="200", TOK_BSZ="256", TOK_EARLY_STOP_ITER="None") == "1000000"
    assert recipe_lib("tok_iter", TOK_EPOCH="200", TOK_BSZ="256", TOK_EARLY_STOP_ITER="0050000") == "50000"
    # train_c2i: hold = N - int(fract_decay * N); steps after it live in cd_records/cd_fract_<f>_to_<N>/.
    paths = recipe_lib("gpt_ckpt_path run 1500000 0250000 0.2; gpt_ckpt_path run 1500000 1200000 0.20; "
                       "gpt_ckpt_path run 1500000 1200001 0.20; gpt_ckpt_path run 7 6 0.3").split()
    assert paths == ["run/checkpoints/0250000.pt", "run/checkpoints/1200000.pt",
                     "run/cd_records/cd_fract_0.2_to_1500000/checkpoints/1200001.pt",
                     "run/cd_records/cd_fract_0.3_to_7/checkpoints/0000006.pt"]


def test_summary_pages_are_named_after_the_experiment():
    assert recipe_lib('summary_stem train_c2i_and_eval "results/gpt/GPT_B256_VQ_XLXXL_e300/"',
                      PROJECT_ROOT="/p") == "/p/results/summaries/train_c2i_and_eval/results_gpt_GPT_B256_VQ_XLXXL_e300"
    assert recipe_lib("summary_stem eval_c2i GPT_B_0250000", SUMMARY_DIR="/s") == "/s/eval_c2i/GPT_B_0250000"


def test_a_recipe_names_the_variable_it_misses(tmp_path):
    result = subprocess.run(["bash", str(REPO / "scripts" / "composite_cmd" / "train_vq_and_eval.sh")], cwd=tmp_path,
                            env={"PATH": os.environ["PATH"]}, capture_output=True, text=True, check=False)
    assert result.returncode == 2 and "train_vq_and_eval: set TOK_CONFIG (the tokenizer YAML" in result.stderr
    assert not (tmp_path / "results").exists()
