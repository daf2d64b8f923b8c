#!/usr/bin/env bash
# vecwal's one entry point on a fresh Debian 12 machine:
#   ./vecwal.sh bench   install what is missing, build, run vecwal-bench's default workload
#   ./vecwal.sh test    install what is missing, build, run every test (plain, ASan+UBSan, TSan, libFuzzer)
# Extra arguments after `bench` go to vecwal-bench.
set -euo pipefail
cd "$(dirname "$0")"

DEPS=(build-essential cmake ninja-build pkg-config librsvg2-bin
      liburing-dev libisal-dev libfmt-dev libboost-test-dev libcli11-dev nlohmann-json3-dev
      libfaiss-dev libopenblas-dev python3-faiss robin-map-dev
      librocksdb-dev fio clang libclang-rt-14-dev)

install_deps() {
  local missing=()
  for p in "${DEPS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return
  echo "vecwal: installing ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

build() {  # build DIR [cmake args...]
  local dir=$1; shift
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
  cmake --build "$dir" -j "$(nproc)"
}

# libFuzzer (clang): the log reader, record decoding and checkpoint loading,
# each for VECWAL_FUZZ_SECONDS (default 20) from seeds the library writes.
# A crash fails the run and leaves its input in build-fuzz/crashes/.
fuzz() {
  build build-fuzz -DCMAKE_CXX_COMPILER=clang++ -DVECWAL_SANITIZE=fuzzer -DVECWAL_BUILD_BENCH=OFF
  ./build-fuzz/tests/fuzz/make_fuzz_seeds build-fuzz/seeds
  mkdir -p build-fuzz/crashes
  for t in wal_reader:wal record_decode:record checkpoint:checkpoint; do
    local name=${t%%:*} seeds=${t##*:}
    mkdir -p "build-fuzz/corpus/$name"
    if ! ASAN_OPTIONS=allocator_may_return_null=1:detect_leaks=0 "./build-fuzz/tests/fuzz/${name}_fuzz" \
        -max_total_time="${VECWAL_FUZZ_SECONDS:-20}" -max_len=300000 \
        -artifact_prefix="build-fuzz/crashes/${name}-" "build-fuzz/corpus/$name" "build-fuzz/seeds/$seeds" \
        >"build-fuzz/$name.log" 2>&1; then
      tail -60 "build-fuzz/$name.log"
      echo "fuzz: ${name}_fuzz found a crash (input in build-fuzz/crashes/)" >&2
      return 1
    fi
    echo "fuzz: ${name}_fuzz: $(grep -E '^Done [0-9]+ runs' "build-fuzz/$name.log")"
  done
}

# Prints how long the step since the last call took, so a slow CI run says where.
stage_t0=$SECONDS
stage() {
  echo "vecwal: $1 took $((SECONDS - stage_t0)) s"
  stage_t0=$SECONDS
}

cmd=${1:-}
shift || true
case "$cmd" in
  bench)
    install_deps
    build build
    work=$(mktemp -d "${TMPDIR:-/var/tmp}/vecwal-bench-XXXXXX")
    trap 'rm -rf "$work"' EXIT
    ./build/bench/vecwal-bench all --dir "$work" "$@"
    ;;
  test)
    install_deps
    stage "installing dependencies"
    build build
    stage "the build"
    (cd build && ctest --output-on-failure -j 2)
    stage "the tests"
    # Memory errors and undefined behaviour, then data races, on the same suites.
    build build-asan -DVECWAL_SANITIZE=address -DVECWAL_BUILD_BENCH=OFF
    stage "the ASan+UBSan build"
    (cd build-asan && VECWAL_CRASH_POINTS=60 VECWAL_POWER_POINTS=150 ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure -j 2)
    stage "the ASan+UBSan tests"
    build build-tsan -DVECWAL_SANITIZE=thread -DVECWAL_BUILD_BENCH=OFF
    stage "the TSan build"
    # libgomp is not instrumented: FAISS's OpenMP regions would read as races.
    # Races need the paths, not every flipped byte: a third of the bit flips
    # (bitflip_test took 278 s of this stage's 331 s; the others flip them all).
    (cd build-tsan && VECWAL_CRASH_POINTS=30 VECWAL_POWER_POINTS=60 VECWAL_FLIP_STRIDE=9 OMP_NUM_THREADS=1 \
       TSAN_OPTIONS=halt_on_error=1 ctest --output-on-failure -j 2)
    stage "the TSan tests"
    fuzz
    stage "the fuzz build and runs"
    ;;
  *)
    echo "usage: $0 bench [vecwal-bench options] | test" >&2
    exit 2
    ;;
esac
