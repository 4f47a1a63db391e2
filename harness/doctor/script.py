"""`harness doctor SCRIPT [ARGS...]`: run a user's script as `python SCRIPT ARGS...` would, in this
process, with every `model.fit` diagnosed (session.py), then the summary, the JSON, the report folder.

As Python runs it: `__name__ == "__main__"`, `sys.argv` = [SCRIPT, ARGS...], the script's folder first
on `sys.path`, the working directory left as it is, the script's own output, and its own exit code (a
`sys.exit(n)` gives n, an uncaught exception its traceback and 1). Ctrl-C stops it as it would stop
Python (its traceback, exit 130), and the doctor still says what the epochs that ran showed.
"""
from __future__ import annotations

import os
import runpy
import sys
import traceback
from pathlib import Path

from harness.doctor import hooks
from harness.doctor.output import RULE, document, summary_lines, tracker_for, write_json, write_report
from harness.doctor.session import Session
from harness.errors import HarnessError


def check_script(script: Path) -> None:
    if not script.exists():
        raise HarnessError(f"doctor: no such script: {script}")
    if not script.is_file():
        raise HarnessError(f"doctor: {script} is a directory, not a Python script")


def run_doctor(script: Path, args: list[str], epochs: int, json_path: Path | None, results: Path,
               tracking_uri: str | None) -> int:
    """Run `script` with `args` under the doctor; -> the script's own exit code."""
    check_script(script)
    if epochs < 0:
        raise HarnessError("doctor: --epochs must be 0 (the script's own) or more")
    session = Session(epochs=epochs, on_diagnosis=tracker_for(results, tracking_uri, "doctor-" + script.stem))
    hooks.install(session)
    try:
        code = run_as_python(script, args)
    finally:
        hooks.uninstall()
    conclude(session, script, args, code, json_path, results)
    return code


def conclude(session: Session, script: Path, args: list[str], code: int, json_path: Path | None,
             results: Path) -> None:
    """The summary on stderr, and the JSON and the report folder written."""
    for line in summary_lines(session.fits, session.never_fitted(), session.causes):
        session.say(line)
    doc = document(str(script), args, code, session)
    try:
        folder = results / "doctor" / script.stem
        written = write_report(doc, session, folder)
        if json_path is not None:
            write_json(doc, json_path)
            written.append(json_path)
        session.say(f"{RULE} wrote {', '.join(str(p) for p in written)}"
                    + (f"; each fit is an MLflow run of experiment doctor-{script.stem} (harness ui)" if session.fits else ""))
    except OSError as e:
        session.say(f"{RULE} could not write the report: {e}")


def run_as_python(script: Path, args: list[str]) -> int:
    """Run the script as `python script args...` would; -> its exit code (Ctrl-C: 130)."""
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [str(script), *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    try:
        runpy.run_path(str(script), run_name="__main__")
        return 0
    except SystemExit as e:
        return exit_status(e.code)
    except KeyboardInterrupt as e:             # Python prints the traceback and exits 128 + SIGINT
        print_script_traceback(e, script)
        return 130
    except BaseException as e:  # noqa: BLE001 - the script's own failure, told as Python tells it
        print_script_traceback(e, script)
        return 1
    finally:
        sys.argv[:] = saved_argv
        sys.path[:] = saved_path
        sys.stdout.flush()


def exit_status(code) -> int:
    """What Python exits with for SystemExit(code): None 0, an int itself, anything else printed and 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def print_script_traceback(error: BaseException, script: Path) -> None:
    """The traceback Python would print: from the script's own frame on, not runpy's or the doctor's."""
    tb = error.__traceback__
    target = os.path.abspath(script)
    while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) != target:
        tb = tb.tb_next
    sys.stdout.flush()
    traceback.print_exception(type(error), error, tb or error.__traceback__, file=sys.stderr)
