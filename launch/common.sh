# Sourced by the launchers: a dry-run aware command runner and fail-fast helpers.
DRY_RUN=${DRY_RUN:-0}

quote() {  # one shell word, readable: plain words as they are, others in single quotes
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}

quote_all() { local a out=(); for a in "$@"; do out+=("$(quote "$a")"); done; printf '%s' "${out[*]}"; }

run() {  # prints the command, then runs it unless DRY_RUN=1
  echo "+ $(quote_all "$@")"
  if [[ "$DRY_RUN" != 1 ]]; then "$@"; fi
}

die() { echo "error: $*" >&2; exit 2; }

need() {  # need VAR "description": fail fast on a missing required option
  [[ -n "${!1:-}" ]] || die "missing $2 (see --help)"
}

need_tool() {  # real runs need the CLI; dry runs only print
  [[ "$DRY_RUN" == 1 ]] || command -v "$1" >/dev/null || die "$1 is not on PATH: $2"
}
