#!/bin/sh
# The policy gate of an infrastructure pull request: the hybridml policy pack over a Pulumi
# project's stack, failing the PR on a mandatory violation.
#
#   examples/ci/policy-gate.sh PROJECT_DIR STACK
#
# Where the `pulumi` CLI is on PATH, the real engine runs the pack: `pulumi install` in the pack
# makes its own virtualenv as its PulumiPolicy.yaml says (`venv` beside it; requirements.txt) or
# keeps the one there, then `pulumi preview --policy-pack`. That needs the stack's backend (a
# `pulumi login` or PULUMI_BACKEND_URL), the stack itself and whatever its providers need to
# preview (cloud credentials). Where it is not, the offline check runs the program under
# Pulumi's mocks with the same rules: `hml policy check` (pip install '.[infra]'; no CLI, plugin
# or credential). Either way a mandatory violation prints the rule's name and message and the
# script exits non-zero; advisory ones are printed and pass.
#
# Environment:
#   POLICY_PACK         the pack's directory (default: policies/ of this checkout)
#   POLICY_PACK_CONFIG  a pack configuration JSON (pulumi --policy-pack-config, hml --pack-config)
#   HML                 the hml command (default: hml)
#
# Exit: 0 passed; 1 a mandatory violation (the offline check: 2 is unusable input); under the
# engine, the exit status of `pulumi preview` (or of `pulumi install`, which fails with 1 too).
set -u

if [ "$#" -ne 2 ]; then
    echo "usage: $0 PROJECT_DIR STACK" >&2
    exit 2
fi
project=$1
stack=$2
here=$(cd "$(dirname "$0")" && pwd)
pack=${POLICY_PACK:-$here/../../policies}
pack=$(cd "$pack" && pwd) || exit 2
config=${POLICY_PACK_CONFIG:-}

if command -v pulumi >/dev/null 2>&1; then
    echo "policy-gate: the Pulumi engine: pulumi preview --policy-pack $pack (stack $stack)"
    # the pack's own virtualenv, made once and kept (`pulumi install` installs what is missing)
    (cd "$pack" && pulumi install) || {
        rc=$?
        echo "policy-gate: FAILED: could not install the policy pack's dependencies (exit $rc)" >&2
        exit "$rc"
    }
    set -- preview --non-interactive --cwd "$project" --stack "$stack" --policy-pack "$pack"
    if [ -n "$config" ]; then
        set -- "$@" --policy-pack-config "$config"
    fi
    pulumi "$@"
    rc=$?
else
    echo "policy-gate: no pulumi CLI on PATH: the offline check, ${HML:-hml} policy check (stack $stack)"
    # the report's table as wide as a CI log, so that each message stays on one line
    COLUMNS=${COLUMNS:-200}
    export COLUMNS
    set -- policy check "$project" --stack "$stack"
    if [ -n "$config" ]; then
        set -- "$@" --pack-config "$config"
    fi
    ${HML:-hml} "$@"
    rc=$?
fi

if [ "$rc" -eq 0 ]; then
    echo "policy-gate: passed"
else
    echo "policy-gate: FAILED (exit $rc): see the violations above" >&2
fi
exit "$rc"
