"""Command-line tools over the `fusion`, `generator` and `ui` libraries (one thin `main(argv)` per subcommand)."""
