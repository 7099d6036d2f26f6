# Sourced by the official multi-stage recipes in scripts/composite_cmd/: the arithmetic, paths and stages they share.
# The recipes stop at the first failing stage (the official ones went on and evaluated missing checkpoints).
set -eo pipefail

RECIPE_NAME=$(basename "$0" .sh)
RECIPE_SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"  # scripts/: the single-stage launchers
RECIPE_REPO="$(cd -P "${RECIPE_SCRIPTS}/.." && pwd)"

# The official "epoch": 5000 iterations at batch 256, i.e. EPOCH * (256 * 5000 / BSZ) steps (integer division first,
# as in the official EPOCH_TO_ITER_FACTOR).
epoch_to_iter() { echo $(( $1 * (256 * 5000 / $2) )); }
# Zero-padded step as in checkpoint names (0250000); 10# reads an already padded number as decimal, not octal.
pad7() { printf '%07d' "$((10#$1))"; }
# Official switches: unset, empty or "None" mean "not given".
is_none() { [[ -z "${1:-}" || "$1" == "None" ]]; }
recipe_stage() { echo "=== ${RECIPE_NAME}: $* ===" >&2; }
require() {  # require NAME "what it is": stop with one line when the variable is empty
    if [[ -z "${!1:-}" ]]; then
        echo "${RECIPE_NAME}: set $1 ($2); see the header of scripts/composite_cmd/${RECIPE_NAME}.sh" >&2
        exit 2
    fi
}

# tok_iter: the last step of a tokenizer run of scripts/train_vq.sh: TOK_EARLY_STOP_ITER when set, else TOK_EPOCH
# epochs at TOK_BSZ.
tok_iter() {
    if is_none "${TOK_EARLY_STOP_ITER:-}"; then
        epoch_to_iter "${TOK_EPOCH}" "${TOK_BSZ}"
    else
        echo "$((10#${TOK_EARLY_STOP_ITER}))"
    fi
}

# gpt_ckpt_path RUN_DIR ITERATIONS STOP FRACT_DECAY: where gigatok train_c2i leaves step STOP of a WSD run of
# ITERATIONS steps: RUN_DIR/checkpoints/ while the learning rate is constant (the first ITERATIONS -
# int(FRACT_DECAY * ITERATIONS) steps), RUN_DIR/cd_records/cd_fract_<FRACT_DECAY>_to_<ITERATIONS>/checkpoints/ in
# the decay. (The official scripts looked in checkpoints/ for any STOP < ITERATIONS, which misses a stop in the decay.)
gpt_ckpt_path() {
    local run_dir=$1 iterations=$((10#$2)) stop=$((10#$3)) fract
    fract=$(awk -v f="$4" 'BEGIN { print f + 0 }')  # as Python prints the float: 0.20 -> 0.2
    local hold
    hold=$(awk -v n="${iterations}" -v f="${fract}" 'BEGIN { print n - int(f * n) }')
    if (( stop <= hold )); then
        echo "${run_dir}/checkpoints/$(pad7 "${stop}").pt"
    else
        echo "${run_dir}/cd_records/cd_fract_${fract}_to_${iterations}/checkpoints/$(pad7 "${stop}").pt"
    fi
}

# Official paths are "${PROJECT_ROOT}/results/..."; unset, they pointed at /results (ours: the current folder).
PROJECT_ROOT=${PROJECT_ROOT:-$(pwd)}
# Ours: the --image-size the official recipes fixed at 256 (a tokenizer config of another size needs it).
IMAGE_SIZE=${IMAGE_SIZE:-256}

# summary_stem RECIPE NAME: where the one-page summary of experiment NAME of a recipe goes (without .md / .json):
# SUMMARY_DIR/RECIPE/NAME, SUMMARY_DIR defaulting to $PROJECT_ROOT/results/summaries; a NAME that is a path
# (the official instructions use LM_EXP_DIR=results/gpt/<name>/) becomes one file name (results_gpt_<name>).
summary_stem() {
    local clean
    clean=$(printf '%s' "$2" | sed -e 's#^[./]*##' -e 's#/*$##' -e 's#[^A-Za-z0-9._=+-]#_#g')
    echo "${SUMMARY_DIR:-${PROJECT_ROOT}/results/summaries}/$1/${clean:-unnamed}"
}

# summary NAME [recipe_summary flags...]: this recipe's page (python -m gigatok.stages.recipe_summary), with the
# python the launchers use (scripts/lib/torchrun_stage.sh) and the repo importable.
summary() {
    local name=$1 stem
    shift
    stem=$(summary_stem "${RECIPE_NAME}" "${name}")
    recipe_stage "summary -> ${stem}.md"
    PYTHONPATH="${RECIPE_REPO}${PYTHONPATH:+:${PYTHONPATH}}" "$(command -v python || command -v python3)" \
        -m gigatok.stages.recipe_summary --recipe "${RECIPE_NAME}" --name "${name}" --out "${stem}" "$@"
}

# ---------------------------------------------------------------------------------------------------------------------
# Stages shared by several recipes. They read the recipe's variables (official names) and run one launcher each.
# ---------------------------------------------------------------------------------------------------------------------

# GPT_FLAGS: the official GPT switches USE_QK_NORM (True) and GPT_2D, USE_ADALN (anything but False).
gpt_flags() {
    GPT_FLAGS=()
    if [[ "${USE_QK_NORM:-False}" == "True" ]]; then GPT_FLAGS+=(--qk-norm); fi
    if [[ "${GPT_2D:-False}" != "False" ]]; then GPT_FLAGS+=(--gpt-2d); fi
    if [[ "${USE_ADALN:-False}" != "False" ]]; then GPT_FLAGS+=(--adaLN); fi
}
# EVAL_FLAGS: the evaluator and the gFID reference only when set (the official scripts passed "--flag ${VAR}" even
# when VAR was empty, which swallowed the next flag as its value).
eval_flags() {
    EVAL_FLAGS=()
    if [[ -n "${EVAL_PYTHON_PATH:-}" ]]; then EVAL_FLAGS+=(--eval-python-path "${EVAL_PYTHON_PATH}"); fi
    if [[ -n "${GT_NPZ_PATH:-}" ]]; then EVAL_FLAGS+=(--gt-npz-path "${GT_NPZ_PATH}"); fi
}

# gfid SAMPLE_DIR [flags...]: sample NUM_FID_SAMPLES images with the GPT and score them (scripts/sample_c2i_search_cfg.sh);
# the results land in SAMPLE_DIR/<setting>.json (+ search_results/<SAMPLE_DIR name>.csv with --search).
gfid() {
    local sample_dir=$1
    shift
    gpt_flags
    eval_flags
    recipe_stage "gFID: ${NUM_FID_SAMPLES:-50000} samples of ${GPT_CKPT} -> ${sample_dir}"
    bash "${RECIPE_SCRIPTS}/sample_c2i_search_cfg.sh" --quant-way=vq --image-size="${IMAGE_SIZE}" \
        --sample-dir="${sample_dir}" --vq-ckpt "${VQ_CKPT}" --tok-config "${TOK_CONFIG}" --gpt-model "${GPT_MODEL}" \
        --gpt-ckpt "${GPT_CKPT}" --per-proc-batch-size "${EVAL_BATCH_PER_GPU}" --precision "${PRECISION}" \
        --num-fid-samples "${NUM_FID_SAMPLES:-50000}" --clear-cache "$@" "${EVAL_FLAGS[@]}" "${GPT_FLAGS[@]}"
}

# val_loss OUT_JSON: the GPT's cross-entropy on $IMGNET_ROOT/ILSVRC2012_img_val/ tokenized on the fly
# (scripts/val_loss_c2i.sh).
val_loss() {
    gpt_flags
    recipe_stage "validation loss of ${GPT_CKPT} -> $1"
    bash "${RECIPE_SCRIPTS}/val_loss_c2i.sh" --data-path="${IMGNET_ROOT}/ILSVRC2012_img_val/" --quant-way=vq \
        --image-size="${IMAGE_SIZE}" --vq-ckpt "${VQ_CKPT}" --tok-config "${TOK_CONFIG}" \
        --gpt-model "${GPT_MODEL}" --per-proc-batch-size "${EVAL_BATCH_PER_GPU}" --gpt-ckpt "${GPT_CKPT}" \
        --precision "${PRECISION}" --out "$1" "${GPT_FLAGS[@]}"
}

# lin_probe LAUNCHER SAVE_DIR EXP_DIR PRECISION [flags...]: train a linear probe for LIN_EPOCHS epochs, then evaluate
# its last checkpoint (checkpoints/<LIN_EPOCHS - 1>.pt, official 0089.pt) on the val images, as the official
# recipes do. Results: SAVE_DIR/EXP_DIR/lin_probe_acc.json.
lin_probe() {
    local launcher=$1 save_dir=$2 exp_dir=$3 precision=$4
    shift 4
    local common=(--save-path "${save_dir}" --data-root "${IMGNET_ROOT}" --image-size "${IMAGE_SIZE}"
                  --model-config "${TOK_CONFIG}" --epochs "${LIN_EPOCHS:-90}" --blr "${LIN_BLR:-0.1}"
                  --sub-exp-dir "${exp_dir}" --batch-size "${LIN_BSZ}" --mixed-precision "${precision}"
                  --num-code "${NUM_CODE}" --ckpt-epoch "${CKPT_EPOCH}" --vq-ckpt "${VQ_CKPT}" "$@")
    recipe_stage "linear probe (${launcher}): ${LIN_EPOCHS:-90} epochs -> ${save_dir}/${exp_dir}"
    bash "${RECIPE_SCRIPTS}/${launcher}" "${common[@]}"
    recipe_stage "linear probe (${launcher}): evaluation"
    bash "${RECIPE_SCRIPTS}/${launcher}" "${common[@]}" --eval \
        --lin-probe-ckpt "${save_dir}/${exp_dir}/checkpoints/$(printf '%04d' $(( ${LIN_EPOCHS:-90} - 1 ))).pt"
}

# lm_iters / gpt_ckpt_default: GPT_CKPT unless given (official "None"): the WSD checkpoint of step LM_STOP_ITER (default: the
# last, LM_EPOCH epochs at LM_BSZ) of the run $PROJECT_ROOT/results/gpt/$LM_EXP_DIR. Sets LM_ITER (total steps),
# LM_STOP_ITER and LM_EVAL_ITER (the padded step evaluated, which names the evaluation folders).
lm_iters() {
    LM_ITER=$(epoch_to_iter "${LM_EPOCH}" "${LM_BSZ}")
    LM_STOP_ITER=$((10#${LM_STOP_ITER:-${LM_ITER}}))
    if (( LM_STOP_ITER > LM_ITER )); then LM_STOP_ITER=${LM_ITER}; fi
    LM_EVAL_ITER=$(pad7 "${LM_STOP_ITER}")
}
gpt_ckpt_default() {
    lm_iters
    if is_none "${GPT_CKPT:-}"; then
        require LM_EXP_DIR "the GPT run under results/gpt/, or set GPT_CKPT"
        GPT_CKPT=$(gpt_ckpt_path "${PROJECT_ROOT}/results/gpt/${LM_EXP_DIR%/}" "${LM_ITER}" "${LM_STOP_ITER}" \
            "${LM_FRACT_DECAY:-${FRACT_DECAY:-0.2}}")
    fi
}
# vq_ckpt_default: VQ_CKPT unless given (official "None"): the tokenizer run $PROJECT_ROOT/results/tokenizers/vq/$VQ_EXP_DIR.
vq_ckpt_default() {
    if is_none "${VQ_CKPT:-}"; then
        require VQ_EXP_DIR "the tokenizer run under results/tokenizers/vq/, or set VQ_CKPT"
        VQ_CKPT="${PROJECT_ROOT}/results/tokenizers/vq/${VQ_EXP_DIR}/checkpoints/$(pad7 "$(tok_iter)").pt"
    fi
}

# settings VAR...: SETTINGS=(--setting VAR=value ...) for the summary page.
settings() {
    SETTINGS=()
    local var
    for var in "$@"; do SETTINGS+=(--setting "${var}=${!var:-}"); done
}

# ---------------------------------------------------------------------------------------------------------------------
# The two recipe bodies that each have a DDP and an FSDP file.
# ---------------------------------------------------------------------------------------------------------------------

# recipe_train_c2i_and_eval LAUNCHER [train flags...]: train a GPT with scripts/LAUNCHER (a WSD schedule over LM_ITER
# steps, stopped at LM_STOP_ITER), then its gFID with a CFG-scale search, its validation loss, and the summary.
recipe_train_c2i_and_eval() {
    local launcher=$1
    shift
    require TOK_CONFIG "the tokenizer YAML, e.g. configs/vq/VQ_XLXXL256.yaml"
    require LM_EXP_DIR "the GPT run, a folder under results/gpt/"
    vq_ckpt_default
    lm_iters
    gpt_flags
    local run_dir="${PROJECT_ROOT}/results/gpt/${LM_EXP_DIR%/}"
    local eval_dir="${PROJECT_ROOT}/results/gpt/quan_eval/${LM_EXP_DIR%/}"
    recipe_stage "train ${GPT_MODEL} on ${DATASET}: ${LM_STOP_ITER} of ${LM_ITER} steps at batch ${LM_BSZ} -> ${run_dir}"
    bash "${RECIPE_SCRIPTS}/${launcher}" --save-path "${PROJECT_ROOT}/results/gpt/" --data-path "${DATAPATH}" \
        --code-path "${CODEPATH}" --dataset "${DATASET}" --image-size "${IMAGE_SIZE}" --tok-config "${TOK_CONFIG}" \
        --mixed-precision "${PRECISION}" --gpt-model "${GPT_MODEL}" --vq-ckpt "${VQ_CKPT}" --sub-exp-dir "${LM_EXP_DIR}" \
        --lr-scheduler wsd --warmup "${WARM_ITER}" --lr "${LR}" --ckpt-every "${CKPT_EVERY}" \
        --global-batch-size "${LM_BSZ}" --fract-decay "${FRACT_DECAY}" --iterations "${LM_ITER}" \
        --early-stop-iter "${LM_STOP_ITER}" "$@" "${GPT_FLAGS[@]}"
    GPT_CKPT=$(gpt_ckpt_path "${run_dir}" "${LM_ITER}" "${LM_STOP_ITER}" "${FRACT_DECAY}")
    if [[ ! -f "${GPT_CKPT}" ]]; then
        echo "${RECIPE_NAME}: the training ended without ${GPT_CKPT}" >&2
        exit 1
    fi
    gfid "${eval_dir}/${LM_EVAL_ITER}" --search --cfg-schedule "${CFG_SCHEDULE}" --step-start-ratio "${CFG_START_RATIO}"
    val_loss "${eval_dir}/${LM_EVAL_ITER}_val_loss.json"
    settings TOK_CONFIG GPT_MODEL DATASET LM_EPOCH LM_BSZ LM_ITER LM_STOP_ITER FRACT_DECAY WARM_ITER LR PRECISION \
        CFG_SCHEDULE CFG_START_RATIO NUM_FID_SAMPLES GT_NPZ_PATH IMAGE_SIZE
    summary "${LM_EXP_DIR}" --tok-ckpt "${VQ_CKPT}" --gpt-ckpt "${GPT_CKPT}" --gfid "${eval_dir}/${LM_EVAL_ITER}" \
        --val-loss "${eval_dir}/${LM_EVAL_ITER}_val_loss.json" "${SETTINGS[@]}"
}

# recipe_train_vq_and_eval LAUNCHER [train flags...]: train a tokenizer with scripts/LAUNCHER for TOK_EPOCH epochs (or
# up to TOK_EARLY_STOP_ITER), score its reconstructions of VAL_PATH (rFID against GT_VAL_NPZ_PATH, PSNR, SSIM, LPIPS,
# codebook usage), then AR-probe it with train_c2i_and_eval.sh (the official recipe: GPT-B, 300-epoch WSD schedule
# stopped at step 250000 in the constant phase, no warm-up, constant CFG), and write the summary.
recipe_train_vq_and_eval() {
    local launcher=$1
    shift
    require TOK_CONFIG "the tokenizer YAML, e.g. configs/vq/VQ_BL256.yaml"
    require VQ_EXP_DIR "the tokenizer run, a folder under results/tokenizers/vq/"
    require LM_EXP_DIR "the AR-probing GPT run, a folder under results/gpt/"
    require IMGNET_ROOT "the ImageNet root with ILSVRC2012_img_train/ and ILSVRC2012_img_val/"
    TOK_ITER=$(epoch_to_iter "${TOK_EPOCH}" "${TOK_BSZ}")
    recipe_stage "train the tokenizer: $(tok_iter) of ${TOK_ITER} steps at batch ${TOK_BSZ} -> ${VQ_EXP_DIR}"
    bash "${RECIPE_SCRIPTS}/${launcher}" --save-path "${PROJECT_ROOT}/results/tokenizers/vq/" \
        --data-path "${IMGNET_ROOT}/ILSVRC2012_img_train/" --image-size "${IMAGE_SIZE}" --model-config "${TOK_CONFIG}" \
        --mixed-precision "${PRECISION}" --iteration "${TOK_ITER}" --global-batch-size "${TOK_BSZ}" \
        --ckpt-every "${CKPT_EVERY}" --sub-exp-dir "${VQ_EXP_DIR}" --dataset "${DATASET}" --json-path "${JSON_PATH}" \
        --early-stop-iter "${TOK_EARLY_STOP_ITER}" "$@"
    # From here on the tokenizer is its newest checkpoint (the official TOK_ITER after an early stop).
    local tok_step
    tok_step=$(pad7 "$(tok_iter)")
    VQ_CKPT="${PROJECT_ROOT}/results/tokenizers/vq/${VQ_EXP_DIR}/checkpoints/${tok_step}.pt"
    local recon_dir="${PROJECT_ROOT}/results/reconstructions/vq/${VQ_EXP_DIR}/${tok_step}"
    local eval_python=()
    if [[ -n "${EVAL_PYTHON_PATH:-}" ]]; then eval_python=(--eval-python-path "${EVAL_PYTHON_PATH}"); fi
    recipe_stage "reconstruction metrics of ${VQ_CKPT} on ${VAL_PATH} -> ${recon_dir}"
    bash "${RECIPE_SCRIPTS}/reconstruction.sh" --data-path "${VAL_PATH}" --image-size "${IMAGE_SIZE}" \
        --quant-way vq --sample-dir "${recon_dir}" --vq-ckpt "${VQ_CKPT}" --model-config "${TOK_CONFIG}" --clear-cache \
        --gt-npz-path "${GT_VAL_NPZ_PATH}" "${eval_python[@]}"
    # AR probing. The official call left VQ_CKPT to the environment, so a VQ_CKPT exported for another command (as
    # the README's reconstruction example does) was probed instead of the new tokenizer: it is passed here.
    recipe_stage "AR probing: scripts/composite_cmd/train_c2i_and_eval.sh"
    VQ_CKPT="${VQ_CKPT}" \
    VQ_EXP_DIR="${VQ_EXP_DIR}" \
    TOK_CONFIG="${TOK_CONFIG}" \
    TOK_EPOCH="${TOK_EPOCH}" \
    TOK_BSZ="${TOK_BSZ}" \
    TOK_EARLY_STOP_ITER="${TOK_EARLY_STOP_ITER}" \
    PROJECT_ROOT="${PROJECT_ROOT}" \
    LM_EXP_DIR="${LM_EXP_DIR}" \
    LM_EPOCH="${LM_EPOCH}" \
    LM_BSZ="${LM_BSZ}" \
    GPT_MODEL="${GPT_MODEL}" \
    WARM_ITER="${WARM_ITER}" \
    LR="${LR}" \
    PRECISION="${LM_PRECISION}" \
    CFG_SCHEDULE="${CFG_SCHEDULE}" \
    LM_STOP_ITER="${LM_STOP_ITER}" \
    bash "${RECIPE_SCRIPTS}/composite_cmd/train_c2i_and_eval.sh"
    settings TOK_CONFIG TOK_EPOCH TOK_BSZ TOK_ITER TOK_EARLY_STOP_ITER PRECISION DATASET VAL_PATH GT_VAL_NPZ_PATH \
        LM_EXP_DIR GPT_MODEL LM_EPOCH LM_BSZ LM_STOP_ITER LM_PRECISION IMAGE_SIZE
    summary "${VQ_EXP_DIR}" --tok-ckpt "${VQ_CKPT}" --recon "${recon_dir}" \
        --include "$(summary_stem train_c2i_and_eval "${LM_EXP_DIR}").json" "${SETTINGS[@]}"
}
