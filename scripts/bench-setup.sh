# Sourced by the benchmark scripts that start processes of their own.
#
#   bench_setup NAME
# builds mboard-server and mboard-bench (release) and sets `bin` to where they are, `dir`
# to a new temporary directory (mboard-bench-NAME.*) and `pids` to an empty list; at exit
# every process in `pids` is stopped and `dir` removed. `fail MESSAGE` stops the script
# with one line, non-zero.
bench_setup() {
    cargo build --release --quiet -p mboard-server -p mboard-bench
    bin=$PWD/target/release
    dir=$(mktemp -d "${TMPDIR:-/tmp}/mboard-bench-$1.XXXXXX")
    pids=()
    trap bench_cleanup EXIT
}

bench_cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}

fail() { echo "error: $*" >&2; exit 1; }
