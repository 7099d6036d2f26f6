"""`gigatok.stages.recipe_summary`: the one-page summary of a composite recipe (scripts/composite_cmd/*.sh).

The recipes themselves run end to end in tests/scripts/test_official_commands.py; here the page is built from
hand-written result files in the stages' formats.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from conftest import expect_exit_2

from gigatok.stages.recipe_summary import main


def write(path: Path, data: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return str(path)


def test_page_collects_the_stage_results_and_a_nested_recipe(tmp_path, capsys):
    samples = tmp_path / "quan_eval" / "0250000"
    for scale, fid in ((1.75, 4.2), (2.0, 3.3), (2.25, 3.9)):  # a CFG search: the best scale is the page's
        stem = f"GPT-B-cfg-{scale}-constant-seed-0"
        write(samples / f"{stem}.json", {"fid": fid, "inception_score": 200 + fid, "precision": 0.8, "recall": 0.5,
                                         "num_samples": 50000})
        write(samples / f"{stem}.plan.json", {"cfg_scale": scale, "cfg_schedule": "constant"})
    val = write(tmp_path / "quan_eval" / "0250000_val_loss.json", {"val_loss": 7.12345})
    nested = tmp_path / "summaries" / "train_c2i_and_eval" / "GPT_B"
    main(["--recipe", "train_c2i_and_eval", "--name", "GPT_B", "--out", str(nested), "--gfid", str(samples),
          "--val-loss", val, "--gpt-ckpt", "/runs/gpt/checkpoints/0250000.pt", "--setting", "LM_STOP_ITER=250000"])
    recon = tmp_path / "recon" / "0500000"
    write(recon / "VQVitModelPlus-imagenet-size-256-seed-0-0500000_results.json", {
        "rfid": 1.01, "psnr": 21.5, "ssim": 0.61, "lpips": 0.2226, "codebook_usage": 0.995, "num_images": 50000})
    out = tmp_path / "summaries" / "train_vq_and_eval" / "VQ_SS256"
    main(["--recipe", "train_vq_and_eval", "--name", "VQ_SS256", "--out", str(out), "--recon", str(recon),
          "--tok-ckpt", "/runs/vq/checkpoints/0500000.pt", "--include", f"{nested}.json",
          "--setting", "TOK_EPOCH=100", "--setting", "GT_NPZ_PATH="])
    printed = capsys.readouterr().out
    page = json.loads(out.with_suffix(".json").read_text())
    metrics = page["metrics"]
    assert (metrics["gfid"], metrics["cfg_scale"], metrics["cfg_schedule"]) == (3.3, 2.0, "constant")
    assert (metrics["rfid"], metrics["lpips"], metrics["val_loss"]) == (1.01, 0.2226, 7.12345)
    assert page["sources"]["gfid"].endswith("GPT-B-cfg-2.0-constant-seed-0.json") and page["sources"]["val_loss"] == val
    assert page["checkpoints"] == {"gpt": {"path": "/runs/gpt/checkpoints/0250000.pt", "step": 250000},
                                   "tokenizer": {"path": "/runs/vq/checkpoints/0500000.pt", "step": 500000}}
    assert page["settings"] == {"TOK_EPOCH": "100", "GT_NPZ_PATH": ""}
    assert page["includes"][0]["markdown"] == f"{nested}.md"
    markdown = out.with_suffix(".md").read_text()
    for row in ("| rFID | 1.01 |", "| gFID | 3.30 |", "| codebook usage (%) | 99.50 |", "| validation loss | 7.1235 |",
                "| CFG scale | 2.0 |", "- tokenizer: `/runs/vq/checkpoints/0500000.pt` (step 500000)"):
        assert row in markdown and row in printed


def test_a_missing_or_foreign_result_is_one_line_naming_its_stage(tmp_path, capsys):
    argv = ["--recipe", "r", "--name", "n", "--out", str(tmp_path / "page")]
    err = expect_exit_2(main, [*argv, "--val-loss", str(tmp_path / "val_loss.json")], capsys)
    assert "no results there. gigatok val_loss_c2i (scripts/val_loss_c2i.sh) writes them" in err
    probe = write(tmp_path / "lin_probe_acc.json", {"val_loss": 3.0})
    err = expect_exit_2(main, [*argv, "--gpt-lin-probe", probe], capsys)
    assert "has no 'top1' entry" in err and "gigatok lin_probe_gpt" in err
    assert not (tmp_path / "page.md").exists()


def test_the_summary_starts_without_torch(tmp_path):
    """The recipes call it after every stage; it reads JSON only (torch would add seconds to each recipe)."""
    import subprocess

    code = ("import sys; from gigatok.stages.recipe_summary import main; "
            f"main(['--recipe', 'r', '--name', 'n', '--out', {str(tmp_path / 'p')!r}]); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "p.md").read_text().startswith("# r: n")
