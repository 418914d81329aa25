from spnas_dsl.cli import entry_point

entry_point()
