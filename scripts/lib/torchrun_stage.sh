# Sourced by the launchers in scripts/: `run_stage <python module> [arguments...]` runs one pipeline stage on every
# local GPU (or one CPU process with gloo when there is none) through torchrun.
# Environment knobs (official names): gpus (per command, as in the official README) or GPUS (exported by
# set_env_vars.sh), NNODES, NODE_RANK, MASTER_ADDR, PORT, TORCH_RUN_PATH (default: torchrun behind
# gigatok.infra.launch, which reports a failed worker without torchrun's own traceback), and
# GIGATOK_<STAGE>_ARGS: extra flags appended after the script's arguments (so they win; split on whitespace), e.g.
# GIGATOK_SAMPLE_C2I_ARGS="--num-fid-samples 8" for gigatok.stages.sample_c2i in a smoke test of a command that
# hard-codes no sample count (tests/scripts/test_official_commands.py).

run_stage() {
    local module=$1
    shift
    GPUS=${gpus:-${GPUS:-$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | wc -l)}}
    if ! [ "${GPUS}" -ge 1 ] 2>/dev/null; then GPUS=1; fi  # no GPU visible: one CPU process
    NNODES=${NNODES:-1}
    NODE_RANK=${NODE_RANK:-0}
    MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
    PORT=${PORT:-55565}
    if [ -z "${TORCH_RUN_PATH:-}" ]; then
        TORCH_RUN_PATH="$(command -v python || command -v python3) -m gigatok.infra.launch"
    fi
    export TOKENIZERS_PARALLELISM=true
    # Make the package importable from any working directory (paths in the arguments stay relative to it).
    local repo_root
    repo_root="$(cd -P "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"  # -P: also through a symlinked scripts/
    export PYTHONPATH="${repo_root}${PYTHONPATH:+:${PYTHONPATH}}"
    local extra_var="GIGATOK_$(echo "${module##*.}" | tr '[:lower:]' '[:upper:]')_ARGS" extra=()
    read -r -a extra <<< "${!extra_var:-}"
    set -x
    ${TORCH_RUN_PATH} --nnodes=${NNODES} --nproc_per_node=${GPUS} --node_rank=${NODE_RANK} \
        --master_addr=${MASTER_ADDR} --master_port=${PORT} -m "${module}" "$@" ${extra[@]+"${extra[@]}"}
}
