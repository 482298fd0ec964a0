"""`ftpwarden quota show|recompute USER [--config FILE] [--root DIR]`.

`recompute` walks the user's root (symlinks not followed, other file systems
not entered) and replaces the usage the server keeps with what is on disk:
the repair after files changed behind the server's back (or a crash between
an upload and its count).  Where the root is: `--root`, else the config: the
user file's `root=` for a virtual user, else `local_root`; `anon_root` for
"anonymous"; a system user's home.
"""

from __future__ import annotations

import argparse
import os
import pwd
import sys
from typing import Any

from . import quota

__all__ = ["main", "root_of"]


def root_of(cfg: Any, user: str) -> str | None:
    """The user's root directory as the config says, or None."""
    from ..policy.auth.userfile import parse_userdb
    if user == "anonymous":
        return getattr(cfg, "anon_root", None) or None
    if getattr(cfg, "user_db_file", None):
        try:
            with open(cfg.user_db_file, encoding="utf-8") as f:
                records = parse_userdb(f.read(), cfg.user_db_file)
        except (OSError, ValueError):
            records = {}
        rec = records.get(user)
        if rec is not None:
            return rec.root or getattr(cfg, "local_root", None) or None
    if getattr(cfg, "local_root", None):
        return str(cfg.local_root)
    try:
        return pwd.getpwnam(user).pw_dir
    except KeyError:
        return None


def main(args: argparse.Namespace) -> int:
    from ..policy.config import load_config
    cfg, _warnings = load_config(args.config, args.overrides)
    store = quota.QuotaStore(getattr(cfg, "quota_state_dir", None) or quota.DEFAULT_STATE_DIR)
    try:
        before = store.usage(args.user)
    except (OSError, ValueError) as e:
        print(f"ftpwarden: quota {args.user}: {e}", file=sys.stderr)
        return 1
    if args.action == "show":
        print(f"{args.user}: {before.bytes} bytes in {before.files} files")
        return 0
    root = args.root or root_of(cfg, args.user)
    if not root or not os.path.isdir(root):
        print(f"ftpwarden: quota recompute {args.user}: no root directory found "
              f"({root or 'none in the config'}); give --root DIR", file=sys.stderr)
        return 1
    try:
        now = quota.recompute(root)
        store.set(args.user, now)
    except OSError as e:
        print(f"ftpwarden: quota recompute {args.user}: {e}", file=sys.stderr)
        return 1
    print(f"{args.user}: {now.bytes} bytes in {now.files} files under {root} "
          f"(was {before.bytes} bytes in {before.files} files)")
    return 0
