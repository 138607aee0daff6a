"""`streamsql export`: a query file as a job for an engine that scales out (Spark)."""

from streamsql.export.report import Difference, ExportRefused
from streamsql.export.spark import SparkJob, export_spark

__all__ = ["Difference", "ExportRefused", "SparkJob", "export_spark"]
