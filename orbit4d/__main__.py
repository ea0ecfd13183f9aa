from orbit4d.cli import main

raise SystemExit(main())
