"""Speed and memory benchmarks of hsicib beside reference implementations."""
