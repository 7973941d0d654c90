"""One module per ``headless-megatron`` subcommand: ``add_arguments(parser)`` and ``run(args)``."""
