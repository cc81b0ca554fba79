"""What the ``lightning-kd`` command does before it loads torch and Lightning (several seconds).

* :mod:`.catalog`: the methods and data modules, with a one-line description each, read from the
  source files (no import), so ``--help`` lists them and ``--model KD`` resolves at once;
* :mod:`.command_line`: the command line split into its subcommand and ``--key value`` pairs;
* :mod:`.config_files`: the ``--config`` YAML files, with errors that name file, line and column;
* :mod:`.preflight`: the checks a refused command fails in well under a second (unknown keys and
  sections, argparse-style abbreviations, an unknown method, a YAML error, a missing checkpoint);
* :mod:`.help`: ``lightning-kd --help`` and the method list of ``fit --help``;
* :mod:`.signals`: a SIGTERM or Ctrl-C during start-up ends the command with a message and 143/130.

Nothing here imports torch, Lightning, transformers or datasets (``tests/test_cli_startup.py`` checks it).
"""
