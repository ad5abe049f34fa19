#!/bin/bash
# mayfly's stand-in for actions/runner's run.sh (src/Misc/layoutroot/run.sh; MIT, Copyright (c)
# 2019 GitHub; see README.md). As there: copies run-helper.sh.template to run-helper.sh in the
# runner root and runs it with this script's arguments, e.g. `./run.sh --jitconfig <config>` or,
# keeping the config out of the process list, `ACTIONS_RUNNER_INPUT_JITCONFIG=<config> ./run.sh`.
# Simplified: one run, no restart loop (a JIT runner takes one job), no signal-trap mode, no CA
# update; and the helper's exit code is passed on (the real run.sh exits 0 after most errors).

# Validate not sudo (actions/runner checks in run-helper.sh; any non-empty value allows root).
user_id=$(id -u)
if [ "$user_id" -eq 0 ] && [ -z "$RUNNER_ALLOW_RUNASROOT" ]; then
    echo "Must not run interactively with sudo"
    exit 1
fi

# Change directory to the script root directory
SOURCE="${BASH_SOURCE[0]}"
while [ -h "$SOURCE" ]; do # resolve $SOURCE until the file is no longer a symlink
    DIR="$( cd -P "$( dirname "$SOURCE" )" && pwd )"
    SOURCE="$(readlink "$SOURCE")"
    [[ $SOURCE != /* ]] && SOURCE="$DIR/$SOURCE"
done
DIR="$( cd -P "$( dirname "$SOURCE" )" && pwd )"

if ! cp -f "$DIR"/run-helper.sh.template "$DIR"/run-helper.sh; then
    echo "The runner root $DIR must be writable: the runner writes its configuration (.runner, .credentials), _diag/ and _work/ there" >&2
    exit 1
fi
"$DIR"/run-helper.sh "$@"
returnCode=$?
echo "Exiting runner..."
exit "$returnCode"
