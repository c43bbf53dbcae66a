"""`python -m p2pfs` is the `p2pfs` command."""

from p2pfs.cli.main import main

raise SystemExit(main())
