# Sourced by scenarios that run one of isolate-enforcer's test executables in the guest.
# run_testbin NAME [ARGS...]: runs $TESTBIN/NAME, keeps its output in $RESULTS/output.txt, and
# exits with its status; a run that passed no test fails.
run_testbin() {
    name=$1
    shift
    test -x "$TESTBIN/$name" || {
        echo "no test executable $TESTBIN/$name (see vmtests/testbins.txt)"
        exit 1
    }
    "$TESTBIN/$name" "$@" >"$RESULTS/output.txt" 2>&1
    rc=$?
    cat "$RESULTS/output.txt"
    if ! grep -q "^test result: .* [1-9][0-9]* passed" "$RESULTS/output.txt"; then
        echo "$name passed no test"
        exit 1
    fi
    exit "$rc"
}
