"""``vlm2rec-study``: the study commands under one name.

    vlm2rec-study run [--space FILE] ...          = python study/run_search.py ...
    vlm2rec-study report STUDY_DIR [--top K]      = python study/report.py ...
    vlm2rec-study confirm STUDY_DIR [--top K] ... = python study/confirm.py ...
    vlm2rec-study leaderboard PATH... [--top K]   = python study/leaderboard.py ...

Each subcommand is the ``main`` of its module with the rest of the command line, so both spellings
take the same flags and exit with the same codes. A module is imported only when its command runs:
``report`` never pays for Ray, ``run`` never for matplotlib.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

__all__ = ["COMMANDS", "main"]

#: subcommand -> (module whose ``main(argv, prog)`` runs it, one-line help)
COMMANDS = {
    "run": ("study.run_search", "run a study on Ray, or resume it"),
    "report": ("study.report", "write a study's report.html and PNGs"),
    "confirm": ("study.confirm", "re-run the best trials and the reference on fresh seeds"),
    "leaderboard": ("study.leaderboard", "print, merge or rebuild leaderboards offline"),
}


def _usage() -> str:
    lines = ["usage: vlm2rec-study {" + ",".join(COMMANDS) + "} ...", "", "commands:"]
    lines += [f"  {name:<12} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    lines.append("\n`vlm2rec-study COMMAND --help` shows a command's options.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``argv`` (default: the command line) to a command; 2 for an unknown one."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if not args or args[0] not in COMMANDS:
        print(_usage(), file=sys.stderr)
        if args:
            print(f"\nerror: unknown command {args[0]!r}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[args[0]][0])
    return int(module.main(args[1:], prog=f"vlm2rec-study {args[0]}"))


if __name__ == "__main__":
    sys.exit(main())
