"""One module per `mlip` sub-command: each has `main(argv) -> exit status`."""
