"""The HTML report for specialists and managers: KPI charts and tables in one self-contained file."""

from tasks.reporting.report import ReportData, render_report, write_report

__all__ = ["ReportData", "render_report", "write_report"]
