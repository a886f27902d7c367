#!/usr/bin/env bash
# Run a bulk-update job from cron: one run at a time, JSON logs to a file, and mail (cron's
# stdout) only when something needs a human. Usage:
#   cron-wrapper.sh JOB.toml [more bulk-update run flags]
# Environment: BULK_UPDATE_HOME (the checkout, default: this script's parent), BULK_UPDATE_ENV
# (a file of KEY=VALUE lines with OPENAI_API_KEY, readable by the cron user only, default
# /etc/bulk-update/env), BULK_UPDATE_LOG_DIR (default $BULK_UPDATE_HOME/out/logs).
set -uo pipefail

job=${1:?usage: cron-wrapper.sh JOB.toml [flags]}
shift
home=${BULK_UPDATE_HOME:-$(cd "$(dirname "$0")/.." && pwd)}
env_file=${BULK_UPDATE_ENV:-/etc/bulk-update/env}
log_dir=${BULK_UPDATE_LOG_DIR:-$home/out/logs}
name=$(basename "$job" .toml)
mkdir -p "$log_dir"
cd "$home" || exit 2

# The key comes from a protected file, never from the crontab (which others may read).
if [ -f "$env_file" ]; then
  set -a
  # shellcheck disable=SC1090
  . "$env_file"
  set +a
fi

# One run at a time per job: a slow night must not overlap the next. (bulk-update also refuses
# a second run of the same job, exit 2; flock just avoids starting at all.)
exec 9>"$log_dir/$name.lock"
if ! flock -n 9; then
  echo "bulk-update $name: previous run still going; skipped" >&2
  exit 0
fi

summary=$("$home/.venv/bin/bulk-update" run --job "$job" --quiet \
  --log-format json --log-file "$log_dir/$name.jsonl" "$@" 2>&1)
code=$?
# The codes are bulk_update.ExitCode (README "Exit codes"): OK 0, ROWS_FAILED 1, USAGE 2,
# FATAL 3, INTERNAL 70, SIGINT 130, SIGTERM 143; 3, 130 and 143 are RESUMABLE.
case $code in
  0) case $summary in                              # all rows updated (or unchanged): no mail,
       *"warning: "*) echo "bulk-update $name: finished with a warning"
                      echo "$summary" ;;            # unless it warns (an export with no rows)
     esac ;;
  1) echo "bulk-update $name: finished, some rows failed or invalid (see errors file)"
     echo "$summary" ;;                            # partial failure: mail a summary
  3) echo "bulk-update $name: STOPPED (key, quota, outage or a failure streak); resumable"
     echo "$summary" ;;
  130|143) echo "bulk-update $name: interrupted by a signal; the next run resumes"
     echo "$summary" ;;
  70) echo "bulk-update $name: INTERNAL ERROR (a bug; traceback in $log_dir/$name.jsonl); resumable"
     echo "$summary" ;;
  *) echo "bulk-update $name: FAILED to start (exit $code): bad config, input or a held lock"
     echo "$summary" ;;
esac
exit $code
