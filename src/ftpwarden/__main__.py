from ftpwarden.cli import main

raise SystemExit(main())
