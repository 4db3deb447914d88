# shellcheck shell=bash
# Presentation and bounded waits for scripts/demo: it shows each command as a
# user would type it, with its output, and fails naming the step when a
# command does not show what the demo claims.
#
# The caller sets DEMO_STEP (the current step's title), DEMO_CHECK (1: no
# pauses for reading) and DEMO_PACE (seconds to pause between steps).

# Colour only on a terminal, and never with NO_COLOR set.
if [[ -t 1 && -z "${NO_COLOR:-}" ]]; then
    DEMO_BOLD=$'\e[1m' DEMO_DIM=$'\e[2m' DEMO_RED=$'\e[31m' DEMO_OFF=$'\e[0m'
else
    DEMO_BOLD='' DEMO_DIM='' DEMO_RED='' DEMO_OFF=''
fi

# demo_step TITLE: starts a step (after a pause for reading the last one).
demo_step() {
    demo_pace
    DEMO_STEP="$1"
    printf '\n%s== %s%s\n' "$DEMO_BOLD" "$1" "$DEMO_OFF"
}

# demo_note TEXT: a line of explanation.
demo_note() {
    printf '%s# %s%s\n' "$DEMO_DIM" "$1" "$DEMO_OFF"
}

# demo_pace: lets the reader read; Enter skips the wait on a terminal.
demo_pace() {
    if [[ "${DEMO_CHECK:-0}" == 1 || -z "${DEMO_STEP:-}" ]]; then
        return 0
    fi
    if [[ -t 0 && -t 1 ]]; then
        read -r -t "$DEMO_PACE" || true
    else
        sleep "$DEMO_PACE"
    fi
}

# demo_fail MESSAGE: names the step and exits non-zero.
demo_fail() {
    DEMO_FAILED=$(printf 'demo failed at "%s": %s' "${DEMO_STEP:-start}" "$1")
    printf '%s%s%s\n' "$DEMO_RED" "$DEMO_FAILED" "$DEMO_OFF" >&2
    exit 1
}

# demo_show COMMAND…: prints `$ COMMAND` and runs it (for 60 s at most);
# fails the step if it fails. Its output is left on stdout/stderr.
demo_show() {
    demo_prompt "$@"
    demo_bounded 60 "$@"
}

# demo_bounded SECONDS COMMAND…: runs COMMAND, failing the step if it fails
# or does not finish within SECONDS. (--foreground: it stays in the demo's
# process group, so Ctrl-C reaches it.)
demo_bounded() {
    local seconds="$1" status=0
    shift
    timeout --foreground "$seconds" "$@" || status=$?
    case $status in
        0) ;;
        124) demo_fail "\`$*\` did not finish within $seconds s" ;;
        *) demo_fail "\`$*\` exited with status $status" ;;
    esac
}

# demo_prompt COMMAND…: prints `$ COMMAND`, quoting arguments that need it.
demo_prompt() {
    local word line=''
    for word in "$@"; do
        if [[ "$word" =~ ^[][A-Za-z0-9_./:@=+,-]+$ ]]; then
            line+=" $word"
        elif [[ "$word" != *"'"* ]]; then
            line+=" '$word'"
        else
            line+=" \"${word//\"/\\\"}\""
        fi
    done
    demo_prompt_text "${line# }"
}

# demo_prompt_text TEXT: prints `$ TEXT`.
demo_prompt_text() {
    printf '%s$ %s%s\n' "$DEMO_BOLD" "$1" "$DEMO_OFF"
}

# demo_wait SECONDS COMMAND…: runs COMMAND every 0.1 s until it succeeds
# (status 0), or gives up after SECONDS (status 1).
demo_wait() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        if ((SECONDS >= deadline)); then
            return 1
        fi
        sleep 0.1
    done
}

# demo_poll SECONDS DESCRIPTION COMMAND…: demo_wait, failing the step with
# what it waited for.
demo_poll() {
    local seconds="$1" what="$2"
    shift 2
    demo_wait "$seconds" "$@" || demo_fail "waited $seconds s for $what"
}
