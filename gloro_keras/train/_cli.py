"""Shared absl entry point of the command-line scripts."""
import sys

from absl import app, flags


def run_absl(main, define_flags, doc, argv=None):
    """Define the script's flags (listed under --helpshort), use `doc` as the usage text,
    and run `main` through `absl.app.run`."""
    fv = flags.FLAGS
    before = set(fv)
    define_flags(fv)
    program = (argv or sys.argv)[0]
    for name in sorted(set(fv) - before):
        fv.register_key_flag_for_module(program, fv[name])
    main_module = sys.modules.get("__main__")
    if main_module is not None:
        main_module.__doc__ = doc  # the usage text absl prints
    app.run(main, argv=argv)
