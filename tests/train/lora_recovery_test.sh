#!/usr/bin/env bash
# The acceptance figure of LoRA teacher SFT, from the files on disk: stories260K
# quantized with GPTQ 3-bit (group 32, asymmetric, act-order) by a recipe whose
# "postprocess" trains org.qforge.lora.teacher-sft (defaults) on
# tinystories_v2_calib.txt; `qforge eval` of the checkpoint with its PEFT
# adapter must recover at least 70% of the perplexity gap to full precision on
# tinystories_valid.txt (FP 5.0468, GPTQ-3 about 6.9: at most 5.60).
# usage: lora_recovery_test.sh <qforge binary> <shared dir>
set -euo pipefail
qforge="$1" shared="$2"
source "$(dirname "${BASH_SOURCE[0]}")/../support/stories.sh"
V="$shared/data/tinystories_valid.txt"
cat > "$work/recipe.json" <<JSON
{"model": "$M", "method": "org.qforge.gptq",
 "set": {"bits": 3, "group_size": 32, "sym": false, "desc_act": true},
 "calib": "$C", "save-format": "gptq", "out": "$work/g3",
 "postprocess": [{"id": "org.qforge.lora.teacher-sft"}]}
JSON
"$qforge" quantize --recipe "$work/recipe.json" --log-level warn > /dev/null
ppl() { "$qforge" eval "$@" --ppl "$V" --json --log-level warn | grep '"ppl"' | grep -o '[0-9.]*'; }
quantized=$(ppl --model "$work/g3")
adapted=$(ppl --model "$work/g3" --adapter "$work/g3/adapter")
echo "perplexity: full precision 5.0468, GPTQ-3 $quantized, GPTQ-3 + LoRA teacher SFT $adapted"
check "GPTQ-3 is where the README says (6.5 .. 7.3)" "awk 'BEGIN{exit !($quantized > 6.5 && $quantized < 7.3)}'"
check "LoRA teacher SFT recovers >= 70% of the gap (<= 5.60)" "awk 'BEGIN{exit !($adapted <= 5.60)}'"
exit $fail
