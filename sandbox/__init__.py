"""Untrusted code (the ``python`` tool, code rewards) runs here: a child process with limits,
no network, an unprivileged user and a private view of the file system."""
