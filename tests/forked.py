"""Source for the fork tests' parent processes: how a parent waits for the child it forked (``pid``)."""

WAIT_FOR_CHILD = """
import os, signal, time

deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        print("exit", os.waitstatus_to_exitcode(status))
        break
    time.sleep(0.05)
else:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    print("hung")
"""
"""Prints "exit N" with the child's exit code, or "hung" (and kills it) when it has not ended after 30 s."""
