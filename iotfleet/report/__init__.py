"""What an operator reads after a run: the HTML report, the run history and its trends, the
Prometheus textfile (docs/compliance.md)."""
