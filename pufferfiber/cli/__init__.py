"""The command line: argument parsing, messages and exit codes. Nothing imports this package."""
