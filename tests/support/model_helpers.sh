# Helpers of model_test.sh, model_safety_test.sh and gguf_test.sh, after
# cli_helpers.sh's setup_case; they need TOOL (modeltool, or gguftool for
# gguf_test.sh) and DATA (the shared data directory).
# shellcheck shell=bash

stories() {  # DIR [DTYPE] [SHARDS] (modeltool), OUT.gguf [f32|f16|bf16] (gguftool)
  "$TOOL" stories "$DATA/stories260K.bin" "$@"
  local s=$?
  [ $s -eq 77 ] && exit 77
  [ $s -eq 0 ] || fail "$(basename "$TOOL") stories $*"
}
synth() { "$TOOL" synth "$@" || fail "$(basename "$TOOL") synth $*"; }
check() { "$TOOL" check "$@" || fail "check $*"; }
same_outputs() {  # DIR1 DIR2: every tensor file and the config byte-identical
  local f
  for f in $(cd "$1" && ls *.safetensors adapter_config.json model.safetensors.index.json 2>/dev/null); do
    cmp -s "$1/$f" "$2/$f" || fail "$f differs between $1 and $2"
  done
  [ "$(cd "$1" && ls | LC_ALL=C sort)" = "$(cd "$2" && ls | LC_ALL=C sort)" ] || fail "$1 and $2 hold different files"
}

# Overwrites the last 4 bytes of FILE (the end of its last tensor) with a NaN.
poke_nan() { local n; n=$(stat -c %s "$1") && printf '\377\377\377\377' | dd of="$1" bs=1 seek=$((n - 4)) conv=notrunc status=none || fail "poke $1"; }
