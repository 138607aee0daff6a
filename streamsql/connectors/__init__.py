"""Connectors: the sources queries read and the sinks they write, one module or package each,
found by name in `registry`. They import nothing from `streamsql.sql` or `streamsql.plan`:
what they need of a statement comes as plain definitions (`streamsql.catalog.definitions`)."""
