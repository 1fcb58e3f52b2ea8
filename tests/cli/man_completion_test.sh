#!/bin/sh
# The man page (docs/attn.1) and the bash completion
# (packaging/bash-completion/attn) against the attn command itself:
#  1. the man page renders with groff without a warning (-ww);
#  2. every option `attn run --help`, `attn demo --help` and `attn bench --help`
#     print appears in the man page and in the completion's word lists;
#  3. the completion, sourced into bash, completes `attn r` -> run and
#     `attn run --variant li` -> linear_elu linformer.
# Usage: man_completion_test.sh ATTN_EXE SOURCE_DIR
set -eu
attn=$1
src=$2
man=$src/docs/attn.1
comp=$src/packaging/bash-completion/attn
fail=0
if command -v groff >/dev/null; then
  warn=$(LC_ALL=C.UTF-8 groff -man -Tutf8 -ww -z "$man" 2>&1) || true
  [ -z "$warn" ] || { echo "man_completion: groff warnings: $warn" >&2; fail=1; }
fi
text=$(sed 's/\\-/-/g' "$man")
for cmd in run demo bench; do
  opts=$("$attn" "$cmd" --help 2>&1 | grep -o -- '--[a-z][a-z-]*' | sort -u)
  [ -n "$opts" ] || { echo "man_completion: '$attn $cmd --help' printed no options" >&2; exit 1; }
  for o in $opts; do
    case $o in --help|--list) continue ;; esac   # --list: attn-bench's, quoted in the help
    printf '%s\n' "$text" | grep -q -- "$o" || { echo "man page lacks attn $cmd $o" >&2; fail=1; }
    grep -q -- "$o" "$comp" || { echo "completion lacks attn $cmd $o" >&2; fail=1; }
  done
done
got=$(bash -c ". '$comp'; COMP_WORDS=(attn r); COMP_CWORD=1; _attn; echo \"\${COMPREPLY[*]}\"")
[ "$got" = run ] || { echo "completion of 'attn r': '$got'" >&2; fail=1; }
got=$(bash -c "shopt -s extglob; . '$comp'; COMP_WORDS=(attn run --variant li); COMP_CWORD=3; _attn; echo \"\${COMPREPLY[*]}\"")
[ "$got" = "linear_elu linformer" ] || { echo "completion of --variant li: '$got'" >&2; fail=1; }
[ $fail -eq 0 ] && echo "man_completion: OK"
exit $fail
