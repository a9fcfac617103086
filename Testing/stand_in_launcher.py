"""A stand-in for Slicer's ``PythonSlicer`` launcher, for the Slicer Logic tests.

``PythonSlicer`` is not the interpreter: it sets up the environment and starts the real Python as its child, then
waits for it. This script does the same with this interpreter, and starts the child in a session of its own, so
that nothing but a kill of the whole process tree reaches it (not a signal to the launcher's process group): the
test then shows that Cancel does not depend on how a launcher groups its children. It ignores interrupts itself
and exits with its child's exit code, as a launcher that waits for its child does.

Usage: ``python stand_in_launcher.py ARGS...`` runs ``python ARGS...``.
"""

import signal
import subprocess
import sys


def main() -> int:
    child = subprocess.Popen([sys.executable, *sys.argv[1:]], start_new_session=True)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # after the start: an ignored SIGINT would be inherited
    return child.wait()


if __name__ == "__main__":
    sys.exit(main())
