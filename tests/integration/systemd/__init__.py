"""The shipped unit and .deb under a real systemd: PID 1 of a systemd-nspawn container."""
