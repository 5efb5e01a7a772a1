#!/usr/bin/env bash
# The package as users get it: build the wheel, install it with only `[train,deploy]` into a fresh
# venv, and run it from outside the checkout (nothing can come from the source tree): pmm_kernels
# ops on CPU, every console script's --help, and a tiny train + evaluate + extract + export
# through the installed scripts. A file or dependency the wheel lacks fails here.
#
# Usage: .ci/wheel_check.sh [VENV]   (default $TMPDIR/pmm-wheel-venv; removed and created afresh)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=$(realpath -m "${1:-${TMPDIR:-/tmp}/pmm-wheel-venv}")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
START=$SECONDS
step() { echo "wheel-check [$((SECONDS - START)) s] $*"; }

step "building the wheel"
# From a copy of what git would ship (tracked and unignored files), so the build leaves nothing
# in the checkout and nothing ignored (a venv, runs/) can slip into the wheel.
mkdir "$WORK/src"
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$WORK/src"
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$WORK/dist" "$WORK/src"
WHEEL=$(echo "$WORK"/dist/pmm-*.whl)
"$PYTHON" - "$WHEEL" <<'EOF'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
wanted = ["pmm_kernels/py.typed", "pmm_model/py.typed", "pmm_model/cli/scripts.py",
          "pmm_model/apps/extract.py", "pmm_model/apps/export.py", "pmm_kernels/ops/feature_mix_triton.py"]
missing = [name for name in wanted if name not in names]
assert not missing, f"the wheel lacks {missing}"
assert not [n for n in names if n.startswith("tests/")], "the wheel ships the tests"
print(f"  {sys.argv[1].rsplit('/', 1)[-1]}: {len(names)} files")
EOF

step "fresh venv $VENV: pip install <wheel>[train,deploy]"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet "$WHEEL[train,deploy]"
BIN=$VENV/bin
cd "$WORK"  # outside the checkout: `import pmm_model` must find the installed copy

step "the plain install's dependencies, pmm_kernels on CPU (torch path and Triton's interpreter)"
"$BIN/python" - <<'EOF'
import importlib.metadata as md
plain = sorted(r.split(";")[0].split(">")[0].strip() for r in md.requires("pmm") if "extra ==" not in r)
assert plain == ["numpy", "torch", "triton"], plain
import torch, pmm_kernels
assert "site-packages" in pmm_kernels.__file__, pmm_kernels.__file__
feats, labels = torch.randn(4, 8, 4, 2), torch.tensor([0, 0, 1, 1])
mixed, info = pmm_kernels.feature_mix(feats, labels, mode="cutmix", block_size=(2, 1), num_blocks=1)
assert mixed.shape == feats.shape
print("  pmm_kernels", pmm_kernels.__file__, "feature_mix ok")
EOF
TRITON_INTERPRET=1 "$BIN/python" -c "
import torch, pmm_kernels
feats, labels = torch.randn(4, 8, 4, 2), torch.tensor([0, 0, 1, 1])
out, _ = pmm_kernels.feature_mix(feats, labels, mode='cutmix', block_size=(2, 1), num_blocks=1,
                                 backend='triton')
assert out.shape == feats.shape
print('  feature_mix through Triton (interpreted) ok')"

step "console scripts: --help"
for script in pmm-train pmm-evaluate pmm-visualize pmm-study pmm-extract pmm-export; do
    "$BIN/$script" --help > /dev/null
    echo "  $script --help ok"
done

step "tiny train + evaluate + extract + export through the installed scripts"
"$BIN/python" - <<'EOF'
# A Market-layout tree of 4 identities x 2 cameras: noise images, seeded.
import numpy as np
from pathlib import Path
from PIL import Image
rng = np.random.default_rng(0)
for split, n in (("bounding_box_train", 3), ("query", 1), ("bounding_box_test", 2)):
    (Path("tree") / split).mkdir(parents=True)
    for pid in range(1, 5):
        for cam in (1, 2):
            for i in range(n):
                pixels = rng.integers(0, 256, (64, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(f"tree/{split}/{pid:04d}_c{cam}s1_{i:06d}_01.jpg")
EOF
"$BIN/pmm-train" --data folder --root tree --backbone resnet18 --height 64 --width 32 \
    --ids-per-batch 2 --images-per-id 2 --epochs 1 --workers 0 --device cpu --output-dir run
"$BIN/pmm-evaluate" --checkpoint run/checkpoint.pt --data folder --root tree --workers 0
"$BIN/pmm-extract" --checkpoint run/checkpoint.pt --images tree/query --out query.npz \
    --workers 0 --no-progress
"$BIN/pmm-export" --checkpoint run/checkpoint.pt --out model.onnx --images tree/query
"$BIN/python" - <<'EOF'
import json
import numpy as np
import onnxruntime as ort
saved = np.load("query.npz")
assert saved["features"].shape == (8, 1536) and saved["pids"].tolist() == [1, 1, 2, 2, 3, 3, 4, 4]
session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
meta = session.get_modelmeta().custom_metadata_map
assert meta["pmm.model"] == "pmm" and meta["pmm.embedding_dim"] == "1536", meta
batch = np.zeros((3, 3, int(meta["pmm.input_height"]), int(meta["pmm.input_width"])), np.float32)
assert session.run(None, {session.get_inputs()[0].name: batch})[0].shape == (3, 1536)
print("  query.npz and model.onnx read back ok")
EOF
step "passed"
