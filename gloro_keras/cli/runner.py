"""The absl entry point shared by the command-line scripts."""
import sys

from absl import app, flags

HELP_FLAGS = ("-h", "-?", "--help", "--helpshort", "--helpfull", "--helpxml")
# modules whose flags act in the scripts (absl's own); TensorFlow's and absltest's do nothing there
ABSL_MODULES = ("absl.app", "absl.logging")


def full_help(fv, program, doc):
    """`--helpfull`: the usage text, the script's flags, then absl's own flags (help, flag files,
    logging), without the flags TensorFlow and absltest define on import (they do nothing here)."""
    own = fv.module_help(program).strip().splitlines()
    parts = [doc.rstrip(), "", f"{program.rsplit('/', 1)[-1]} flags:", *own[1:]]
    by_module = fv.flags_by_module_dict()
    for module in ABSL_MODULES:
        if module in by_module:
            parts += ["", fv.module_help(module).strip()]
    parts += ["", "absl.flags:", "  --flagfile: Insert flag definitions from the given file into the command line.",
              "  --undefok: comma-separated list of flag names that may be given without being defined."]
    return "\n".join(parts)


def run_absl(main, define_flags, doc, argv=None):
    """Run a script's `main` through `absl.app.run`.

    Defines the script's flags with `define_flags(flags.FLAGS)` (listed under
    `--helpshort`) and uses `doc` as the usage text.

    Args:
        main: `main(argv) -> exit status`, as `absl.app.run` expects.
        define_flags: registers the script's flags on the `flags.FlagValues` it gets.
        doc: the usage text absl prints (the script's docstring).
        argv: the command line (default `sys.argv`).

    Example:

    ```python
    def run(argv=None):
        run_absl(main, define_flags, __doc__, argv)
    ```
    """
    fv = flags.FLAGS
    before = set(fv)
    define_flags(fv)
    program = (argv or sys.argv)[0]
    for name in sorted(set(fv) - before):
        fv.register_key_flag_for_module(program, fv[name])
    main_module = sys.modules.get("__main__")
    if main_module is not None:
        main_module.__doc__ = doc  # the usage text absl prints
    args = list(argv or sys.argv)
    if "--helpfull" in args[1:]:
        print(full_help(fv, program, doc))
        raise SystemExit(0)
    try:
        app.run(main, argv=args)
    except SystemExit as e:
        # absl exits 1 after printing the help it was asked for; asking is not an error
        if e.code == 1 and any(a.split("=")[0] in HELP_FLAGS for a in args[1:]):
            raise SystemExit(0) from None
        raise
