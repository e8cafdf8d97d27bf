"""``python -m isolated_env._servers.chdb --path DIR --fd N --password-file FILE`` serves the adaptor."""

from __future__ import annotations

from .app import main

if __name__ == "__main__":
    main()
