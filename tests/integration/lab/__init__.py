"""Kernel-level tests: the real systemd-networkd / NetworkManager in the network lab."""
