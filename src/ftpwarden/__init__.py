"""ftpwarden: a security-first FTP/FTPS server."""

__version__ = "0.1.0"
