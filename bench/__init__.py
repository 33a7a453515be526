"""sdrun's benchmark suite: `make bench` runs it inside a real systemd (see bench/README.md)."""
