"""The file connectors: a directory of Parquet, JSON or CSV files as a source (`source`) and
as a sink (`sink`)."""
