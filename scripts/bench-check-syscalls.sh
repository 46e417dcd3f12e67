#!/usr/bin/env bash
# What the journal writer's identity check costs in system calls alone: the calls it makes
# per group commit (a `stat` of the lock file before the write, another before the
# acknowledgement, and an `fstat` of the segment), a million times in a loop, on files in a
# directory shaped like a data directory under TMPDIR. Prints microseconds per check, three
# times, in CPU time (user + system), which other load on the machine disturbs less than
# wall time. Needs a C compiler (`cc`).
#
#   scripts/bench-check-syscalls.sh
set -euo pipefail
command -v cc >/dev/null || { echo "a C compiler is needed (apt-get install gcc)" >&2; exit 2; }
dir=$(mktemp -d "${TMPDIR:-/tmp}/mboard-check.XXXXXX")
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/board/segments"
touch "$dir/board/lock" "$dir/board/segments/00000000000000000001.seg"
cat >"$dir/check.c" <<'C'
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <time.h>
int main(int argc, char **argv) {
  (void)argc;
  int fd = open(argv[2], O_RDONLY);
  if (fd < 0) { perror(argv[2]); return 1; }
  struct stat st;
  struct timespec a, b;
  const long n = 1000000;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &a);
  for (long i = 0; i < n; i++) {
    stat(argv[1], &st);
    stat(argv[1], &st);
    fstat(fd, &st);
  }
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &b);
  printf("%.2f us of CPU per check (2 stat + 1 fstat)\n",
         ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n / 1e3);
  return 0;
}
C
cc -O2 -o "$dir/check" "$dir/check.c"
for _ in 1 2 3; do
  "$dir/check" "$dir/board/lock" "$dir/board/segments/00000000000000000001.seg"
done
