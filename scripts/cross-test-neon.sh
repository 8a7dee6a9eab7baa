#!/usr/bin/env bash
# Cross-compile the standalone C++ tests (test_dequant, test_kernels) for aarch64 and run them under
# qemu-user, so the NEON kernels (cpp/kernels/*_neon.cpp) are tested on an x86 machine.
#
#   scripts/cross-test-neon.sh            # installs g++-aarch64-linux-gnu and qemu-user if missing
#   scripts/cross-test-neon.sh -DSANITIZE=ON   # extra args go to cmake (as run_native_tests.sh)
#
# The binaries are linked statically (no aarch64 sysroot needed at run time) and run with
# QEMU_CPU=max, which has the dotprod and fp16 extensions the NEON file is compiled for.
# Exit status: 0 when both tests pass; 77 when the tools are missing and cannot be installed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
build="${QUANTCONV_CROSS_BUILD_DIR:-$root/build/cpp-tests-aarch64}"
cxx="${QUANTCONV_CROSS_CXX:-aarch64-linux-gnu-g++}"
cc="${QUANTCONV_CROSS_CC:-aarch64-linux-gnu-gcc}"
qemu="${QUANTCONV_QEMU:-qemu-aarch64}"

have_tools() { command -v "$cxx" >/dev/null 2>&1 && command -v "$qemu" >/dev/null 2>&1; }

if ! have_tools; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "cross-test-neon: installing g++-aarch64-linux-gnu qemu-user" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq g++-aarch64-linux-gnu qemu-user; } >&2; then
      echo "cross-test-neon: SKIP: apt-get could not install the cross compiler / qemu-user" >&2
      exit 77
    fi
  else
    echo "cross-test-neon: SKIP: $cxx or $qemu missing and apt-get is not usable (needs root)" >&2
    exit 77
  fi
fi
have_tools || { echo "cross-test-neon: SKIP: $cxx / $qemu still missing" >&2; exit 77; }

mkdir -p "$build"
toolchain="$build/aarch64-toolchain.cmake"
cat > "$toolchain" <<EOF
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER $cc)
set(CMAKE_CXX_COMPILER $cxx)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
EOF

# -static: qemu-aarch64 then needs no aarch64 loader or libraries. ASan cannot link statically, so a
# sanitizer build links dynamically and qemu gets the cross sysroot instead.
link=(-DCMAKE_EXE_LINKER_FLAGS=-static)
runner="$qemu"
for arg in "$@"; do
  case "$arg" in
    -DSANITIZE=ON|-DSANITIZE=on|-DSANITIZE=1|-DSANITIZE=TRUE)
      link=()
      runner="$qemu -L /usr/aarch64-linux-gnu"
      export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0}"  # LeakSanitizer cannot run under qemu-user
      build="$build-sanitize" ;;
  esac
done

export QEMU_CPU="${QEMU_CPU:-max}"
export QUANTCONV_TEST_RUNNER="$runner"
export QUANTCONV_TEST_BUILD_DIR="$build"
exec bash "$root/cpp/tests/run_native_tests.sh" -DCMAKE_TOOLCHAIN_FILE="$toolchain" ${link[@]+"${link[@]}"} "$@"
