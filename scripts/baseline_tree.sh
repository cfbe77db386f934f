#!/usr/bin/env bash
# The tree of an older commit, for scripts/gpu_check.sh to time beside the working tree in the
# same GPU session (its BASELINE variable):
#   bash scripts/baseline_tree.sh COMMIT [FOLDER]
# writes the commit's tracked files into FOLDER (default bench/out/baseline, ignored by git: name
# it in the device call's carry) and the full commit hash into FOLDER/COMMIT.
set -euo pipefail
if (( $# < 1 || $# > 2 )); then
  echo "usage: bash scripts/baseline_tree.sh COMMIT [FOLDER]" >&2
  exit 2
fi
commit=$(git rev-parse --verify --quiet "$1^{commit}") || { echo "baseline_tree.sh: COMMIT: no commit named '$1'" >&2; exit 2; }
folder=${2:-bench/out/baseline}
rm -rf "$folder"
mkdir -p "$folder"
git archive "$commit" | tar -x -C "$folder"
echo "$commit" > "$folder/COMMIT"
echo "$folder: the tree of $commit ($(du -sh "$folder" | cut -f1))"
