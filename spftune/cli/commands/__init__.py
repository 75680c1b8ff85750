"""One module per subcommand (or family of subcommands); every module here is imported by ``spftune``."""
