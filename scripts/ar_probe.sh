#!/usr/bin/env bash
# AR probing of a tokenizer (GigaTok paper Sec. 3; official composite scripts train_vq_and_eval.sh ->
# train_c2i_and_eval.sh + train_lm_lin_probe_and_eval.sh), as ONE resumable pipeline:
#   1. train the tokenizer            scripts/train_vq.sh          -> $EXP/tokenizer/checkpoints/<TOK_ITER>.pt
#   2. extract its codes              scripts/extract_code_c2i.sh  -> $CODE_PATH/meta.json
#   3. train a GPT on the codes       scripts/train_c2i.sh         -> WSD schedule of LM_ITER steps, stopped at
#                                                                     LM_STOP_ITER (official: 250k of 300 epochs)
#   4. gFID of the GPT's samples      scripts/sample_c2i.sh        -> $EXP/samples/
#   5. validation loss                scripts/val_loss_c2i.sh      -> $EXP/val_loss.json
#   6. linear probe of the GPT        scripts/train_lin_probe_gpt.sh -> $EXP/lin_probe/lin_probe_acc.json
#   7. one table                      python -m gigatok.stages.ar_probe_report -> $EXP/ar_probe.md, $EXP/ar_probe.json
# Each stage skips itself when its output is complete; rerunning the script resumes the unfinished stage.
# A documented shortcut, not an alias: the official recipe is scripts/composite_cmd/train_vq_and_eval.sh (tokenizer
# -> rFID -> train_c2i_and_eval.sh on images tokenized on the fly -> gFID + val loss, with the official experiment
# folders and a summary page; linear probes separately, train_lm_lin_probe_and_eval.sh). This script runs the same
# AR probe (same schedule and defaults) on pre-extracted codes, which trains the GPT faster, adds the GPT linear
# probe, skips finished stages, and keeps everything under one folder with one table.
# Example (official AR-probe recipe: tokenizer 100 epochs at batch 128, GPT-B 50 epochs at batch 256, lr 1e-4):
#   IMGNET_ROOT=/data/imagenet TOK_CONFIG=configs/vq/VQ_SB256.yaml GT_NPZ_PATH=VIRTUAL_imagenet256_labeled.npz \
#   bash scripts/ar_probe.sh
#
# Environment (defaults in brackets; an "epoch" is 5000 iterations at batch 256, as in the official scripts):
#   data      IMGNET_ROOT; TRAIN_PATH [$IMGNET_ROOT/ILSVRC2012_img_train]; VAL_PATH [$IMGNET_ROOT/ILSVRC2012_img_val]
#   run       EXP_ROOT [results/ar_probe]; EXP_NAME [VQ_EXP_DIR, else the tokenizer config's name];
#             EXP_DIR [$EXP_ROOT/$EXP_NAME] (called $EXP below)
#   tokenizer TOK_CONFIG (required); VQ_CKPT (use this trained tokenizer: skips stage 1); TOK_EPOCH [100];
#             TOK_BSZ [128]; TOK_ITER [TOK_EPOCH * 5000 * 256 / TOK_BSZ]; CKPT_EVERY [5000]; PRECISION [fp16];
#             TOK_ARGS (extra train_vq flags, e.g. "--trainer.distill_loss=false")
#   codes     CODE_PATH [$EXP/codes]; TEN_CROP [True]; CROP_RANGE [1.1]; CODE_BSZ [32]; EXTRACT_ARGS
#   GPT       GPT_MODEL [GPT-B]; LM_EPOCH [300]; LM_BSZ [256]; LM_ITER [LM_EPOCH * 5000 * 256 / LM_BSZ];
#             LM_STOP_EPOCH [50]; LM_STOP_ITER [LM_STOP_EPOCH * 5000 * 256 / LM_BSZ, at most LM_ITER];
#             FRACT_DECAY [0.2]; WARM_ITER [0]; LR [1e-4]; LM_PRECISION [fp16]; LM_CKPT_EVERY [5000]; LM_ARGS
#   gFID      GFID [True]; GT_NPZ_PATH (reference batch .npz); NUM_FID_SAMPLES [50000]; CFG_SCALE [1.75];
#             CFG_SCHEDULE [constant]; CFG_SEARCH [True: search the scale with the lowest FID, as official; the
#             report takes the best one]; EVAL_BATCH_PER_GPU [32]; SAMPLE_ARGS
#   val loss  VAL_LOSS [True]; VAL_BSZ [32]; VAL_ARGS
#   probe     LIN_PROBE [True]; LIN_EPOCHS [90]; LIN_BSZ [128, per GPU]; LIN_BLR [0.1]; LIN_WARMUP [10];
#             NUM_CODE [all codes]; LIN_CKPT_EPOCH [5]; LIN_ARGS
#   report    RFID (the tokenizer's rFID: a number or a reconstruction metrics JSON); PYTHON [python]
#   torchrun  GPUS (or gpus), NNODES, NODE_RANK, MASTER_ADDR, PORT, TORCH_RUN_PATH (passed to every stage)
# *_ARGS values are split on whitespace and appended to that stage's flags (the last occurrence of a flag wins).
set -euo pipefail
SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "${SCRIPTS}")"

: "${TOK_CONFIG:?set TOK_CONFIG to the tokenizer YAML, e.g. configs/vq/VQ_SB256.yaml}"
TRAIN_PATH=${TRAIN_PATH:-${IMGNET_ROOT:+${IMGNET_ROOT}/ILSVRC2012_img_train}}
VAL_PATH=${VAL_PATH:-${IMGNET_ROOT:+${IMGNET_ROOT}/ILSVRC2012_img_val}}
: "${TRAIN_PATH:?set IMGNET_ROOT (with ILSVRC2012_img_train/ and ILSVRC2012_img_val/) or TRAIN_PATH and VAL_PATH}"
: "${VAL_PATH:?set IMGNET_ROOT or VAL_PATH (ImageFolder of validation images)}"
NAME=$(basename "${TOK_CONFIG}" .yaml)
EXP_ROOT=${EXP_ROOT:-results/ar_probe}
EXP_NAME=${EXP_NAME:-${VQ_EXP_DIR:-${NAME}}}
EXP=${EXP_DIR:-${EXP_ROOT}/${EXP_NAME}}
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
mkdir -p "${EXP}"

epoch_to_iter() { echo $(( $1 * 5000 * 256 / $2 )); }  # official EPOCH_TO_ITER = 5000 * 256 / BSZ
stage() { echo "=== ar_probe: $* ===" >&2; }
read -r -a TOK_EXTRA <<< "${TOK_ARGS:-}"
read -r -a EXTRACT_EXTRA <<< "${EXTRACT_ARGS:-}"
read -r -a LM_EXTRA <<< "${LM_ARGS:-}"
read -r -a SAMPLE_EXTRA <<< "${SAMPLE_ARGS:-}"
read -r -a VAL_EXTRA <<< "${VAL_ARGS:-}"
read -r -a LIN_EXTRA <<< "${LIN_ARGS:-}"

# 1. Tokenizer. Later stages read the run's resolved config.yaml (it holds every override of TOK_ARGS).
if [ -n "${VQ_CKPT:-}" ]; then
    TOK_RUN_CONFIG=${TOK_CONFIG}
    stage "1/7 tokenizer: using VQ_CKPT=${VQ_CKPT}"
else
    TOK_BSZ=${TOK_BSZ:-128}
    TOK_ITER=${TOK_ITER:-$(epoch_to_iter "${TOK_EPOCH:-100}" "${TOK_BSZ}")}
    VQ_CKPT=${EXP}/tokenizer/checkpoints/$(printf %07d "${TOK_ITER}").pt
    TOK_RUN_CONFIG=${EXP}/tokenizer/config.yaml
    if [ -f "${VQ_CKPT}" ]; then
        stage "1/7 tokenizer: done (${VQ_CKPT})"
    else
        stage "1/7 tokenizer: ${TOK_ITER} iterations at batch ${TOK_BSZ}"
        bash "${SCRIPTS}/train_vq.sh" --model-config "${TOK_CONFIG}" --data-path "${TRAIN_PATH}" \
            --save-path "${EXP}" --sub-exp-dir tokenizer --iterations "${TOK_ITER}" --global-batch-size "${TOK_BSZ}" \
            --ckpt-every "${CKPT_EVERY:-5000}" --mixed-precision "${PRECISION:-fp16}" --no-wandb "${TOK_EXTRA[@]}"
    fi
fi

# 2. Codes (meta.json is written last, once every shard is done).
CODE_PATH=${CODE_PATH:-${EXP}/codes}
if [ -f "${CODE_PATH}/meta.json" ]; then
    stage "2/7 codes: done (${CODE_PATH})"
else
    stage "2/7 codes: ${TRAIN_PATH} -> ${CODE_PATH}"
    CODE_PATH="${CODE_PATH}" VQ_CKPT="${VQ_CKPT}" TOK_CONFIG="${TOK_RUN_CONFIG}" BSZ="${CODE_BSZ:-32}" \
        TEN_CROP="${TEN_CROP:-True}" CROP_RANGE="${CROP_RANGE:-1.1}" IMGNET_ROOT="" \
        bash "${SCRIPTS}/extract_code_c2i.sh" --data-path "${TRAIN_PATH}" "${EXTRACT_EXTRA[@]}"
fi

# 3. GPT: a WSD schedule for LM_ITER steps, stopped at LM_STOP_ITER (inside the constant phase for the probe).
GPT_MODEL=${GPT_MODEL:-GPT-B}
LM_BSZ=${LM_BSZ:-256}
FRACT_DECAY=${FRACT_DECAY:-0.2}
LM_ITER=${LM_ITER:-$(epoch_to_iter "${LM_EPOCH:-300}" "${LM_BSZ}")}
LM_STOP_ITER=${LM_STOP_ITER:-$(epoch_to_iter "${LM_STOP_EPOCH:-50}" "${LM_BSZ}")}
if [ "${LM_STOP_ITER}" -gt "${LM_ITER}" ]; then LM_STOP_ITER=${LM_ITER}; fi
HOLD=$(awk -v n="${LM_ITER}" -v f="${FRACT_DECAY}" 'BEGIN { print n - int(f * n) }')  # as gigatok.stages.train_c2i
if [ "${LM_STOP_ITER}" -le "${HOLD}" ]; then
    GPT_CKPT=${EXP}/gpt/checkpoints/$(printf %07d "${LM_STOP_ITER}").pt
else
    GPT_CKPT=${EXP}/gpt/cd_records/cd_fract_${FRACT_DECAY}_to_${LM_ITER}/checkpoints/$(printf %07d "${LM_STOP_ITER}").pt
fi
if [ -f "${GPT_CKPT}" ]; then
    stage "3/7 GPT: done (${GPT_CKPT})"
else
    stage "3/7 GPT: ${GPT_MODEL}, ${LM_STOP_ITER} of ${LM_ITER} iterations at batch ${LM_BSZ}"
    bash "${SCRIPTS}/train_c2i.sh" --code-path "${CODE_PATH}" --gpt-model "${GPT_MODEL}" --save-path "${EXP}" \
        --sub-exp-dir gpt --lr-scheduler wsd --fract-decay "${FRACT_DECAY}" --warmup "${WARM_ITER:-0}" \
        --lr "${LR:-1e-4}" --global-batch-size "${LM_BSZ}" --iterations "${LM_ITER}" --early-stop-iter "${LM_STOP_ITER}" \
        --ckpt-every "${LM_CKPT_EVERY:-5000}" --mixed-precision "${LM_PRECISION:-fp16}" --no-wandb "${LM_EXTRA[@]}"
fi

# 4. gFID of the GPT's samples (the sampler writes <sample dir>/<setting>.json with "fid" when done). A CFG search
#    is always re-entered: the sampler itself skips the scales already evaluated (its search_results CSV).
SAMPLE_DIR=${EXP}/samples
if [ "${GFID:-True}" = "False" ]; then
    stage "4/7 gFID: skipped (GFID=False)"
elif [ "${CFG_SEARCH:-True}" = "False" ] && grep -Eqs '"fid": *[0-9]' "${SAMPLE_DIR}"/*.json; then
    stage "4/7 gFID: done (${SAMPLE_DIR})"
else
    stage "4/7 gFID: ${NUM_FID_SAMPLES:-50000} samples, cfg ${CFG_SCALE:-1.75} (${CFG_SCHEDULE:-constant}, search ${CFG_SEARCH:-True})"
    NUM_CLASSES=$("${PYTHON}" -c 'import json, sys; print(json.load(open(sys.argv[1]))["num_classes"])' \
        "${CODE_PATH}/meta.json")  # the GPT's classes (train_c2i takes them from the codes)
    SAMPLE_FLAGS=()
    if [ -n "${GT_NPZ_PATH:-}" ]; then SAMPLE_FLAGS=(--gt-npz-path "${GT_NPZ_PATH}"); fi
    if [ "${CFG_SEARCH:-True}" != "False" ]; then SAMPLE_FLAGS+=(--search); fi
    bash "${SCRIPTS}/sample_c2i.sh" --gpt-model "${GPT_MODEL}" --gpt-ckpt "${GPT_CKPT}" --vq-ckpt "${VQ_CKPT}" \
        --tok-config "${TOK_RUN_CONFIG}" --num-classes "${NUM_CLASSES}" --sample-dir "${SAMPLE_DIR}" \
        --num-fid-samples "${NUM_FID_SAMPLES:-50000}" --cfg-scale "${CFG_SCALE:-1.75}" \
        --cfg-schedule "${CFG_SCHEDULE:-constant}" --per-proc-batch-size "${EVAL_BATCH_PER_GPU:-32}" \
        --precision "${LM_PRECISION:-fp16}" "${SAMPLE_FLAGS[@]}" "${SAMPLE_EXTRA[@]}"
fi

# 5. Validation loss on the val images, tokenized on the fly.
VAL_JSON=${EXP}/val_loss.json
if [ "${VAL_LOSS:-True}" = "False" ]; then
    stage "5/7 val loss: skipped (VAL_LOSS=False)"
elif [ -f "${VAL_JSON}" ]; then
    stage "5/7 val loss: done (${VAL_JSON})"
else
    stage "5/7 val loss: ${VAL_PATH}"
    bash "${SCRIPTS}/val_loss_c2i.sh" --data-path "${VAL_PATH}" --vq-ckpt "${VQ_CKPT}" --tok-config "${TOK_RUN_CONFIG}" \
        --gpt-model "${GPT_MODEL}" --gpt-ckpt "${GPT_CKPT}" --per-proc-batch-size "${VAL_BSZ:-32}" \
        --precision "${LM_PRECISION:-fp16}" --out "${VAL_JSON}" "${VAL_EXTRA[@]}"
fi

# 6. Linear probe of the GPT's middle layer (training ends with the val evaluation).
LIN_JSON=${EXP}/lin_probe/lin_probe_acc.json
NUM_CODE_ARGS=()
if [ -n "${NUM_CODE:-}" ]; then NUM_CODE_ARGS=(--num-code "${NUM_CODE}"); fi
if [ "${LIN_PROBE:-True}" = "False" ]; then
    stage "6/7 linear probe: skipped (LIN_PROBE=False)"
elif [ -f "${LIN_JSON}" ]; then
    stage "6/7 linear probe: done (${LIN_JSON})"
else
    stage "6/7 linear probe: ${LIN_EPOCHS:-90} epochs"
    bash "${SCRIPTS}/train_lin_probe_gpt.sh" --train-path "${TRAIN_PATH}" --val-path "${VAL_PATH}" \
        --save-path "${EXP}" --sub-exp-dir lin_probe --model-config "${TOK_RUN_CONFIG}" --vq-ckpt "${VQ_CKPT}" \
        --gpt-model "${GPT_MODEL}" --gpt-ckpt "${GPT_CKPT}" --epochs "${LIN_EPOCHS:-90}" --blr "${LIN_BLR:-0.1}" \
        --warmup-epochs "${LIN_WARMUP:-10}" --batch-size "${LIN_BSZ:-128}" --ckpt-epoch "${LIN_CKPT_EPOCH:-5}" \
        --mixed-precision "${LM_PRECISION:-fp16}" "${NUM_CODE_ARGS[@]}" "${LIN_EXTRA[@]}"
fi

# 7. The table.
stage "7/7 report: ${EXP}/ar_probe.md"
PYTHONPATH="${REPO}${PYTHONPATH:+:${PYTHONPATH}}" "${PYTHON}" -m gigatok.stages.ar_probe_report --exp-dir "${EXP}" \
    --name "${EXP_NAME}" --tok-ckpt "${VQ_CKPT}" --tok-config "${TOK_RUN_CONFIG}" --gpt-ckpt "${GPT_CKPT}" \
    --val-loss "${VAL_JSON}" --lin-probe "${LIN_JSON}" --gfid "${SAMPLE_DIR}" ${RFID:+--rfid "${RFID}"}
