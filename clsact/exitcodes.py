"""clsact's exit codes: one table, each code with one meaning (the README's "Exit codes"
section is generated from it).

A wrapper (a CronJob, CI, a shell script) can tell from the code alone what happened.
"""

from __future__ import annotations

OK = 0  # done: the run published, the gate blessed it, the run verified
CHECK_FAILED = 1  # a check answered no: the gate did not bless the run, verify found problems
USER_ERROR = 2  # a mistake to fix (config, flags, locations, credentials, data): one line says it
RANK_LOST = 3  # another rank stopped answering within Global.collective_timeout; nothing published
JOB_FAILED = 4  # the job submitted with --wait failed on the cluster (see `clsact logs`)
NIGHT_BUSY = 5  # submit --nightly refused: an earlier night of the release is still running
TIMEOUT = 124  # --wait reached --timeout (a nightly's job goes on; any other one is cancelled)
INTERRUPTED = 130  # SIGINT (Ctrl-C) or SIGTERM

TABLE: dict[int, str] = {
    OK: "done: published, blessed, or verified",
    CHECK_FAILED: "a check answered no: not blessed by the gate, or verify found problems",
    USER_ERROR: "a user error: the one line on stderr names the culprit and the fix",
    RANK_LOST: "another rank stopped answering (Global.collective_timeout); nothing published",
    JOB_FAILED: "the submitted job failed on the cluster (clsact logs NAME)",
    NIGHT_BUSY: "submit --nightly refused: an earlier night of the release is still running",
    TIMEOUT: "--wait reached --timeout",
    INTERRUPTED: "interrupted (Ctrl-C, or SIGTERM: eviction, preemption)",
}
