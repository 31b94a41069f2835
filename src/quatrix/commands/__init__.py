"""The `quatrix` subcommands that are not training stages, one module each, registered in
quatrix.cli.COMMANDS: each has `add_arguments(parser)` and `main(args)`."""
