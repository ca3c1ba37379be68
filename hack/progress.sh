# shellcheck shell=bash
# Long steps with one progress line that moves, for hack/demo.sh and hack/build-images.sh
# (sourced). Each step's own output goes to a log file, shown only when the step fails.
#
#   progress WHAT CMD...          run CMD, showing "WHAT... 42s" until it ends
#   job_start NAME LOG CMD...     run CMD in the background (several may run at once)
#   jobs_wait                     one line for all of them ("operator 2m10s done, policies 1m05s...")
#                                 until every job has ended; fails with the first failed job's log
#
# On a terminal the line is redrawn every second; otherwise (CI logs) one line every 30 s.

# NB: hand-written rather than a library: bash has no package manager, and this is twenty lines.

_progress_tty() { [ -t 2 ]; }

# _elapsed SECONDS -> "42s" or "3m07s"
_elapsed() { if [ "$1" -lt 60 ]; then printf '%ds' "$1"; else printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); fi; }

_progress_line() {
  if _progress_tty; then
    printf '\r\033[K    %s' "$1" >&2
  elif [ $((SECONDS - ${_progress_last:-0})) -ge 30 ]; then
    printf '    %s\n' "$1" >&2
    _progress_last=$SECONDS
  fi
}

_progress_done() { if _progress_tty; then printf '\r\033[K' >&2; fi; }

progress() {
  local what=$1; shift
  local log; log=$(mktemp -t progress.XXXXXX)
  job_start "$what" "$log" "$@"
  jobs_wait
}

_job_names=()
_job_pids=()
_job_logs=()
_job_starts=()
_job_ends=()
_job_rcs=()

job_start() {
  local name=$1 log=$2; shift 2
  "$@" >"$log" 2>&1 </dev/null &
  _job_names+=("$name"); _job_pids+=($!); _job_logs+=("$log"); _job_starts+=("$SECONDS"); _job_ends+=(""); _job_rcs+=("")
}

jobs_wait() {
  local i line running failed=
  _progress_last=$SECONDS
  while :; do
    running=0; line=
    for i in "${!_job_pids[@]}"; do
      if [ -z "${_job_ends[$i]}" ] && ! kill -0 "${_job_pids[$i]}" 2>/dev/null; then
        local rc=0; wait "${_job_pids[$i]}" || rc=$?
        _job_ends[i]=$SECONDS; _job_rcs[i]=$rc
      fi
      if [ -z "${_job_ends[$i]}" ]; then
        running=$((running + 1))
        line+="${line:+, }${_job_names[$i]} $(_elapsed $((SECONDS - _job_starts[i])))..."
      else
        local state=done; [ "${_job_rcs[$i]}" = 0 ] || state=FAILED
        line+="${line:+, }${_job_names[$i]} $(_elapsed $((_job_ends[i] - _job_starts[i]))) $state"
      fi
    done
    [ "$running" = 0 ] && break
    _progress_line "$line"
    sleep 1
  done
  _progress_done
  printf '    %s\n' "$line" >&2
  for i in "${!_job_pids[@]}"; do
    if [ "${_job_rcs[$i]}" != 0 ] && [ -z "$failed" ]; then
      failed=$i
      printf '    %s failed (exit %s); the end of its log (%s):\n' "${_job_names[$i]}" "${_job_rcs[$i]}" "${_job_logs[$i]}" >&2
      tail -n 40 "${_job_logs[$i]}" >&2
    fi
  done
  _job_names=(); _job_pids=(); _job_logs=(); _job_starts=(); _job_ends=(); _job_rcs=()
  [ -z "$failed" ]
}
