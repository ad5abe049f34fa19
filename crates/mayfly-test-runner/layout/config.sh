#!/bin/bash
# mayfly's stand-in for actions/runner's config.sh (src/Misc/layoutroot/config.sh; MIT,
# Copyright (c) 2019 GitHub; see README.md). This runner is configured just in time only: the
# listener writes .runner, .credentials and .credentials_rsaparams from the JIT config it is
# started with, so there is nothing to configure (or remove) beforehand.

user_id=$(id -u)

# we want to snapshot the environment of the config user
if [ "$user_id" -eq 0 ] && [ -z "$RUNNER_ALLOW_RUNASROOT" ]; then
    echo "Must not run with sudo"
    exit 1
fi

echo "JIT configuration is the only supported mode: run ./run.sh --jitconfig <encoded_jit_config>," >&2
echo "or set ACTIONS_RUNNER_INPUT_JITCONFIG=<encoded_jit_config> and run ./run.sh" >&2
exit 1
