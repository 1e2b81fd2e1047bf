"""One module per ``smtp-policy`` subcommand: ``HELP``, ``register(parser)`` and ``run(args)``."""
