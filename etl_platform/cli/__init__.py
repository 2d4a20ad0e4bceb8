"""The `etl-platform` command line: the local stack and every non-UI way into the platform.

Owns: argument parsing and terminal output (`main`: stack, produce, consume; `search`; `scale`).
May import: everything in `etl_platform`; nothing imports the CLI.
"""
