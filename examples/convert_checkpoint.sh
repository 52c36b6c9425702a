#!/usr/bin/env bash
# Download an official ViSpec checkpoint, convert it for vLLM, and serve it.
#
# usage: examples/convert_checkpoint.sh [SRC [DST [TARGET]]]
#
#   SRC     folder of the official ViSpec checkpoint (downloaded there by step 1)
#           default: ViSpec-Qwen2.5-VL-7B
#   DST     folder the converted draft is written to          default: vispec-qwen7b
#   TARGET  local folder of the target VLM (downloaded there by step 1; the converter checks
#           the draft against its config.json)                default: Qwen2.5-VL-7B-Instruct
#
# environment:
#   DRAFT_REPO     Hugging Face repo of the checkpoint  (default JLKang/ViSpec-Qwen2.5-VL-7B-Instruct)
#   TARGET_REPO    Hugging Face repo of the target      (default Qwen/Qwen2.5-VL-7B-Instruct)
#   SKIP_DOWNLOAD  1: SRC and TARGET are already there, skip step 1 (no internet needed)
#   SERVE          1: run the `vllm serve` of step 3 instead of printing it
#   K              num_speculative_tokens for step 3 (default 3)
#
# Other ViSpec checkpoints (another Qwen2.5-VL size, LLaVA-1.6): set DRAFT_REPO, TARGET_REPO
# and the three folders to match.
set -euo pipefail

case "${1:-}" in
-h | --help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 0
    ;;
esac

DRAFT_REPO=${DRAFT_REPO:-JLKang/ViSpec-Qwen2.5-VL-7B-Instruct}
TARGET_REPO=${TARGET_REPO:-Qwen/Qwen2.5-VL-7B-Instruct}
SRC=${1:-ViSpec-Qwen2.5-VL-7B}
DST=${2:-vispec-qwen7b}
TARGET=${3:-Qwen2.5-VL-7B-Instruct}
K=${K:-3}

# 1. Download (needs internet; `hf` comes with huggingface_hub, older versions call it
#    `huggingface-cli download`). The target is needed anyway to serve it.
if [[ "${SKIP_DOWNLOAD:-0}" != 1 ]]; then
    hf download "$DRAFT_REPO" --local-dir "$SRC"
    hf download "$TARGET_REPO" --local-dir "$TARGET"
fi

# 2. Convert: checks every tensor name and shape, reads num_q from the adaptor and compares
#    hidden and vocabulary sizes with the target; writes DST only when all is well
#    (--force replaces an earlier conversion, --dtype bfloat16 casts the weights).
vllm-vispec convert "$SRC" "$DST" --target "$TARGET"

# 3. Serve: the draft is vLLM's "eagle" method with DST as its model; the plugin does the rest.
SPEC_CONFIG="{\"method\": \"eagle\", \"model\": \"$DST\", \"num_speculative_tokens\": $K}"
echo
echo "serve it with:"
echo "  vllm serve $TARGET --speculative-config '$SPEC_CONFIG'"
if [[ "${SERVE:-0}" == 1 ]]; then
    exec vllm serve "$TARGET" --speculative-config "$SPEC_CONFIG"
fi
