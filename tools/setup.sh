#!/usr/bin/env bash
# Installs what `make demo` (setup.sh demo) or `make test` (setup.sh test) needs on
# Debian 12: Debian packages (when root; otherwise prints the apt line and stops),
# a .venv at the repo root, and `pip install -e .` with every version pinned.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-demo}

# riscv gcc + picolibc + C++ headers build FE310 firmware and QEMU runs it (the demo
# and the tests); g++ builds TFLM for the host (the device's reference) and, with
# g++-multilib, for ILP32 (the firmware's exact arena size); patch applies TFLM's
# flatbuffers patch.
pkgs=(dataset-fashion-mnist python3-venv gcc-riscv64-unknown-elf picolibc-riscv64-unknown-elf
      libstdc++-arm-none-eabi-dev qemu-system-misc make g++ g++-multilib patch)
if [ "$what" = test ]; then
  pkgs+=(bazel-bootstrap bazel-rules-java)  # Bazel 4.2.3 builds the firmware too, offline
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: missing Debian packages; run: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "setup: tflq needs Python 3.11 (TensorFlow 2.21 + tfmot 0.8.1); $python is $("$python" -V 2>&1)" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv

# Reinstall only when the pins change.
stamp=.venv/.tflq-installed-$(cat setup.cfg pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -e "$stamp" ]; then
  echo "setup: pip install -e '.[test]' (pinned by setup.cfg and constraints.txt)"
  .venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
  rm -f .venv/.tflq-installed-*
  touch "$stamp"
fi
