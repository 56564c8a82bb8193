from factorch.cli import main

raise SystemExit(main())
