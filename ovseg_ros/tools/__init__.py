"""Command-line tools: bag replay, evaluation, benchmarks, weights download, demo."""
