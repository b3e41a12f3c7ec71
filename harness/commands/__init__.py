"""One module per CLI sub-command; each has register(subparsers) and run(args) -> int."""
