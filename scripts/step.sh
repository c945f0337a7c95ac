# One line per step: `step "what it does" command args…` runs the command
# with its output kept in a log file, and prints "what it does" with ok
# or, when it fails, the last lines of its log (and where the rest is).
# Sourced by the other scripts.
STEP_LOG_DIR=${STEP_LOG_DIR:-$(mktemp -d -t makiatto-setup.XXXXXX)}

step() {
  local what=$1
  shift
  local log="$STEP_LOG_DIR/$(echo "$what" | tr -c 'a-zA-Z0-9' '-' | cut -c1-48).log"
  printf '%s … ' "$what"
  if "$@" >"$log" 2>&1; then
    echo ok
  else
    local code=$?
    echo "FAILED (exit $code)"
    tail -n 20 "$log" | sed 's/^/    /'
    echo "    (whole output: $log)"
    return "$code"
  fi
}
